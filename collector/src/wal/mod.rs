//! The durable queue: a size-bounded write-ahead log on local disk.
//!
//! With it on, a request is acknowledged once its spans are appended and fsynced here (many
//! concurrent requests share one fsync), not when the store has them. A drain task reads the
//! log from its checkpoint, writes to the store, and advances the checkpoint; on start-up it
//! resumes from the checkpoint, so spans acknowledged before a crash or during a store outage
//! are written later. Delivery to the store is at-least-once: a crash between a store write
//! and the checkpoint replays that batch (the embedded store and the DAG deduplicate by
//! span id).
//!
//! Layout: `wal-<seq>.log` segments of records `[len u32][crc32 u32][payload]`, and
//! `checkpoint` (`<seq> <offset>`, replaced atomically, then the directory fsynced). A torn
//! record at the end of the last segment (a crash mid-append) is cut off at recovery.
//!
//! A corrupt record anywhere else (a checksum or length that does not hold, a payload that
//! does not decode) is logged with its segment and offset, counted
//! (`datatracing_collector_wal_corrupt_records_total`), and skipped: the reader searches
//! forward for the next record whose length and checksum hold and goes on from there, so
//! every intact record is still delivered. A hard link to the damaged segment is kept in
//! `corrupt/` for inspection. The search does bounded work; if it finds nothing, the rest
//! of that segment is skipped. The payload is a batch of spans
//! in a versioned binary form (`record`); logs written before it hold JSON payloads, which
//! are still read. Draining (reading, and checkpointing off the async workers) is `drain`.

pub(crate) mod damage;
mod drain;
pub(crate) mod record;

pub(crate) use drain::{Checkpoint, Drain};

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datatracing_config::DurableQueueConfig;
use datatracing_core::Span;
use tokio::sync::{mpsc, oneshot, watch};

/// A position in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub seg: u64,
    pub off: u64,
}

const HEADER: u64 = 8;

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("wal-{seg:020}.log"))
}

fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut segs: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("wal-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    segs.sort_unstable();
    Ok(segs)
}

fn read_checkpoint(dir: &Path) -> Option<Pos> {
    let text = fs::read_to_string(dir.join("checkpoint")).ok()?;
    let (a, b) = text.trim().split_once(' ')?;
    Some(Pos {
        seg: a.parse().ok()?,
        off: b.parse().ok()?,
    })
}

fn write_checkpoint(dir: &Path, pos: Pos) -> std::io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", pos.seg, pos.off)?;
    f.sync_all()?;
    fs::rename(tmp, dir.join("checkpoint"))?;
    // The rename is durable only once the directory is.
    sync_dir(dir)
}

/// What is found at a position of a segment.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A record whose length and checksum hold.
    Record(Vec<u8>),
    /// The end of the data, exactly at a record boundary.
    End,
    /// Fewer bytes than a header, or than the header's length: a torn tail at the end of
    /// the last segment, corruption anywhere else.
    Short,
    /// A length no writer produces (0 or beyond what is left) or a checksum that fails.
    Corrupt(&'static str),
}

/// Reads one record at the reader's position; `remaining` is what is left of the segment
/// (a corrupt length must not allocate more than that).
fn read_record(r: &mut impl Read, remaining: u64) -> std::io::Result<Found> {
    let mut head = [0u8; HEADER as usize];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got == 0 {
        return Ok(Found::End);
    }
    if got < head.len() {
        return Ok(Found::Short);
    }
    let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 {
        return Ok(Found::Corrupt("zero length"));
    }
    if len > remaining.saturating_sub(HEADER) {
        return Ok(Found::Short);
    }
    let mut payload = vec![0u8; len as usize];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Found::Short),
        Err(e) => return Err(e),
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Found::Corrupt("checksum mismatch"));
    }
    Ok(Found::Record(payload))
}

