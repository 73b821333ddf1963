//! `datatracing policy validate FILE` and `datatracing policy test FILE --traces DIR`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use datatracing_core::policy::{SamplingPolicy, TraceFacts};
use datatracing_core::{LinkType, Span, TraceId};

/// Reads a policy from YAML or JSON.
pub fn load(path: &Path) -> anyhow::Result<SamplingPolicy> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a sampling policy", path.display()))
}

/// Validates a policy file; the summary on success, every problem on failure.
pub fn validate(path: &Path) -> anyhow::Result<String> {
    let policy = load(path)?;
    match policy.compile() {
        Ok(c) => Ok(format!(
            "{}: valid, {} rule(s), hash {}",
            path.display(),
            policy.rules.len(),
            c.hash()
        )),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            anyhow::bail!(
                "{}: {} problem(s)\n{}",
                path.display(),
                errors.len(),
                list.join("\n")
            )
        }
    }
}

/// Decides every trace found in `dir/*.json` (native batches) and reports, per trace, the
/// decision and the rule that made it. Traces linked to a trace kept with `keep_linked`
/// are evaluated again with `linked_to_kept`, as the collector does.
pub fn test(path: &Path, dir: &Path) -> anyhow::Result<String> {
    let policy = load(path)?;
    let compiled = policy.compile().map_err(|errors| {
        anyhow::anyhow!(
            "{}: invalid policy:\n{}",
            path.display(),
            errors
                .iter()
                .map(|e| format!("  {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut traces: BTreeMap<(String, TraceId), Vec<Span>> = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        #[derive(serde::Deserialize)]
        struct Batch {
            spans: Vec<Span>,
        }
        let batch: Batch = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a span batch", f.display()))?;
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for s in batch.spans {
            traces
                .entry((name.clone(), s.trace_id))
                .or_default()
                .push(s);
        }
    }
    // Lineage between traces, both directions.
    let mut linked: HashMap<TraceId, BTreeSet<TraceId>> = HashMap::new();
    for spans in traces.values() {
        for s in spans {
            for l in &s.links {
                if l.trace_id != s.trace_id
                    && matches!(
                        l.link_type,
                        LinkType::FollowsFrom | LinkType::DataDependency
                    )
                {
                    linked.entry(s.trace_id).or_default().insert(l.trace_id);
                    linked.entry(l.trace_id).or_default().insert(s.trace_id);
                }
            }
        }
    }
    let mut decisions: BTreeMap<(String, TraceId), datatracing_core::policy::Decision> = traces
        .iter()
        .map(|(k, spans)| {
            (
                k.clone(),
                compiled.evaluate(
                    &TraceFacts {
                        spans,
                        linked_to_kept: false,
                    },
                    0,
                ),
            )
        })
        .collect();
    // Lineage spreads until nothing changes (each pass keeps at least one more trace).
    loop {
        let keepers: BTreeSet<TraceId> = decisions
            .iter()
            .filter(|(_, d)| d.keep_linked)
            .map(|((_, t), _)| *t)
            .collect();
        let mut changed = false;
        for ((name, t), spans) in &traces {
            let key = (name.clone(), *t);
            let near = linked
                .get(t)
                .is_some_and(|ls| ls.iter().any(|l| keepers.contains(l)));
            if near && !decisions[&key].keep {
                decisions.insert(
                    key,
                    compiled.evaluate(
                        &TraceFacts {
                            spans,
                            linked_to_kept: true,
                        },
                        0,
                    ),
                );
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out = String::new();
    let (mut kept, mut dropped) = (0, 0);
    for ((name, t), d) in &decisions {
        let spans = traces[&(name.clone(), *t)].len();
        let verdict = if d.keep { "KEEP" } else { "DROP" };
        if d.keep {
            kept += 1;
        } else {
            dropped += 1;
        }
        let extra = if d.rate_limited {
            " (rate limited)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{name:<20} {t}  {verdict}  rule={} rate=1/{} spans={spans}{extra}",
            d.rule, d.sample_rate
        );
    }
    let _ = writeln!(
        out,
        "{kept} kept, {dropped} dropped (policy hash {})",
        compiled.hash()
    );
    Ok(out)
}
