//! `lode`: load container images on demand.
//!
//! A thin binary: it parses flags and settings, drives `lode-store` (push,
//! gc, open) and `worker` (mount, NBD), shows progress and prints what they
//! return. See the repository README for the walk-through.

// A binary: `pub` marks what modules share; nothing is exported.
#![allow(unreachable_pub)]

mod config;
mod logging;
mod mount;
mod print;
mod progress;
mod rt;
mod run;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use lode_store::layout::PROFILES;
use lode_store::{GcOptions, Push, salts};

use crate::config::{Settings, parse_duration};
use crate::rt::runtime;

#[derive(Parser)]
#[command(
    name = "lode",
    version,
    about = "Load container images on demand: flatten, seal, push, mount lazily"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    /// Crypto backend for sealing and opening chunks
    #[arg(long, global = true, default_value = "aws-lc-rs", value_parser = ["aws-lc-rs", "rustcrypto"], help_heading = "Global")]
    crypto: String,
    /// More log lines on stderr (-v debug, -vv trace); `LODE_LOG` overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global")]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// How `docker://` images are fetched (as skopeo's flags).
#[derive(clap::Args)]
struct RegistryArgs {
    /// Use HTTPS and verify certificates; `--tls-verify=false` speaks plain
    /// HTTP (a registry on loopback)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          help_heading = "Registry (docker://)")]
    tls_verify: bool,
    /// Credentials file (auth.json / docker config.json). Default:
    /// $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json, ~/.docker/config.json
    #[arg(long, value_name = "FILE", help_heading = "Registry (docker://)")]
    authfile: Option<PathBuf>,
}

impl RegistryArgs {
    fn options(self) -> flattener::RegistryOptions {
        let mut o = flattener::RegistryOptions::default().with_tls_verify(self.tls_verify);
        if let Some(f) = self.authfile {
            o = o.with_auth_file(f);
        }
        o
    }
}