/// The record at `off` of `buf`, if its length and checksum hold.
fn record_at(buf: &[u8], off: usize) -> Option<&[u8]> {
    let head = buf.get(off..off + HEADER as usize)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 {
        return None;
    }
    let start = off + HEADER as usize;
    let payload = buf.get(start..start.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// The offset in `buf`, after its first byte, of the next record whose length and checksum
/// hold; `None` if there is none or the search exceeds its work budget (checksumming a few
/// times the buffer), which bounds the time a large damaged region can take.
fn resync(buf: &[u8]) -> Option<usize> {
    let mut budget = buf.len().saturating_mul(4).max(1 << 20);
    for off in 1..buf.len().saturating_sub(HEADER as usize) {
        let len = u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len == 0 || len > buf.len() - off - HEADER as usize {
            continue;
        }
        if budget < len {
            return None;
        }
        budget -= len;
        if record_at(buf, off).is_some() {
            return Some(off);
        }
    }
    None
}

/// A damaged stretch of the log that was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Corruption {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of the first damaged byte.
    pub offset: u64,
    /// Bytes skipped from there.
    pub skipped: u64,
    /// What was wrong.
    pub reason: String,
}

/// Keeps a hard link to a damaged segment in `corrupt/` (once), so the bytes survive the
/// segment's deletion after the checkpoint passes it.
fn quarantine(dir: &Path, seg: u64) {
    let corrupt = dir.join("corrupt");
    let target = corrupt.join(format!("wal-{seg:020}.log"));
    if target.exists() {
        return;
    }
    let linked = fs::create_dir_all(&corrupt).and_then(|()| {
        fs::hard_link(seg_path(dir, seg), &target)
            .or_else(|_| fs::copy(seg_path(dir, seg), &target).map(|_| ()))
    });
    if let Err(e) = linked {
        tracing::warn!(error = %e, segment = seg, "cannot keep a copy of the damaged durable queue segment");
    }
}

/// Fsyncs a directory, so a rename or a new file in it survives a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// The log holds `max_bytes` of unwritten spans.
    Full,
    /// The record alone is larger than `max_bytes`: it could never be appended, so
    /// retrying it is pointless (unlike [`AppendError::Full`]).
    TooLarge { bytes: u64, max_bytes: u64 },
    /// The disk failed or the log is closed.
    Unavailable(String),
}

struct Append {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<(), AppendError>>,
}

struct Shared {
    /// Durable end of the log (after fsync).
    head: watch::Sender<Pos>,
    /// Bytes between checkpoint and head, and the span count there.
    pending: Mutex<(u64, u64)>,
}

/// The log's appending side.
#[derive(Clone)]
pub(crate) struct Wal {
    tx: mpsc::Sender<Append>,
    shared: Arc<Shared>,
    dir: PathBuf,
    max_bytes: u64,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The durable queue as a readiness buffer: ready through a store outage while one more
/// largest request fits.
pub(crate) struct Room {
    pub wal: Wal,
    pub max_bytes: u64,
    pub reserve: u64,
}

impl datatracing_http::Buffer for Room {
    fn room(&self) -> Result<serde_json::Value, String> {
        let pending = self.wal.pending_bytes();
        if pending.saturating_add(self.reserve) > self.max_bytes {
            return Err(format!(
                "the durable queue is full ({pending} of {} bytes)",
                self.max_bytes
            ));
        }
        Ok(serde_json::json!({
            "pending_bytes": pending,
            "max_bytes": self.max_bytes,
            "note": "acknowledging into the durable queue; spans are written when the store returns",
        }))
    }
}

/// Where the drain task resumes, and what recovery found.
pub(crate) struct Recovered {
    pub checkpoint: Pos,
    pub pending_bytes: u64,
}

impl Wal {
    /// Opens (creating) the log, cuts a torn tail, and starts the appender thread.
    pub(crate) fn open(cfg: &DurableQueueConfig) -> std::io::Result<(Wal, Recovered)> {
        fs::create_dir_all(&cfg.dir)?;
        let mut segs = list_segments(&cfg.dir)?;
        if segs.is_empty() {
            File::create(seg_path(&cfg.dir, 0))?.sync_all()?;
            segs.push(0);
        }
        let first = segs[0];
        let checkpoint = read_checkpoint(&cfg.dir)
            .filter(|c| segs.contains(&c.seg))
            .unwrap_or(Pos { seg: first, off: 0 });
        // Validate the last segment and cut anything after its last good record.
        let last = *segs.last().unwrap_or(&0);
        let path = seg_path(&cfg.dir, last);
        let good = last_segment_end(&fs::read(&path)?);
        let f = OpenOptions::new().write(true).open(&path)?;
        if f.metadata()?.len() != good {
            tracing::warn!(segment = %path.display(), kept = good, "cut a torn record off the durable queue");
            f.set_len(good)?;
            f.sync_all()?;
        }
        let head = Pos {
            seg: last,
            off: good,
        };
        let mut pending_bytes = 0u64;
        for s in segs.iter().filter(|s| **s >= checkpoint.seg) {
            let len = fs::metadata(seg_path(&cfg.dir, *s))?.len();
            pending_bytes += if *s == checkpoint.seg {
                len.saturating_sub(checkpoint.off)
            } else {
                len
            };
        }
        let (head_tx, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            head: head_tx,
            pending: Mutex::new((pending_bytes, 0)),
        });
        let (tx, rx) = mpsc::channel(1024);
        let dir = cfg.dir.clone();
        let seg_bytes = cfg.segment_bytes.max(1024);
        let sh = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("dt-wal-append".into())
            .spawn(move || append_loop(dir, head, seg_bytes, rx, sh))?;
        Ok((
            Wal {
                tx,
                shared,
                dir: cfg.dir.clone(),
                max_bytes: cfg.max_bytes,
            },
            Recovered {
                checkpoint,
                pending_bytes,
            },
        ))
    }

