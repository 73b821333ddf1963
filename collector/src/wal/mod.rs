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
//! `checkpoint` (`<seq> <offset>`, replaced atomically). A torn record at the end of the
//! last segment (a crash mid-append) is cut off at recovery. The payload is a batch of spans
//! in a versioned binary form (`record`); logs written before it hold JSON payloads, which
//! are still read. Draining (reading, and checkpointing off the async workers) is `drain`.

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
    fs::rename(tmp, dir.join("checkpoint"))
}

/// Reads one record at the reader's position; `Ok(None)` at a clean end or a torn tail.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; HEADER as usize];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut payload = vec![0u8; len];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// The log holds `max_bytes` of unwritten spans.
    Full,
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
        let mut good = 0u64;
        {
            let mut r = BufReader::new(File::open(&path)?);
            while let Some(p) = read_record(&mut r)? {
                good += HEADER + p.len() as u64;
            }
        }
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
            if p.0 + payload.len() as u64 + HEADER > self.max_bytes {
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
                    match open(head.seg + 1) {
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

/// Reads records from `from` up to `head`, at most `max_spans` spans; returns them and the
/// position after the last record read.
pub(crate) fn read_batch(
    dir: &Path,
    from: Pos,
    head: Pos,
    max_spans: usize,
) -> std::io::Result<(Vec<Span>, Pos, u64)> {
    let mut spans = Vec::new();
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
        while spans.len() < max_spans {
            let Some(payload) = read_record(&mut r)? else {
                break;
            };
            record::decode(&payload, &mut spans)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            pos.off += HEADER + payload.len() as u64;
            bytes += HEADER + payload.len() as u64;
        }
        if pos.off >= end && pos.seg < head.seg {
            pos = Pos {
                seg: pos.seg + 1,
                off: 0,
            };
        }
    }
    Ok((spans, pos, bytes))
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
        let (first, next, bytes) = read_batch(dir.path(), rec.checkpoint, head, 12).unwrap();
        assert_eq!(first.len(), 12);
        checkpoint(&wal, next, bytes, 12).unwrap();
        let pending = wal.pending_bytes();
        drop(wal);

        let (wal, rec) = Wal::open(&config(dir.path())).unwrap();
        assert_eq!(rec.checkpoint, next);
        assert_eq!(rec.pending_bytes, pending, "recovery counts what is left");
        let head = *wal.head().borrow();
        let (rest, end, _) = read_batch(dir.path(), rec.checkpoint, head, 1000).unwrap();
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
        let (all, _, _) = read_batch(dir.path(), rec.checkpoint, head, 100).unwrap();
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
        let (all, end, _) = read_batch(dir.path(), rec.checkpoint, head, 100).unwrap();
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
}
