//! The push/gc race, deterministically: a push and a gc each talk to the
//! same in-memory store through their own [`GateStore`], which logs every
//! operation and can pause an actor at a chosen operation until the test
//! lets it go. The test thereby forces the interleavings the lease argument
//! in `lode_store::gc` is about, instead of hoping a loop hits them (the
//! end-to-end loop is `cli/tests/gc.rs`).

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use lode_store::kms_envelope::{LocalKms, new_keyring_with_key};
use lode_store::{GcOptions, Push, PushSummary, Store};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::Semaphore;

/// What an actor did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Head,
    Delete,
    List,
}

/// A pause: the first operation of `actor` matching `op` under `prefix`
/// waits until [`Gate::open`]; [`Gate::reached`] resolves once it waits.
struct Gate {
    actor: &'static str,
    op: Op,
    prefix: &'static str,
    fired: AtomicBool,
    reached: Semaphore,
    open: Semaphore,
}

impl Gate {
    async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.reached.acquire())
            .await
            .expect("the gated operation was never reached")
            .expect("semaphore")
            .forget();
    }
    fn open(&self) {
        self.open.add_permits(1);
    }
}

/// Shared by both actors' views: the log and the gates.
#[derive(Default)]
struct World {
    log: Mutex<Vec<(&'static str, Op, String)>>,
    gates: Mutex<Vec<Arc<Gate>>>,
}

impl World {
    fn gate(&self, actor: &'static str, op: Op, prefix: &'static str) -> Arc<Gate> {
        let g = Arc::new(Gate {
            actor,
            op,
            prefix,
            fired: AtomicBool::new(false),
            reached: Semaphore::new(0),
            open: Semaphore::new(0),
        });
        self.gates.lock().unwrap().push(g.clone());
        g
    }

    fn count(&self, actor: &str, op: Op, prefix: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, o, p)| *a == actor && *o == op && p.starts_with(prefix))
            .count()
    }

    /// Position of each logged operation matching, in log order.
    fn positions(&self, actor: &str, op: Op, prefix: &str) -> Vec<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, (a, o, p))| *a == actor && *o == op && p.starts_with(prefix))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Logs, then waits at a gate that matches (once per gate).
async fn pass(world: Arc<World>, actor: &'static str, op: Op, path: String) {
    world.log.lock().unwrap().push((actor, op, path.clone()));
    let gate = world
        .gates
        .lock()
        .unwrap()
        .iter()
        .find(|g| {
            g.actor == actor
                && g.op == op
                && path.starts_with(g.prefix)
                && !g.fired.swap(true, Ordering::SeqCst)
        })
        .cloned();
    if let Some(g) = gate {
        g.reached.add_permits(1);
        g.open.acquire().await.expect("semaphore").forget();
    }
}

/// One actor's view of the shared store.
#[derive(Clone)]
struct GateStore {
    inner: Arc<InMemory>,
    world: Arc<World>,
    actor: &'static str,
}

impl fmt::Debug for GateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GateStore({})", self.actor)
    }
}