#[derive(Subcommand)]
enum Command {
    /// Flatten an OCI image into a deterministic ext4 image file
    Flatten(FlattenArgs),
    /// Flatten, chunk, seal and upload an image, then write its manifest
    Push {
        /// `oci:DIR[:TAG]`, `docker-archive:FILE` or `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`
        image: String,
        /// Name of the image in the store
        #[arg(long)]
        name: String,
        /// Platform to pick from a multi-platform index (os/arch[/variant])
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Concurrent chunk uploads
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Profile-guided layout: copy the blocks a recorded start read
        /// (`lode mount --record-profile FILE`) into one contiguous hot region,
        /// in the order they were read; layer chunks stay the same, so dedup holds
        #[arg(long, value_name = "FILE")]
        layout_profile: Option<PathBuf>,
        /// Where file contents wait while the image is flattened (about the
        /// image's size): $TMPDIR if set, else /var/tmp, which stays on disk
        /// where /tmp is a RAM-backed tmpfs
        #[arg(long, value_name = "DIR", env = "LODE_SPOOL_DIR")]
        spool_dir: Option<PathBuf>,
        /// Print the summary as JSON
        #[arg(long)]
        json: bool,
    },
    /// Mount an image lazily: FUSE file, loop device, read-only ext4 at MOUNTPOINT
    Mount(mount::MountArgs),
    /// Run an image in a container as its config says (podman/docker meanings);
    /// exits with the app's code, 125 when lode itself fails
    Run(run::RunArgs),
    /// Unmount what `lode mount` mounted and end its daemon
    Umount {
        /// The mountpoint given to `lode mount`
        mountpoint: PathBuf,
    },
    /// Materialize a whole image from the store through the caches
    Pull {
        /// Image name in the store
        name: String,
        /// Output file
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Serve an image read-only over NBD (a Unix socket only root can reach,
    /// or TCP when asked)
    ServeNbd {
        /// Image name in the store
        name: String,
        /// unix:/path/to/socket or HOST:PORT. Default: a Unix socket of mode
        /// 0600 at /run/lode/nbd/NAME.sock (path printed). TCP has no
        /// authentication: anyone who can connect reads the image
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        prefetch: mount::PrefetchArgs,
    },
    /// Store, show or remove an image's prefetch profile (profiles/NAME)
    Profile {
        #[command(subcommand)]
        action: ProfileAction,
    },
    /// List the images in the store
    Ls {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Manage a local keyring (the `local:` KMS)
    Keyring {
        #[command(subcommand)]
        action: KeyringAction,
    },
    /// Manage the pusher's salt file
    Salt {
        #[command(subcommand)]
        action: SaltAction,
    },
    /// Check that every chunk the manifests name is stored intact (length
    /// and SHA-256 name); exits 1 if any is bad
    Verify {
        /// Image names to check
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Check every image in the store
        #[arg(long)]
        all: bool,
        /// Delete bad chunk objects, so the next push uploads them again
        #[arg(long)]
        delete_bad: bool,
        /// Chunk reads in flight at once
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Collect chunks that no manifest names (a dry run unless --delete)
    Gc {
        /// Delete the collectable chunks (default: only report them)
        #[arg(long)]
        delete: bool,
        /// Only report (the default)
        #[arg(long, conflicts_with = "delete")]
        dry_run: bool,
        /// Keep unnamed chunks younger than this (e.g. 24h, 30m, 0s)
        #[arg(long, default_value = "24h")]
        grace: String,
        /// With --delete: how long to retry while pushes are in progress
        #[arg(long, default_value = "10m")]
        wait: String,
        /// Keep the chunks of image versions replaced less than this ago
        /// (workers may still run them)
        #[arg(long, default_value = "7d")]
        retain: String,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show an image's public manifest facts (no KMS needed)
    Inspect {
        /// Image name in the store
        name: String,
        /// Also prove that the KMS opens the chunk keys (never printed)
        #[arg(long)]
        keys: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// What `lode flatten` was asked.
#[derive(clap::Args)]
struct FlattenArgs {
    /// `oci:DIR[:TAG]`, `docker-archive:FILE` or `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`
    image: String,
    /// Output image file
    #[arg(short, long)]
    output: PathBuf,
    /// Platform to pick from a multi-platform index (os/arch[/variant])
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Profile-guided layout from a profile recorded with `lode mount --record-profile`
    #[arg(long, value_name = "FILE")]
    layout_profile: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ProfileAction {
    /// Store the chunk part of a recorded profile (indexes and times, no
    /// paths) as profiles/NAME; refused unless it was recorded on NAME's
    /// current manifest. Later mounts of NAME prefetch those chunks
    Save {
        /// Image name in the store
        name: String,
        /// Profile written by `lode mount --record-profile FILE`
        file: PathBuf,
    },
    /// Show the stored profile of an image
    Show {
        /// Image name in the store
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove the stored profile of an image
    Rm {
        /// Image name in the store
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyringAction {
    /// Create a keyring file (mode 0600) with one master key
    New {
        /// Keyring file to create
        path: PathBuf,
        /// Master key name
        #[arg(long, default_value = "default")]
        key: String,
    },
    /// Make a new version of a master key primary; old versions still unwrap
    Rotate {
        /// Keyring file
        path: PathBuf,
        /// Master key name
        #[arg(long, default_value = "default")]
        key: String,
    },
}

#[derive(Subcommand)]
enum SaltAction {
    /// Add a fresh salt to the file (creating it, mode 0600) and make it current
    New {
        /// Salt file
        path: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    worker::raise_open_file_limit();
    if let Err(e) = run(cli) {
        eprintln!("lode: error: {e:#}");
        std::process::exit(1);
    }
}

fn provider(name: &str) -> Result<&'static dyn chunk_core::CryptoProvider> {
    chunk_core::provider_by_name(name)
        .with_context(|| format!("crypto backend {name:?} is not compiled in"))
}

fn run(cli: Cli) -> Result<()> {
    let settings = cli.settings.resolve()?;
    match cli.command {
        Command::Flatten(args) => flatten(args),
        Command::Push {
            image,
            name,
            platform,
            registry,
            concurrency,
            json,
            layout_profile,
            spool_dir,
        } => {
            let hot = layout_profile
                .as_deref()
                .map(lode_store::profile::hot_list_from_profile)
                .transpose()?;
            let store = lode_store::Store::open_or_create(&settings.store_url()?)?;
            let kms_url = settings.kms()?;
            let kms = lode_store::open_kms(&kms_url, provider(&cli.crypto)?)?;
            let salt = salts::current_salt(settings.salts()?)?;
            let bars = std::sync::Arc::new(progress::PushBars::new(
                std::io::stderr().is_terminal() && !json,
            ));
            let push = Push::new(
                &store,
                &image,
                &name,
                kms,
                kms_url.key_id(),
                salt,
                provider(&cli.crypto)?,
            )
            .platform(platform.as_deref())?
            .upload_concurrency(concurrency)
            .spool_dir(lode_store::push::spool_dir(spool_dir)?)
            .hot(hot)
            .registry(registry.options())
            .progress(bars);
            let summary = runtime()?.block_on(push.run())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print::push_summary(&summary);
            }
            Ok(())
        }
        Command::Mount(args) => mount::mount(&settings, args, provider(&cli.crypto)?),
        Command::Run(args) => std::process::exit(run::run(&settings, args, provider(&cli.crypto)?)),
        Command::Umount { mountpoint } => mount::umount(&mountpoint),
        Command::Pull { name, output } => runtime()?.block_on(mount::pull(
            &settings,
            &name,
            &output,
            settings.cache_dir.as_deref(),
            provider(&cli.crypto)?,
        )),
        Command::ServeNbd {
            name,
            listen,
            prefetch,
        } => runtime()?.block_on(mount::serve_nbd(
            &settings,
            &name,
            listen.as_deref(),
            prefetch.settings(),
            provider(&cli.crypto)?,
        )),
        Command::Profile { action } => {
            let store = settings.store()?;
            let rt = runtime()?;
            match action {
                ProfileAction::Save { name, file } => {
                    let stored = rt.block_on(lode_store::profile::save_profile(
                        &store,
                        &name,
                        &file,
                        provider(&cli.crypto)?,
                    ))?;
                    println!(
                        "saved {PROFILES}/{name}: {} chunks (manifest {})",
                        stored.chunks.len(),
                        stored.manifest_digest.get(..12).unwrap_or_default()
                    );
                }
                ProfileAction::Show { name, json } => {
                    let Some(p) = rt.block_on(store.get_profile(&name))? else {
                        anyhow::bail!("no profile for {name:?} in {}", store.url());
                    };
                    let summary = rt.block_on(lode_store::profile::profile_summary(
                        &store,
                        &name,
                        &p,
                        provider(&cli.crypto)?,
                    ));
                    if json {
                        println!("{}", serde_json::to_string_pretty(&summary)?);
                    } else {
                        print::profile_summary(&name, &summary);
                    }
                }
                ProfileAction::Rm { name } => {
                    rt.block_on(store.delete_profile(&name))?;
                    println!("removed {PROFILES}/{name}");
                }
            }
            Ok(())
        }
        Command::Ls { json } => {
            let store = settings.store()?;
            let list = runtime()?.block_on(lode_store::list_images(&store))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print::image_list(&list);
            }
            Ok(())
        }
        Command::Keyring { action } => match action {
            KeyringAction::New { path, key } => {
                salts::create_private_parent(&path)?;
                let id = kms_envelope::new_keyring_with_key(provider(&cli.crypto)?, &path, &key)
                    .with_context(|| format!("creating keyring {}", path.display()))?;
                println!("created keyring {} with key {id}", path.display());
                Ok(())
            }
            KeyringAction::Rotate { path, key } => {
                let id = kms_envelope::rotate(provider(&cli.crypto)?, &path, &key)
                    .with_context(|| format!("rotating key {key} in {}", path.display()))?;
                println!("{id} is now primary; older versions still unwrap");
                Ok(())
            }
        },
        Command::Salt {
            action: SaltAction::New { path },
        } => {
            let id = salts::new_salt(&path)?;
            println!("salt {id} added to {} and made current", path.display());
            Ok(())
        }
        Command::Verify {
            names,
            all,
            delete_bad,
            concurrency,
            json,
        } => {
            let store = settings.store()?;
            let opts = if all {
                lode_store::VerifyOptions::all()
            } else {
                lode_store::VerifyOptions::images(names)
            }
            .delete_bad(delete_bad)
            .concurrency(concurrency);
            let report =
                runtime()?.block_on(lode_store::verify(&store, provider(&cli.crypto)?, &opts))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print::verify_report(&report);
            }
            if !report.is_clean() {
                let n = report.bad.len();
                anyhow::bail!(
                    "{n} bad chunk(s){}",
                    if delete_bad {
                        "; deleted what was stored: push the images named above again"
                    } else {
                        "; `lode verify --delete-bad` deletes them, then push the images again"
                    }
                );
            }
            Ok(())
        }
        Command::Gc {
            delete,
            dry_run: _,
            grace,
            wait,
            retain,
            json,
        } => {
            let store = settings.store()?;
            let grace = parse_duration(&grace).context("--grace")?;
            let opts = if delete {
                GcOptions::delete(grace, parse_duration(&wait).context("--wait")?)
            } else {
                GcOptions::dry_run(grace)
            }
            .retain(parse_duration(&retain).context("--retain")?);
            let report = runtime()?.block_on(lode_store::gc(&store, &opts))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print::gc_report(&report);
            }
            if report.deferred {
                // EX_TEMPFAIL: nothing went wrong, try again later.
                eprintln!(
                    "lode: gc deferred: {} push(es) in progress hold leases ({}); nothing was deleted, run gc again later",
                    report.pushes_in_progress.len(),
                    report.pushes_in_progress.join(", ")
                );
                std::process::exit(75);
            }
            Ok(())
        }
        Command::Inspect { name, keys, json } => {
            let store = settings.store()?;
            let rt = runtime()?;
            let crypto = provider(&cli.crypto)?;
            let (mut report, sealed) =
                rt.block_on(lode_store::inspect::inspect(&store, &name, crypto))?;
            if keys {
                let kms = lode_store::open_kms(&settings.kms()?, crypto)?;
                report.keys = Some(rt.block_on(lode_store::inspect::check_keys(
                    &sealed,
                    &name,
                    crypto,
                    kms.as_ref(),
                ))?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print::inspect_report(&report);
            }
            Ok(())
        }
    }
}

fn flatten(a: FlattenArgs) -> Result<()> {
    let (image, output) = (a.image.as_str(), a.output.as_path());
    use flattener::ImageRef;
    let hot = a
        .layout_profile
        .as_deref()
        .map(lode_store::profile::hot_list_from_profile)
        .transpose()?;
    let image_ref = ImageRef::parse(image).with_context(|| format!("image {image:?}"))?;
    let pb = progress::bar(
        std::io::stderr().is_terminal(),
        "layers [{bar:30}] {bytes}/{total_bytes}",
    );
    let progress_bar = pb.clone();
    let progress = move |p: flattener::Progress| {
        progress_bar.set_length(p.bytes_total);
        progress_bar.set_position(p.bytes_read);
    };
    let mut opts = flattener::FlattenOptions::default()
        .with_progress(&progress)
        .with_registry(a.registry.options());
    if let Some(p) = &a.platform {
        opts = opts.with_platform(lode_store::push::parse_platform(p)?);
    }
    if let Some(hot) = &hot {
        opts = opts.with_hot(hot);
    }
    let summary = flattener::flatten(&image_ref, &opts, output)
        .with_context(|| format!("flattening {image}"))?;
    pb.finish_and_clear();
    println!(
        "{}: {} bytes ({} layers, {} entries), sha256 {}",
        output.display(),
        summary.size,
        summary.layers,
        summary.entries,
        summary.sha256
    );
    if let Some(h) = summary.image.hot_region {
        println!(
            "  hot region: {} bytes at offset {} ({} profile entries not in this image)",
            h.len, h.start, h.entries_skipped
        );
    }
    Ok(())
}
