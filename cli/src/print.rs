//! Human-readable output of what the library returns (`--json` prints the
//! same values as JSON).

use lode_store::gc::GcMode;
use lode_store::inspect::InspectReport;
use lode_store::profile::ProfileSummary;
use lode_store::{GcReport, ImageListing, PushSummary, VerifyReport};

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Human-readable summary lines.
pub fn push_summary(s: &PushSummary) {
    println!("pushed {} as {} in {:.1} s", s.source, s.name, s.seconds);
    if let Some(r) = &s.replaced
        && !r.same_image
    {
        println!(
            "  replaced  the previous {} (from {}, {}); workers running it keep its chunks for gc's --retain (7d by default)",
            s.name, r.source_ref, r.source_digest
        );
    }
    println!(
        "  image     {:.1} MiB, sha256 {}",
        mib(s.image_bytes),
        s.image_sha256
    );
    println!(
        "  chunks    {} total: {} holes, {} new, {} already stored",
        s.chunks_total, s.holes, s.new, s.already_stored
    );
    if s.repaired > 0 {
        println!(
            "  repaired  {} stored chunk(s) of the wrong size, uploaded again",
            s.repaired
        );
    }
    match s.dedup_ratio {
        Some(r) => println!(
            "  uploaded  {:.1} MiB (dedup ratio {r:.2})",
            mib(s.bytes_uploaded)
        ),
        None => println!("  uploaded  nothing: every chunk was already stored"),
    }
    if let Some(h) = &s.hot_region {
        println!(
            "  hot       {:.1} MiB of profile-guided copies at offset {} ({} profile entries not in this image)",
            mib(h.bytes),
            h.start,
            h.entries_skipped
        );
    }
    if let Some(n) = s.prefetch_profile_chunks {
        println!(
            "  profile   {n} chunks stored as profiles/{}, kernel readahead 0 (lode mount applies both)",
            s.name
        );
    }
}

/// Human-readable report.
pub fn gc_report(r: &GcReport) {
    println!(
        "gc of {} ({}, grace {}s): {} manifests, {} chunks ({:.1} MiB)",
        r.store,
        match r.mode {
            GcMode::Delete => "delete",
            _ => "dry-run",
        },
        r.grace_secs,
        r.manifests,
        r.chunks,
        mib(r.chunk_bytes)
    );
    if r.manifests_vanished > 0 {
        println!(
            "  {} manifests were deleted while gc read them (skipped)",
            r.manifests_vanished
        );
    }
    if r.deferred {
        println!(
            "  deferred: pushes in progress held leases ({}); nothing was deleted, run gc again later",
            r.pushes_in_progress.join(", ")
        );
        return;
    }
    if !r.pushes_in_progress.is_empty() {
        println!(
            "  pushes in progress (a --delete waits for them): {}",
            r.pushes_in_progress.join(", ")
        );
    }
    println!(
        "  live      {} chunks ({:.1} MiB)",
        r.live_chunks,
        mib(r.live_bytes)
    );
    if r.retired_versions > 0 {
        println!(
            "  retained  {} replaced image versions (younger than --retain): {} chunks only they name",
            r.retired_versions, r.retained_chunks
        );
    }
    if !r.retired_expired.is_empty() {
        println!(
            "  {} {} replaced versions older than --retain: {}",
            if r.mode == GcMode::DryRun {
                "would forget"
            } else {
                "forgot"
            },
            r.retired_expired.len(),
            r.retired_expired.join(", ")
        );
    }
    println!(
        "  young     {} unnamed chunks ({:.1} MiB) kept: younger than the grace period",
        r.young_orphans,
        mib(r.young_orphan_bytes)
    );
    if r.mode == GcMode::DryRun {
        for c in &r.chunks_collectable {
            println!(
                "  would delete {} ({} bytes, {}s old)",
                c.name, c.bytes, c.age_secs
            );
        }
        println!(
            "  would delete {} chunks ({} bytes); run with --delete to delete them",
            r.collectable, r.collectable_bytes
        );
    } else {
        println!(
            "  deleted   {} chunks ({} bytes)",
            r.deleted, r.deleted_bytes
        );
    }
    if !r.orphan_profiles.is_empty() {
        let verb = if r.mode == GcMode::DryRun {
            "would delete"
        } else {
            "deleted"
        };
        println!(
            "  {verb} {} prefetch profiles of deleted images: {}",
            r.orphan_profiles.len(),
            r.orphan_profiles.join(", ")
        );
    }
    if r.missing_chunks > 0 {
        println!(
            "  WARNING: {} chunks named by manifests are missing from the store",
            r.missing_chunks
        );
    }
    if r.ignored_objects > 0 {
        println!(
            "  {} objects under chunks/ are not chunk names and were left alone",
            r.ignored_objects
        );
    }
}