    /// Appends spans durably; resolves once they are fsynced.
    pub(crate) async fn append(&self, spans: &[Span]) -> Result<(), AppendError> {
        let payload = record::encode(spans);
        {
            let mut p = self
                .shared
                .pending
                .lock()
                .map_err(|_| AppendError::Unavailable("poisoned".into()))?;
            let bytes = payload.len() as u64 + HEADER;
            if bytes > self.max_bytes {
                return Err(AppendError::TooLarge {
                    bytes,
                    max_bytes: self.max_bytes,
                });
            }
            if p.0 + bytes > self.max_bytes {
                return Err(AppendError::Full);
            }
            // Reserve now so concurrent appends cannot overshoot the bound together.
            p.0 += payload.len() as u64 + HEADER;
            p.1 += spans.len() as u64;
        }
        let (reply, rx) = oneshot::channel();
        let n = spans.len();
        let reserved = payload.len() as u64 + HEADER;
        let sent = self.tx.send(Append { payload, reply }).await;
        let result = match sent {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(AppendError::Unavailable("durable queue closed".into()))),
            Err(_) => Err(AppendError::Unavailable("durable queue closed".into())),
        };
        if result.is_err()
            && let Ok(mut p) = self.shared.pending.lock()
        {
            p.0 = p.0.saturating_sub(reserved);
            p.1 = p.1.saturating_sub(n as u64);
        }
        result
    }

    /// Bytes not yet written to the store.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.shared.pending.lock().map(|p| p.0).unwrap_or(0)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn head(&self) -> watch::Receiver<Pos> {
        self.shared.head.subscribe()
    }

    fn released(&self, bytes: u64, spans: u64) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.0 = p.0.saturating_sub(bytes);
            p.1 = p.1.saturating_sub(spans);
        }
    }
}

