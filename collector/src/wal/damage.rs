//! Damaging a durable-queue log on purpose and checking that reading it keeps the promise of
//! the module documentation: reading ends, never yields a record that was not written, and
//! yields every record none of whose bytes changed.
//!
//! One checker serves the seeded unit test (`corruption_tests`) and the coverage-guided fuzz
//! target (`fuzz/fuzz_targets/wal_reader.rs`, through [`crate::fuzzing`]), so both judge the
//! reader by the same rule.

use std::collections::BTreeSet;
use std::fs;
use std::ops::Range;
use std::path::Path;

use datatracing_core::{
    Attributes, Span, SpanId, SpanKind, Status, StatusCode, Timestamp, TraceId,
};

use super::{Corruption, Pos, read_batch, record, seg_path};

/// One framed record (`[len][crc][payload]`) of two spans whose trace id starts with `trace`.
pub(crate) fn record(trace: u16) -> Vec<u8> {
    let spans: Vec<Span> = (0..2u64)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..2].copy_from_slice(&trace.to_be_bytes());
            id[15] = 1;
            let start = Timestamp::from_unix_nanos(1);
            Span {
                trace_id: TraceId::from_bytes(id),
                span_id: SpanId::from_bytes((i + 1).to_be_bytes()),
                parent_id: None,
                service: "s".to_string(),
                operation: format!("op-{i}"),
                kind: SpanKind::Transform,
                start_time: start,
                end_time: start.saturating_add_nanos(1),
                status: Status::new(StatusCode::Ok),
                attributes: Attributes::new(),
                events: Vec::new(),
                links: Vec::new(),
            }
        })
        .collect();
    let payload = record::encode(&spans);
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Where one written record lives: its trace, segment and byte range.
pub(crate) type Placed = (u16, u64, Range<usize>);

/// Writes `segments` segments of `per_segment` records each (traces numbered from 1).
pub(crate) fn write_log(dir: &Path, segments: u64, per_segment: u16) -> Vec<Placed> {
    let mut layout = Vec::new();
    let mut trace = 1u16;
    for seg in 0..segments {
        let mut buf = Vec::new();
        for _ in 0..per_segment {
            let r = record(trace);
            layout.push((trace, seg, buf.len()..buf.len() + r.len()));
            buf.extend(r);
            trace += 1;
        }
        #[allow(clippy::expect_used)] // a scratch directory the caller made
        fs::write(seg_path(dir, seg), buf).expect("writing a test segment");
    }
    layout
}

/// The end of the log as the append loop would leave it.
pub(crate) fn head_of(dir: &Path, segments: u64) -> Pos {
    let last = segments - 1;
    Pos {
        seg: last,
        off: fs::metadata(seg_path(dir, last)).map_or(0, |m| m.len()),
    }
}

/// Reads the whole log from the start in small batches, as the drain does. Errors when a
/// batch makes no progress (a reader that would spin) or after far more rounds than records.
pub(crate) fn read_all(dir: &Path, head: Pos) -> Result<(BTreeSet<u16>, Vec<Corruption>), String> {
    let mut pos = Pos::default();
    let mut traces = BTreeSet::new();
    let mut corrupt = Vec::new();
    let mut rounds = 0;
    while pos < head {
        if rounds >= 10_000 {
            return Err(format!("still reading after {rounds} batches, at {pos:?}"));
        }
        let b = read_batch(dir, pos, head, 7).map_err(|e| format!("read failed: {e}"))?;
        for s in &b.spans {
            let id = s.trace_id.as_bytes();
            traces.insert(u16::from_be_bytes([id[0], id[1]]));
        }
        corrupt.extend(b.corrupt);
        if !(b.next > pos || b.next == head) {
            return Err(format!("no progress at {pos:?}"));
        }
        pos = b.next;
        rounds += 1;
    }
    Ok((traces, corrupt))
}

/// One change to a segment's bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Harm {
    /// Flip bit `bit` of one byte.
    FlipBit { bit: u8 },
    /// Overwrite `len` bytes with values from `seed`.
    Scribble { len: usize, seed: u64 },
    /// Zero `len` bytes.
    Zero { len: usize },
    /// Overwrite 4 bytes with `value` (a plausible or absurd record length).
    Length { value: u32 },
}

/// A [`Harm`] at `at` (taken modulo the segment's length) of segment `seg` (modulo the count).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Damage {
    pub seg: u64,
    pub at: usize,
    pub harm: Harm,
}

impl Damage {
    /// Reads damages from arbitrary bytes (8 per damage), so a fuzzer's input maps onto
    /// every kind of harm anywhere in the log.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Vec<Damage> {
        bytes
            .chunks_exact(8)
            .take(16)
            .map(|c| {
                let at = usize::from(u16::from_le_bytes([c[1], c[2]]));
                let n = usize::from(c[4]) + 1;
                let harm = match c[3] % 4 {
                    0 => Harm::FlipBit { bit: c[4] % 8 },
                    1 => Harm::Scribble {
                        len: n % 41 + 1,
                        seed: u64::from(u32::from_le_bytes([c[4], c[5], c[6], c[7]])) | 1,
                    },
                    2 => Harm::Zero { len: n },
                    _ => Harm::Length {
                        value: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                    },
                };
                Damage {
                    seg: u64::from(c[0]),
                    at,
                    harm,
                }
            })
            .collect()
    }
}

/// Applies `damages` to a fresh log of `segments` x `per_segment` records in `dir`, reads it
/// back, and checks the reader's promise. `Err` says which part of it broke.
pub(crate) fn damage_and_check(
    dir: &Path,
    segments: u64,
    per_segment: u16,
    damages: &[Damage],
) -> Result<(), String> {
    let layout = write_log(dir, segments, per_segment);
    let head = head_of(dir, segments);
    let mut touched: Vec<(u64, usize)> = Vec::new();
    for d in damages {
        let seg = d.seg % segments;
        let path = seg_path(dir, seg);
        let mut bytes = fs::read(&path).map_err(|e| e.to_string())?;
        if bytes.is_empty() {
            continue;
        }
        let at = d.at % bytes.len();
        let room = bytes.len() - at;
        let run = match d.harm {
            Harm::FlipBit { bit } => {
                bytes[at] ^= 1 << (bit % 8);
                1
            }
            Harm::Scribble { len, mut seed } => {
                let n = len.clamp(1, room);
                for b in &mut bytes[at..at + n] {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                n
            }
            Harm::Zero { len } => {
                let n = len.clamp(1, room);
                bytes[at..at + n].fill(0);
                n
            }
            Harm::Length { value } => {
                let n = room.min(4);
                bytes[at..at + n].copy_from_slice(&value.to_le_bytes()[..n]);
                n
            }
        };
        fs::write(&path, bytes).map_err(|e| e.to_string())?;
        touched.extend((at..at + run).map(|i| (seg, i)));
    }
    let (traces, _) = read_all(dir, head)?;
    let written: BTreeSet<u16> = layout.iter().map(|l| l.0).collect();
    if let Some(t) = traces.difference(&written).next() {
        return Err(format!("a record of trace {t} was read but never written"));
    }
    for (trace, seg, range) in &layout {
        let intact = !touched.iter().any(|(s, i)| s == seg && range.contains(i));
        if intact && !traces.contains(trace) {
            return Err(format!(
                "intact record {trace} (segment {seg}, bytes {range:?}) was not read"
            ));
        }
    }
    Ok(())
}