impl fmt::Display for GateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for GateStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        pass(
            self.world.clone(),
            self.actor,
            Op::Put,
            location.to_string(),
        )
        .await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        pass(
            self.world.clone(),
            self.actor,
            Op::Put,
            location.to_string(),
        )
        .await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        pass(self.world.clone(), self.actor, op, location.to_string()).await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        pass(
            self.world.clone(),
            self.actor,
            Op::Get,
            location.to_string(),
        )
        .await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (world, actor) = (self.world.clone(), self.actor);
        let gated = locations
            .then(move |p| {
                let world = world.clone();
                async move {
                    if let Ok(path) = &p {
                        pass(world, actor, Op::Delete, path.to_string()).await;
                    }
                    p
                }
            })
            .boxed();
        self.inner.delete_stream(gated)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (world, actor, inner) = (self.world.clone(), self.actor, self.inner.clone());
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let shown = prefix.as_ref().map(ToString::to_string).unwrap_or_default();
            pass(world, actor, Op::List, shown).await;
            inner.list(prefix.as_ref())
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let shown = prefix.map(ToString::to_string).unwrap_or_default();
        pass(self.world.clone(), self.actor, Op::List, shown).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        pass(self.world.clone(), self.actor, Op::Put, to.to_string()).await;
        self.inner.copy_opts(from, to, options).await
    }
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    world: Arc<World>,
    push_store: Store,
    gc_store: Store,
    kms: Arc<LocalKms>,
    /// Two images sharing a 2 MiB base layer.
    images: [String; 2],
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = noise(1, 2 << 20);
        let images = [2u64, 3].map(|seed| {
            let top = noise(seed, 256 << 10);
            lode_store::testing::oci_image(
                &dir.path().join(format!("img{seed}")),
                &[&[("base/blob", &base)], &[("app/blob", &top)]],
            )
            .unwrap()
        });
        let keyring = dir.path().join("keyring");
        let crypto = &lode_store::chunk_core::RustCrypto;
        new_keyring_with_key(crypto, &keyring, "default").unwrap();
        let kms = Arc::new(LocalKms::open(crypto, &keyring).unwrap());
        let inner = Arc::new(InMemory::new());
        let world = Arc::new(World::default());
        let view = |actor| -> Store {
            let raw: Arc<dyn ObjectStore> = Arc::new(GateStore {
                inner: inner.clone(),
                world: world.clone(),
                actor,
            });
            Store::from_object_store(raw, "", "gated://")
        };
        Self {
            push_store: view("push"),
            gc_store: view("gc"),
            _dir: dir,
            world,
            kms,
            images,
        }
    }

    async fn push(&self, image: usize, name: &str) -> lode_store::Result<PushSummary> {
        Push::new(
            &self.push_store,
            &self.images[image],
            name,
            self.kms.clone(),
            "default",
            lode_store::chunk_core::Salt::new(1, [9; 32]),
            &lode_store::chunk_core::RustCrypto,
        )
        .spool_dir(self._dir.path().to_path_buf())
        .run()
        .await
    }

    /// Every chunk the manifest of `name` names is stored.
    async fn assert_complete(&self, name: &str) {
        let sealed = self.gc_store.get_manifest(name).await.unwrap();
        let stored: HashSet<String> = self
            .gc_store
            .list_under("chunks")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        let named: HashSet<String> = sealed.names().flatten().map(|n| n.to_hex()).collect();
        assert!(!named.is_empty());
        let missing: Vec<_> = named.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "{name} names missing chunks {missing:?}"
        );
    }

    /// Pushes image 0 as `seed` and deletes its manifest: its chunks (the
    /// shared base among them) are orphans, the case age cannot protect.
    async fn orphan_base(&self) {
        self.push(0, "seed").await.unwrap();
        self.push_store.delete_manifest("seed").await.unwrap();
        self.world.log.lock().unwrap().clear();
    }
}

/// `gc --delete --grace 0s --wait 0s`.
async fn gc_delete(f: &Fixture) -> lode_store::Result<lode_store::GcReport> {
    lode_store::gc(
        &f.gc_store,
        &GcOptions::delete(Duration::ZERO, Duration::ZERO),
    )
    .await
}

async fn gc_now(f: &Fixture) -> lode_store::GcReport {
    gc_delete(f).await.unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The push holds its lease and has just started checking chunks when a
/// `gc --delete --grace 0s` runs from start to end: the gc sees the push's
/// lease, defers and deletes nothing, and the push's manifest is complete.
#[test]
fn a_gc_that_meets_a_live_push_deletes_nothing() {
    rt().block_on(async {
        let f = Arc::new(Fixture::new());
        f.orphan_base().await;
        let at_first_check = f.world.gate("push", Op::Head, "chunks/");
        let push = tokio::spawn({
            let f = f.clone();
            async move { f.push(1, "app").await }
        });
        at_first_check.reached().await;

        let started = Instant::now();
        let report = gc_now(&f).await;
        assert!(report.deferred, "{report:?}");
        assert_eq!(report.deleted, 0);
        assert_eq!(report.pushes_in_progress.len(), 1, "{report:?}");
        assert_eq!(f.world.count("gc", Op::Delete, "chunks/"), 0);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a deferring gc returns at once with --wait 0s: {:?}",
            started.elapsed()
        );

        at_first_check.open();
        let summary = push.await.unwrap().unwrap();
        assert!(
            summary.already_stored > 0,
            "the push relied on orphans: {summary:?}"
        );
        f.assert_complete("app").await;

        // With nothing running, a gc collects only what no manifest names.
        let report = gc_now(&f).await;
        assert!(!report.deferred);
        assert!(report.deleted > 0, "seed's own top layer is collectable");
        assert_eq!(report.missing_chunks, 0);
        f.assert_complete("app").await;
    });
}

