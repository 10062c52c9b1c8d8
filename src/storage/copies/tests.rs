//! Unit tests of the copy set against real directories: writes through the quorum with copies
//! lost, corrupted, slow, emptied, foreign or holding WAL no quorum held, and what a stream start
//! and a rebuild read back afterwards.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::super::read;
use super::super::segment::{extent, list_segments, read_sums, read_verified};
use super::super::wal::{segment_file_name, SEGMENT_SIZE};
use super::*;

const SYSTEM: u64 = 7_000_000_000_000_000_001;

fn dirs(root: &Path) -> Vec<PathBuf> {
    (0..6).map(|i| root.join(format!("c{i}"))).collect()
}

fn open(dirs: &[PathBuf]) -> CopySet {
    CopySet::open(dirs, "main", 4, Arc::new(Notices::default()))
}

fn bytes(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

/// Waits (letting copies join) until `done` holds; fails after 30 s.
async fn until(set: &mut CopySet, what: &str, mut done: impl FnMut(&CopySet) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(set) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            set.view().status()
        );
        set.tend();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every copy that is up flushed `end` (the spares follow the quorum closely).
async fn settle(set: &mut CopySet, end: Lsn) {
    until(set, "every copy flushed", |s| {
        s.view()
            .status()
            .iter()
            .all(|c| c.state != "up" || c.flushed_lsn == end.to_string())
    })
    .await;
}

/// The verified WAL a copy holds in `[from, to)`, read back through its checksums.
fn held(copy: &Path, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = Vec::new();
    for segment in list_segments(&copy.join("main/wal")) {
        let base = segment.segment * SEGMENT_SIZE;
        if base + SEGMENT_SIZE <= from.0 || base >= to.0 {
            continue;
        }
        let lo = from.0.saturating_sub(base);
        let hi = (to.0 - base).min(SEGMENT_SIZE);
        for (_, piece) in read_verified(&segment.path, lo, hi).unwrap() {
            out.extend_from_slice(&piece);
        }
    }
    out
}

#[tokio::test]
async fn quorum_writes_survive_two_lost_copies_and_rebuild_reads_around_corruption() {
    let root = tempfile::tempdir().unwrap();
    let dirs = dirs(root.path());
    let mut set = open(&dirs);
    let start = Lsn(3 * SEGMENT_SIZE + 100);
    let from = set.begin_stream(SYSTEM, 1, start).await.unwrap();
    assert_eq!(
        from,
        Lsn(3 * SEGMENT_SIZE),
        "fresh copies stream from the segment start"
    );
    let first = bytes(1, 5100);
    assert_eq!(set.write(1, from, first.clone()).await, Lsn(from.0 + 5100));
    // Two copies become unusable: writes go on with four.
    for dir in &dirs[..2] {
        fs::remove_dir_all(dir).unwrap();
        fs::write(dir, b"not a directory").unwrap();
    }
    let second = vec![7u8; 3000];
    let end = set.write(1, Lsn(from.0 + 5100), second.clone()).await;
    assert_eq!(end, Lsn(from.0 + 8100));
    until(&mut set, "two copies down", |s| s.copies_up() == 4).await;
    // Corrupt one copy's bytes: the rebuild reads that range elsewhere.
    let segment = segment_file_name(1, 3);
    let victim = dirs[2].join("main/wal").join(&segment);
    let file = fs::OpenOptions::new().write(true).open(&victim).unwrap();
    file.write_all_at(b"garbage", 200).unwrap();
    let pg_wal = root.path().join("pg_wal");
    fs::create_dir_all(&pg_wal).unwrap();
    let copy_dirs: Vec<PathBuf> = dirs.iter().map(|d| d.join("main")).collect();
    let identity = set.view().identity();
    let readable = read::readable(&copy_dirs, identity.as_ref());
    assert_eq!(readable.len(), 4);
    let restored_end = read::restore_wal(&readable, 1, from, &pg_wal).unwrap();
    assert_eq!(restored_end, end);
    let restored = fs::read(pg_wal.join(&segment)).unwrap();
    assert_eq!(restored.len() as u64, SEGMENT_SIZE);
    assert_eq!(&restored[..5100], &first[..]);
    assert_eq!(&restored[5100..8100], &second[..]);
    // The lost copies come back: backfilled from the members, they count again.
    for dir in &dirs[..2] {
        fs::remove_file(dir).unwrap();
    }
    until(&mut set, "six copies", |s| s.copies_up() == 6).await;
    assert_eq!(held(&dirs[0], from, end), held(&dirs[3], from, end));
    assert_eq!(&held(&dirs[0], from, end)[5100..], &second[..]);
}

#[tokio::test]
async fn a_slow_copy_leaves_the_quorum_with_its_queue_bounded_then_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let dirs = dirs(root.path());
    let mut set = open(&dirs);
    let limit = 8 << 20;
    set.set_lag_limit(limit);
    let from = set
        .begin_stream(SYSTEM, 1, Lsn(SEGMENT_SIZE))
        .await
        .unwrap();
    // Copy 5 writes at 1 MiB/s: the others go on without it.
    let throttle = dirs[5].join("main/test-throttle");
    fs::write(&throttle, (1u64 << 20).to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the throttle is looked at
    let batch = 256 << 10;
    let mut at = from;
    let mut written = Vec::new();
    for i in 0..128 {
        let data = bytes(i, batch);
        written.extend_from_slice(&data);
        set.send(1, at, data);
        at = Lsn(at.0 + batch as u64);
        for copy in set.view().status() {
            assert!(copy.queued_bytes <= limit + batch as u64, "{copy:?}");
        }
        // As the receiver does: no more reading while a member that cannot leave is full.
        while set.view().backlog() > limit {
            let quorum = set.quorum();
            let _ = tokio::time::timeout(Duration::from_millis(50), quorum.progressed()).await;
        }
    }
    assert_eq!(
        set.wait_durable(at).await,
        at,
        "commits go on without the slow copy"
    );
    let slow = &set.view().status()[5];
    assert_eq!(slow.state, "lagging", "{slow:?}");
    assert!(
        slow.reason.as_deref().unwrap().contains("behind"),
        "{slow:?}"
    );
    assert!(set.copies_up() <= 5);
    // Its queue was let go: memory is not held for it.
    until(&mut set, "the lagging copy's queue dropped", |s| {
        s.view().status()[5].queued_bytes == 0
    })
    .await;
    // Fast again: it catches up from its peers and counts again, holding the same WAL.
    fs::remove_file(&throttle).unwrap();
    until(&mut set, "six copies", |s| s.copies_up() == 6).await;
    assert_eq!(held(&dirs[5], from, at), written);
    let more = bytes(99, 1000);
    let end = set.write(1, at, more).await;
    assert_eq!(end, Lsn(at.0 + 1000));
    until(&mut set, "copy 5 flushed the new write", |s| {
        s.view().status()[5].flushed_lsn == end.to_string()
    })
    .await;
}

#[tokio::test]
async fn an_emptied_copy_does_not_count_until_it_is_backfilled() {
    let root = tempfile::tempdir().unwrap();
    let dirs = dirs(root.path());
    let mut set = open(&dirs);
    let from = set
        .begin_stream(SYSTEM, 1, Lsn(2 * SEGMENT_SIZE))
        .await
        .unwrap();
    // Over two segments.
    let data = bytes(5, (SEGMENT_SIZE + (1 << 20)) as usize);
    let end = set.write(1, from, data.clone()).await;
    settle(&mut set, end).await;
    drop(set);
    // A replaced, empty disk where copy 0 was.
    fs::remove_dir_all(&dirs[0]).unwrap();
    fs::create_dir_all(&dirs[0]).unwrap();
    // Slow enough to see it backfilling.
    fs::create_dir_all(dirs[0].join("main")).unwrap();
    fs::write(
        dirs[0].join("main/test-throttle"),
        (32u64 << 20).to_string(),
    )
    .unwrap();
    let mut set = open(&dirs);
    let status = set.view().status();
    assert_eq!(status[0].state, "backfilling", "{status:?}");
    assert!(status[0].reason.as_deref().unwrap().contains("empty"));
    assert_eq!(set.copies_up(), 5, "an empty copy is not counted");
    assert_eq!(set.durable(), end);
    until(&mut set, "six copies", |s| s.copies_up() == 6).await;
    assert_eq!(held(&dirs[0], from, end), data);
    assert!(dirs[0].join("main/identity").exists());
    // Its segments were put in place whole: no temporary file is left.
    let names: Vec<String> = fs::read_dir(dirs[0].join("main/wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    assert_eq!(names.len(), 2, "{names:?}");
}

#[tokio::test]
async fn another_clusters_copy_is_refused_and_so_is_a_compute_behind_the_copies() {
    let root = tempfile::tempdir().unwrap();
    let dirs = dirs(root.path());
    let mut set = open(&dirs);
    let from = set
        .begin_stream(SYSTEM, 1, Lsn(SEGMENT_SIZE))
        .await
        .unwrap();
    let end = set.write(1, from, bytes(1, 10_000)).await;
    settle(&mut set, end).await;
    drop(set);
    // Another cluster's copy directory moved in where copy 2 was.
    let other: Vec<PathBuf> = (0..6).map(|i| root.path().join(format!("o{i}"))).collect();
    let mut other_set = open(&other);
    let other_from = other_set
        .begin_stream(SYSTEM + 1, 1, Lsn(SEGMENT_SIZE))
        .await
        .unwrap();
    let other_end = other_set.write(1, other_from, bytes(2, 20_000)).await;
    settle(&mut other_set, other_end).await;
    drop(other_set);
    fs::remove_dir_all(&dirs[2]).unwrap();
    fs::rename(&other[0], &dirs[2]).unwrap();
    let foreign = dirs[2].join("main/wal").join(segment_file_name(1, 1));
    let foreign_before = fs::read(&foreign).unwrap();

    let mut set = open(&dirs);
    let status = set.view().status();
    assert_eq!(status[2].state, "refused", "{status:?}");
    assert!(
        status[2].reason.as_deref().unwrap().contains("another")
            || status[2]
                .reason
                .as_deref()
                .unwrap()
                .contains("database system")
    );
    assert_eq!(set.copies_up(), 5);
    // A compute of another system is refused, and one whose WAL ends before the copies'.
    let e = set.begin_stream(SYSTEM + 1, 1, end).await.unwrap_err();
    assert!(e.contains("database system"), "{e}");
    let e = set
        .begin_stream(SYSTEM, 1, Lsn(end.0 - 1))
        .await
        .unwrap_err();
    assert!(e.contains("older than the copies"), "{e}");
    // The right compute streams on; the foreign copy is never written.
    let from = set.begin_stream(SYSTEM, 1, end).await.unwrap();
    assert_eq!(from, end);
    set.write(1, end, bytes(3, 5000)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a look at the refused copy
    assert_eq!(set.view().status()[2].state, "refused");
    assert_eq!(fs::read(&foreign).unwrap(), foreign_before);
}

#[tokio::test]
async fn a_new_stream_drops_what_no_quorum_held_and_never_mixes_it_in() {
    let root = tempfile::tempdir().unwrap();
    let dirs = dirs(root.path());
    let mut set = open(&dirs);
    let from = set
        .begin_stream(SYSTEM, 1, Lsn(SEGMENT_SIZE))
        .await
        .unwrap();
    let first = bytes(1, 50_000);
    let durable = set.write(1, from, first.clone()).await;
    settle(&mut set, durable).await;
    drop(set);
    // Three copies got more that never reached a quorum (a compute that crashed then).
    let mut three = CopySet::open(&dirs[..3], "main", 3, Arc::new(Notices::default()));
    assert_eq!(
        three.begin_stream(SYSTEM, 1, durable).await.unwrap(),
        durable
    );
    let beyond = three.write(1, durable, bytes(2, 30_000)).await;
    settle(&mut three, beyond).await;
    drop(three);

    let mut set = open(&dirs);
    assert_eq!(set.copies_up(), 6);
    assert_eq!(set.durable(), durable);
    // A compute that holds all of it streams from the quorum's position: the members'
    // WAL beyond it is removed and this stream's bytes are written there instead.
    let start = set
        .begin_stream(SYSTEM, 1, Lsn(durable.0 + 30_000))
        .await
        .unwrap();
    assert_eq!(start, durable);
    for dir in &dirs {
        let segment = dirs[0].join("main/wal").join(segment_file_name(1, 1));
        let _ = segment;
        let wal = dir.join("main/wal").join(segment_file_name(1, 1));
        let (_, end) = extent(&read_sums(&wal)).unwrap();
        assert_eq!(SEGMENT_SIZE + end, durable.0, "{}", dir.display());
    }
    assert_eq!(set.durable(), durable);
    let second = bytes(3, 40_000);
    let end = set.write(1, durable, second.clone()).await;
    let pg_wal = root.path().join("pg_wal");
    fs::create_dir_all(&pg_wal).unwrap();
    let copy_dirs: Vec<PathBuf> = dirs.iter().map(|d| d.join("main")).collect();
    let identity = set.view().identity();
    let restored_end = read::restore_wal(
        &read::readable(&copy_dirs, identity.as_ref()),
        1,
        from,
        &pg_wal,
    )
    .unwrap();
    assert_eq!(restored_end, end);
    let restored = fs::read(pg_wal.join(segment_file_name(1, 1))).unwrap();
    assert_eq!(&restored[..50_000], &first[..]);
    assert_eq!(&restored[50_000..90_000], &second[..]);
}