/// Human-readable report.
pub fn inspect_report(r: &InspectReport) {
    println!("{}", r.name);
    println!("  source        {}", r.source_ref);
    println!("  digest        {}", r.source_digest);
    println!(
        "  image         {} bytes ({:.1} MiB)",
        r.image_bytes,
        mib(r.image_bytes)
    );
    println!(
        "  chunks        {} of {} bytes: {} stored ({} distinct), {} holes",
        r.chunks, r.chunk_size, r.present, r.distinct_chunks, r.holes
    );
    println!(
        "  shared        {} of {} distinct chunks ({:.1}%) with {} other manifests",
        r.sharing.shared_chunks,
        r.distinct_chunks,
        r.sharing.share * 100.0,
        r.sharing.other_manifests
    );
    if !r.sharing.unreadable_manifests.is_empty() {
        println!(
            "  unreadable    {} (skipped)",
            r.sharing.unreadable_manifests.join(", ")
        );
    }
    println!("  salt id       {}", r.salt_id);
    println!("  tool          {}", r.tool_version);
    println!("  format        {}", r.format_version);
    println!("  key id        {}", r.key_id);
    let ctx: Vec<String> = r
        .encryption_context
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("  context       {}", ctx.join(", "));
    println!("  manifest      {} bytes", r.manifest_bytes);
    println!("  public digest {}", r.public_digest);
    match &r.profile {
        Some(p) => println!(
            "  profile       {} chunks (window {} ms){}",
            p.chunks,
            p.window_ms,
            if p.matches_manifest {
                ""
            } else {
                ", STALE: recorded on another manifest, not used"
            }
        ),
        None => println!("  profile       none (see `lode profile save`)"),
    }
    if let Some(k) = &r.keys {
        println!("  keys: ok ({} chunk keys)", k.chunk_keys);
        match &k.config {
            None => println!("  config        none (format 1 manifest: push it again to keep it)"),
            Some(c) => {
                let list = |l: &Option<Vec<String>>| match l {
                    Some(l) => format!("{l:?}"),
                    None => "-".into(),
                };
                let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
                println!("  entrypoint    {}", list(&c.entrypoint));
                println!("  cmd           {}", list(&c.cmd));
                for e in &c.env {
                    println!("  env           {e}");
                }
                println!("  workdir       {}", opt(&c.working_dir));
                println!("  user          {}", opt(&c.user));
                println!("  stop signal   {}", opt(&c.stop_signal));
                for (k, v) in &c.labels {
                    println!("  label         {k}={v}");
                }
                if !c.exposed_ports.is_empty() {
                    println!("  ports         {}", c.exposed_ports.join(", "));
                }
                println!("  platform      {}", opt(&c.platform));
            }
        }
    }
}
/// Human-readable summary.
pub fn profile_summary(name: &str, s: &ProfileSummary) {
    println!("profile of {name}");
    println!(
        "  manifest      {} ({})",
        s.manifest_digest,
        match s.matches_manifest {
            Some(true) => "the current manifest",
            Some(false) => "STALE: the image was pushed again; record a new profile",
            None => "no such manifest",
        }
    );
    println!(
        "  chunks        {} first read within {} ms (window {} ms)",
        s.chunks, s.last_access_ms, s.window_ms
    );
    match s.kernel_readahead_kb {
        Some(kb) => println!(
            "  readahead     {kb} KiB (lode mount uses it unless --kernel-readahead-kb is given)"
        ),
        None => println!(
            "  readahead     no hint (lode mount uses --kernel-readahead-kb, else 128 KiB)"
        ),
    }
    let head: Vec<String> = s.order.iter().take(32).map(u64::to_string).collect();
    let more = if s.order.len() > 32 { " ..." } else { "" };
    println!("  order         {}{more}", head.join(" "));
}

/// `lode ls`: a header, then one image a line.
pub fn image_list(list: &[ImageListing]) {
    let w = list.iter().map(|i| i.name.len()).max().unwrap_or(0).max(4);
    println!(
        "{:w$}  {:20}  {:>10}  {:>6}  {:>5}  SOURCE",
        "NAME", "PUSHED", "IMAGE SIZE", "CHUNKS", "OLDER"
    );
    for i in list {
        println!(
            "{:w$}  {:20}  {:>6.1} MiB  {:>6}  {:>5}  {}",
            i.name,
            i.pushed_at,
            mib(i.image_bytes),
            i.stored_chunks,
            i.older_versions,
            i.source_ref
        );
    }
}

/// What `lode verify` found: each bad chunk, then a summary line.
pub fn verify_report(r: &VerifyReport) {
    for b in &r.bad {
        println!(
            "bad chunk {}: {} (used by {}){}",
            b.chunk,
            b.problem,
            b.images.join(", "),
            if b.deleted { "; deleted" } else { "" }
        );
    }
    println!(
        "verified {} chunks ({:.1} MiB read) of {} image(s) in {:.1} s: {}",
        r.chunks,
        mib(r.bytes_read),
        r.images.len(),
        r.seconds,
        if r.bad.is_empty() {
            "all good".to_string()
        } else {
            format!("{} bad", r.bad.len())
        }
    );
}