fn append_loop(
    dir: PathBuf,
    mut head: Pos,
    seg_bytes: u64,
    mut rx: mpsc::Receiver<Append>,
    shared: Arc<Shared>,
) {
    let open = |seg: u64| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(seg_path(&dir, seg))
    };
    let mut file = match open(head.seg) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the durable queue for appending");
            return;
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < 1024 {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let mut buf = Vec::with_capacity(group.iter().map(|a| a.payload.len() + 8).sum());
        for a in &group {
            buf.extend_from_slice(&(a.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&a.payload).to_le_bytes());
            buf.extend_from_slice(&a.payload);
        }
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                head.off += buf.len() as u64;
                if head.off >= seg_bytes {
                    // The new file's directory entry must be durable before records in it
                    // are acknowledged.
                    match open(head.seg + 1).and_then(|f| sync_dir(&dir).map(|()| f)) {
                        Ok(f) => {
                            file = f;
                            head = Pos {
                                seg: head.seg + 1,
                                off: 0,
                            };
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a new durable queue segment")
                        }
                    }
                }
                shared.head.send_replace(head);
                for a in group {
                    let _ = a.reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "durable queue append failed");
                // Nothing of this group is acknowledged; truncate back to the last good end.
                let _ = file.set_len(head.off);
                for a in group {
                    let _ = a.reply.send(Err(AppendError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

/// Where the valid data of the last segment ends: after its last record, skipping damaged
/// stretches that are followed by intact records (those are the reader's to skip and
/// count); only a tail with no intact record after it is a torn append to cut.
fn last_segment_end(buf: &[u8]) -> u64 {
    let mut off = 0usize;
    let mut good = 0usize;
    while off < buf.len() {
        if let Some(p) = record_at(buf, off) {
            off += HEADER as usize + p.len();
            good = off;
            continue;
        }
        match resync(&buf[off..]) {
            Some(skip) => off += skip,
            None => break,
        }
    }
    good as u64
}

/// What [`read_batch`] returns: spans, the position after them, the log bytes they (and
/// skipped damage) took, and the damage skipped.
pub(crate) struct Batch {
    pub spans: Vec<Span>,
    pub next: Pos,
    pub bytes: u64,
    pub corrupt: Vec<Corruption>,
}

/// Reads records from `from` up to `head`, at most `max_spans` spans. Damaged records are
/// skipped (see the module documentation) and reported in [`Batch::corrupt`].
pub(crate) fn read_batch(
    dir: &Path,
    from: Pos,
    head: Pos,
    max_spans: usize,
) -> std::io::Result<Batch> {
    let mut spans = Vec::new();
    let mut corrupt = Vec::new();
    let mut pos = from;
    let mut bytes = 0u64;
    while pos < head && spans.len() < max_spans {
        let path = seg_path(dir, pos.seg);
        let end = if pos.seg == head.seg {
            head.off
        } else {
            fs::metadata(&path)?.len()
        };
        if pos.off >= end {
            if pos.seg == head.seg {
                break;
            }
            pos = Pos {
                seg: pos.seg + 1,
                off: 0,
            };
            continue;
        }
        let mut f = File::open(&path)?;
        f.seek(SeekFrom::Start(pos.off))?;
        let mut r = BufReader::new(f).take(end - pos.off);
        while spans.len() < max_spans && pos.off < end {
            let damage = match read_record(&mut r, end - pos.off)? {
                Found::Record(payload) => {
                    let before = spans.len();
                    match record::decode(&payload, &mut spans) {
                        Ok(()) => {
                            pos.off += HEADER + payload.len() as u64;
                            bytes += HEADER + payload.len() as u64;
                            continue;
                        }
                        Err(e) => {
                            // Checksummed but not decodable (a format this build does not
                            // know): skip that record only.
                            spans.truncate(before);
                            Some((HEADER + payload.len() as u64, e.to_string()))
                        }
                    }
                }
                Found::End => break,
                Found::Short => Some((0, "record runs past the segment end".to_string())),
                Found::Corrupt(why) => Some((0, why.to_string())),
            };
            let Some((known_len, reason)) = damage else {
                break;
            };
            let skipped = if known_len > 0 {
                known_len
            } else {
                // Search the rest of the segment for the next intact record.
                let mut rest = Vec::new();
                let mut f = File::open(&path)?;
                f.seek(SeekFrom::Start(pos.off))?;
                f.take(end - pos.off).read_to_end(&mut rest)?;
                resync(&rest).map_or(end - pos.off, |s| s as u64)
            };
            quarantine(dir, pos.seg);
            corrupt.push(Corruption {
                segment: path.clone(),
                offset: pos.off,
                skipped,
                reason,
            });
            pos.off += skipped;
            bytes += skipped;
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(pos.off))?;
            r = BufReader::new(f).take(end - pos.off);
        }
        if pos.off >= end && pos.seg < head.seg {
            pos = Pos {
                seg: pos.seg + 1,
                off: 0,
            };
        }
    }
    Ok(Batch {
        spans,
        next: pos,
        bytes,
        corrupt,
    })
}

/// Moves the checkpoint and deletes segments wholly before it.
pub(crate) fn checkpoint(wal: &Wal, pos: Pos, bytes: u64, spans: u64) -> std::io::Result<()> {
    write_checkpoint(&wal.dir, pos)?;
    for seg in list_segments(&wal.dir)?
        .into_iter()
        .filter(|s| *s < pos.seg)
    {
        fs::remove_file(seg_path(&wal.dir, seg))?;
    }
    wal.released(bytes, spans);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datatracing_core::{Timestamp, TraceId};

    fn spans(trace: u8, n: u64) -> Vec<Span> {
        // The storage contract's span builder; ids 1..=n.
        (0..n)
            .map(|i| {
                datatracing_store_contract::simple_span(
                    TraceId::from_bytes([trace; 16]),
                    i,
                    None,
                    "s",
                    Timestamp::from_unix_nanos(1),
                    1,
                )
            })
            .collect()
    }

    fn config(dir: &Path) -> DurableQueueConfig {
        DurableQueueConfig {
            enabled: true,
            dir: dir.to_path_buf(),
            segment_bytes: 1024,
            ..DurableQueueConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_read_checkpoint_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, rec) = Wal::open(&config(dir.path())).unwrap();
        assert_eq!(rec.pending_bytes, 0);
        for t in 1..=5u8 {
            wal.append(&spans(t, 6)).await.unwrap();
        }
        let head = *wal.head().borrow();
        assert!(head.seg >= 1, "small segments rotate: {head:?}");
        // Read part, checkpoint it, and "crash" (drop) before reading the rest.
        let Batch {
            spans: first,
            next,
            bytes,
            ..
        } = read_batch(dir.path(), rec.checkpoint, head, 12).unwrap();
        assert_eq!(first.len(), 12);
        checkpoint(&wal, next, bytes, 12).unwrap();
        let pending = wal.pending_bytes();
        drop(wal);

        let (wal, rec) = Wal::open(&config(dir.path())).unwrap();
        assert_eq!(rec.checkpoint, next);
        assert_eq!(rec.pending_bytes, pending, "recovery counts what is left");
        let head = *wal.head().borrow();
        let Batch {
            spans: rest,
            next: end,
            ..
        } = read_batch(dir.path(), rec.checkpoint, head, 1000).unwrap();
        assert_eq!(
            rest.len(),
            18,
            "the unacknowledged-by-store rest is replayed"
        );
        assert_eq!(end, head);
        assert_eq!(rest[0].trace_id, TraceId::from_bytes([3; 16]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(&DurableQueueConfig {
                segment_bytes: 1 << 20,
                ..config(dir.path())
            })
            .unwrap();
            wal.append(&spans(1, 2)).await.unwrap();
        }
        // A crash in the middle of an append leaves half a record.
        let seg = seg_path(dir.path(), 0);
        let good = fs::metadata(&seg).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'[', b'{'])
            .unwrap();
        drop(f);
        let (wal, rec) = Wal::open(&DurableQueueConfig {
            segment_bytes: 1 << 20,
            ..config(dir.path())
        })
        .unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), good);
        wal.append(&spans(2, 1)).await.unwrap();
        let head = *wal.head().borrow();
        let all = read_batch(dir.path(), rec.checkpoint, head, 100)
            .unwrap()
            .spans;
        assert_eq!(all.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_from_before_the_binary_format_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        // What an older collector left: one JSON record, not yet checkpointed.
        let json = serde_json::to_vec(&spans(1, 2)).unwrap();
        let mut old = Vec::new();
        old.extend_from_slice(&(json.len() as u32).to_le_bytes());
        old.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        old.extend_from_slice(&json);
        fs::write(seg_path(dir.path(), 0), &old).unwrap();
        let (wal, rec) = Wal::open(&DurableQueueConfig {
            segment_bytes: 1 << 20,
            ..config(dir.path())
        })
        .unwrap();
        assert_eq!(rec.pending_bytes, old.len() as u64);
        // New appends go after it in the binary form; one read returns both, in order.
        wal.append(&spans(2, 3)).await.unwrap();
        let head = *wal.head().borrow();
        let Batch {
            spans: all,
            next: end,
            ..
        } = read_batch(dir.path(), rec.checkpoint, head, 100).unwrap();
        assert_eq!(end, head);
        let traces: Vec<u8> = all.iter().map(|s| s.trace_id.as_bytes()[0]).collect();
        assert_eq!(traces, vec![1, 1, 2, 2, 2]);
        assert_eq!(all[..2], spans(1, 2)[..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bound_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&DurableQueueConfig {
            max_bytes: 600,
            ..config(dir.path())
        })
        .unwrap();
        wal.append(&spans(1, 1)).await.unwrap();
        let mut refused = false;
        for t in 2..20u8 {
            if wal.append(&spans(t, 1)).await == Err(AppendError::Full) {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(wal.pending_bytes() <= 600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_larger_than_the_bound_is_too_large_not_full() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&DurableQueueConfig {
            max_bytes: 600,
            ..config(dir.path())
        })
        .unwrap();
        // An empty log: `Full` would tell the client to retry a request that can never fit.
        match wal.append(&spans(1, 40)).await {
            Err(AppendError::TooLarge { bytes, max_bytes }) => {
                assert!(bytes > 600, "{bytes}");
                assert_eq!(max_bytes, 600);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(wal.pending_bytes(), 0);
        wal.append(&spans(2, 1)).await.unwrap();
    }
}

#[cfg(test)]
mod corruption_tests {
    //! Damaged logs: every intact record is still read, damage is reported with its
    //! segment and offset, and reading always ends (each read runs on a thread with a
    //! deadline, so a reader that spins fails the test instead of hanging it).

    use super::damage::{Damage, Harm, damage_and_check, head_of, write_log};
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    /// Runs `work` on a thread and fails the test if it does not finish in time.
    fn within_deadline<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(work());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("reading the damaged log did not finish")
    }

    fn read_all(dir: &Path, head: Pos) -> (BTreeSet<u16>, Vec<Corruption>) {
        let dir = dir.to_path_buf();
        within_deadline(move || damage::read_all(&dir, head)).unwrap()
    }

    #[test]
    fn a_flipped_byte_in_a_middle_segment_skips_one_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let layout = write_log(dir.path(), 3, 10);
        // Flip a payload byte of the 4th record of segment 0 (not the last segment).
        let (bad_trace, seg, range) = layout[3].clone();
        let path = seg_path(dir.path(), seg);
        let mut bytes = fs::read(&path).unwrap();
        bytes[range.start + 20] ^= 0x40;
        fs::write(&path, bytes).unwrap();

        let (traces, corrupt) = read_all(dir.path(), head_of(dir.path(), 3));
        let expected: BTreeSet<u16> = layout
            .iter()
            .map(|l| l.0)
            .filter(|t| *t != bad_trace)
            .collect();
        assert_eq!(traces, expected, "every other record is delivered");
        assert_eq!(corrupt.len(), 1, "{corrupt:?}");
        assert_eq!(corrupt[0].segment, path);
        assert_eq!(corrupt[0].offset, range.start as u64);
        assert_eq!(corrupt[0].skipped, range.len() as u64);
        assert!(
            dir.path()
                .join("corrupt")
                .join(path.file_name().unwrap())
                .exists()
        );
    }

    #[test]
    fn a_corrupt_length_does_not_allocate_it_and_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let layout = write_log(dir.path(), 2, 5);
        let (bad_trace, seg, range) = layout[1].clone();
        let path = seg_path(dir.path(), seg);
        let mut bytes = fs::read(&path).unwrap();
        bytes[range.start..range.start + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        fs::write(&path, bytes).unwrap();
        let (traces, corrupt) = read_all(dir.path(), head_of(dir.path(), 2));
        assert_eq!(traces.len(), 9);
        assert!(!traces.contains(&bad_trace));
        assert_eq!(corrupt.len(), 1);
    }

    #[test]
    fn recovery_keeps_intact_records_after_damage_in_the_last_segment() {
        let dir = tempfile::tempdir().unwrap();
        let layout = write_log(dir.path(), 1, 6);
        let path = seg_path(dir.path(), 0);
        let full = fs::read(&path).unwrap();
        let mut bytes = full.clone();
        bytes[layout[2].2.start + 12] ^= 1;
        // And a torn append after the last record.
        bytes.extend_from_slice(&[50, 0, 0, 0, 1, 2]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(
            last_segment_end(&bytes),
            full.len() as u64,
            "only the torn tail is cut; the damaged record is the reader's to skip"
        );
        let (traces, corrupt) = read_all(
            dir.path(),
            Pos {
                seg: 0,
                off: full.len() as u64,
            },
        );
        assert_eq!(traces.len(), 5);
        assert_eq!(corrupt.len(), 1);
    }

    /// A small deterministic generator, so the run is repeatable and needs no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Randomized damage (flipped bits, overwritten runs, zeroed runs, random lengths) at
    /// random places of random segments, 300 seeded rounds, judged by the same rule as the
    /// fuzz target (`damage::damage_and_check`).
    #[test]
    fn randomized_damage_never_hides_an_intact_record() {
        for seed in 1..=300u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let segments = 1 + rng.below(3) as u64;
            let per_segment = 1 + rng.below(8) as u16;
            let damages: Vec<Damage> = (0..1 + rng.below(4))
                .map(|_| Damage {
                    seg: rng.next(),
                    at: rng.below(1 << 16),
                    harm: match rng.below(4) {
                        0 => Harm::FlipBit {
                            bit: rng.below(8) as u8,
                        },
                        1 => Harm::Scribble {
                            len: 1 + rng.below(40),
                            seed: rng.next() | 1,
                        },
                        2 => Harm::Zero {
                            len: 1 + rng.below(200),
                        },
                        _ => Harm::Length {
                            value: rng.next() as u32,
                        },
                    },
                })
                .collect();
            let outcome = within_deadline(move || {
                let dir = tempfile::tempdir().unwrap();
                damage_and_check(dir.path(), segments, per_segment, &damages)
            });
            if let Err(e) = outcome {
                panic!("seed {seed}: {e}");
            }
        }
    }
}