/// A gc holds its lease and is about to delete the orphans when a push that
/// needs them starts: the push waits (renewing its lease, checking no
/// chunk) until the gc's deletes are over, then uploads the base again.
#[test]
fn a_push_that_meets_a_deleting_gc_checks_chunks_only_after_it() {
    rt().block_on(async {
        let f = Arc::new(Fixture::new());
        f.orphan_base().await;
        let at_first_delete = f.world.gate("gc", Op::Delete, "chunks/");
        // On a thread of its own (the gc future is not `Send`-general).
        let gc = tokio::task::spawn_blocking({
            let f = f.clone();
            let rt = tokio::runtime::Handle::current();
            move || {
                rt.block_on(gc_delete(&f))
            }
        });
        at_first_delete.reached().await;

        let push = tokio::spawn({
            let f = f.clone();
            async move { f.push(1, "app").await }
        });
        // The push has seen the gc's lease and waits: it rewrites its own
        // lease (every 500 ms) and makes no chunk request.
        let deadline = Instant::now() + Duration::from_secs(30);
        while f.world.count("push", Op::Put, "locks/push-") < 3 {
            assert!(Instant::now() < deadline, "the push never waited");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(f.world.count("push", Op::Head, "chunks/"), 0);
        assert_eq!(f.world.count("push", Op::Put, "chunks/"), 0);
        assert!(!push.is_finished());

        at_first_delete.open();
        let report = gc.await.unwrap().unwrap();
        assert!(!report.deferred);
        assert!(report.deleted > 0, "{report:?}");
        let summary = push.await.unwrap().unwrap();

        let last_delete = *f
            .world
            .positions("gc", Op::Delete, "chunks/")
            .last()
            .unwrap();
        let first_check = f.world.positions("push", Op::Head, "chunks/")[0];
        assert!(
            first_check > last_delete,
            "the push checked a chunk (op {first_check}) before the gc's last delete (op {last_delete})"
        );
        assert!(
            summary.new > 0,
            "the base was deleted, so the push uploads it again: {summary:?}"
        );
        f.assert_complete("app").await;
    });
}

/// The push has stored every chunk and pauses just before writing its
/// manifest, the window in which its new chunks are named by nothing: a
/// deleting gc with a grace of zero sees its lease and defers. A dry run
/// afterwards writes nothing at all, not even a lease.
#[test]
fn chunks_of_a_push_not_yet_named_by_its_manifest_survive_gc() {
    rt().block_on(async {
        let f = Arc::new(Fixture::new());
        f.orphan_base().await;
        // The push pauses just before writing its manifest (lease held).
        let before_manifest = f.world.gate("push", Op::Put, "manifests/");
        let push = tokio::spawn({
            let f = f.clone();
            async move { f.push(1, "app").await }
        });
        before_manifest.reached().await;
        // gc runs now: the push's lease is live, so nothing goes.
        let report = gc_now(&f).await;
        assert!(report.deferred, "{report:?}");
        before_manifest.open();
        push.await.unwrap().unwrap();
        f.assert_complete("app").await;
        // A dry run writes nothing at all, leases included.
        f.world.log.lock().unwrap().clear();
        let dry = lode_store::gc(&f.gc_store, &GcOptions::dry_run(Duration::ZERO))
            .await
            .unwrap();
        assert!(dry.collectable > 0);
        assert_eq!(f.world.count("gc", Op::Put, ""), 0);
        assert_eq!(f.world.count("gc", Op::Delete, ""), 0);
    });
}

/// Two pushes to one name: the first is paused just before it writes its
/// manifest while the second runs to the end. The first then fails with a
/// conflict and changes nothing: the name stays on the second's image.
#[test]
fn of_two_concurrent_pushes_to_one_name_exactly_one_wins() {
    rt().block_on(async {
        let f = Arc::new(Fixture::new());
        let before_manifest = f.world.gate("push", Op::Put, "manifests/");
        let first = tokio::spawn({
            let f = f.clone();
            async move { f.push(0, "app").await }
        });
        before_manifest.reached().await;
        // The second push, through the other view of the same store.
        let second = Push::new(
            &f.gc_store,
            &f.images[1],
            "app",
            f.kms.clone(),
            "default",
            lode_store::chunk_core::Salt::new(1, [9; 32]),
            &lode_store::chunk_core::RustCrypto,
        )
        .spool_dir(f._dir.path().to_path_buf())
        .run()
        .await
        .unwrap();
        assert!(second.replaced.is_none());
        before_manifest.open();
        let e = first.await.unwrap().unwrap_err();
        assert!(
            matches!(&e, lode_store::Error::PushConflict { name, .. } if name == "app"),
            "{e:?}"
        );
        assert!(e.to_string().contains("finished first"), "{e}");
        let current = f.gc_store.get_manifest("app").await.unwrap();
        assert_eq!(
            current.source_ref(),
            f.images[1],
            "the winner's image stays"
        );
        f.assert_complete("app").await;
    });
}

/// A push that replaces an image keeps a copy of the old manifest; gc keeps
/// the chunks only it names while it is younger than `retain`, and forgets
/// it (and collects them) after.
#[test]
fn a_replaced_version_keeps_its_chunks_until_retain_has_passed() {
    rt().block_on(async {
        let f = Fixture::new();
        f.push(0, "app").await.unwrap();
        let old = f.gc_store.get_manifest("app").await.unwrap();
        let s = f.push(1, "app").await.unwrap();
        let replaced = s.replaced.expect("the push replaced a version");
        assert!(!replaced.same_image);
        assert_eq!(replaced.source_ref, f.images[0]);
        let retired = f.gc_store.retired_versions("app").await.unwrap();
        assert_eq!(retired.len(), 1);
        assert_eq!(Some(&retired[0].object), replaced.retired.as_ref());

        let old_names: HashSet<String> = old.names().flatten().map(|n| n.to_hex()).collect();
        let stored = |f: &Fixture| {
            let f = f.gc_store.clone();
            async move {
                f.list_under("chunks")
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| o.name)
                    .collect::<HashSet<String>>()
            }
        };
        let report = gc_now(&f).await;
        assert_eq!(report.deleted, 0, "{report:?}");
        assert_eq!(report.retired_versions, 1);
        assert!(report.retained_chunks > 0, "{report:?}");
        assert!(
            old_names.is_subset(&stored(&f).await),
            "a running worker's chunks stay"
        );

        let report = lode_store::gc(
            &f.gc_store,
            &GcOptions::delete(Duration::ZERO, Duration::ZERO).retain(Duration::ZERO),
        )
        .await
        .unwrap();
        assert_eq!(report.retired_deleted, 1, "{report:?}");
        assert!(report.deleted > 0, "the old version's own chunks go");
        assert!(f.gc_store.retired_versions("app").await.unwrap().is_empty());
        assert!(!old_names.is_subset(&stored(&f).await));
        assert_eq!(report.missing_chunks, 0);
        f.assert_complete("app").await;

        // Pushing the same image again retires nothing.
        let s = f.push(1, "app").await.unwrap();
        assert!(s.replaced.unwrap().same_image);
        assert!(f.gc_store.retired_versions("app").await.unwrap().is_empty());
    });
}
