//! A chain of batch jobs, each a separate process started by the one before it (as a
//! scheduler's task would start the next), with the trace context handed down in the
//! environment (`TRACEPARENT`, `TRACESTATE`, `BAGGAGE`: OpenTelemetry's environment-variable
//! carrier), instrumented with `datatracing-sdk`:
//!
//! ```text
//! batch-chain <collector> <workdir> extract transform load
//! ```
//!
//! runs `extract`, which writes `<workdir>/extract.json` and starts `transform` with its own
//! span's context in the environment; `transform` continues the trace as a child, writes
//! its file and starts `load`; and so on. The first job starts a new trace unless its own
//! environment already carries one. Each job prints its trace and span id as a JSON line
//! (the first job prints the lines of the whole chain) and shuts its exporter down within
//! 10 s before it exits.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::process::Command;
use std::time::Duration;

use datatracing_sdk::propagation::{self, EnvCarrier};
use datatracing_sdk::{Counts, Dataset, ExportConfig, Step, StepKind};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::TraceContextExt;
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [collector, workdir, job, rest @ ..] = args.as_slice() else {
        return Err("usage: batch-chain <collector> <workdir> <job> [next jobs...]".into());
    };
    let kind = match job.as_str() {
        "extract" => StepKind::Ingest,
        "transform" => StepKind::Transform,
        "load" => StepKind::Materialize,
        _ => StepKind::Internal,
    };

    // Continue whatever trace the environment carries (none for the first job).
    let parent = propagation::extract(&EnvCarrier::from_env());
    let run = match parent.baggage().get("chain.run") {
        Some(v) => v.to_string(),
        None => format!("chain-{}", std::process::id()),
    };
    let parent = parent.with_baggage([opentelemetry::KeyValue::new("chain.run", run.clone())]);

    let pipeline = ExportConfig::new(collector.as_str(), format!("batch-{job}")).install()?;
    let input = format!("{workdir}/{}.json", previous(job));
    let output = format!("{workdir}/{job}.json");
    let mut step = Step::new(format!("run {job}"), kind)
        .job(format!("batch-{job}"), run)
        .output(&Dataset::new("file://", output.as_str()));
    let rows: Vec<i64> = match std::fs::read_to_string(&input) {
        Ok(text) => {
            step = step.input(&Dataset::new("file://", input.as_str()));
            serde_json::from_str(&text)?
        }
        Err(_) => (1..=5).collect(),
    };
    let span = step
        .counts(Counts {
            records_in: Some(rows.len() as i64),
            records_out: Some(rows.len() as i64),
            ..Counts::default()
        })
        .start_with_context(&pipeline.tracer("batch-chain"), &parent);
    let cx = parent.with_span(span);
    let doubled: Vec<i64> = rows.iter().map(|r| r * 2).collect();
    std::fs::write(&output, serde_json::to_string(&doubled)?)?;

    let sc = cx.span().span_context().clone();
    println!(
        "{}",
        json!({"job": job, "trace_id": sc.trace_id().to_string(), "span_id": sc.span_id().to_string()})
    );

    // Start the next job with this job's context in its environment.
    let mut failed = None;
    if let [next, later @ ..] = rest {
        let mut env = EnvCarrier::new();
        propagation::inject(&cx, &mut env);
        let out = Command::new(std::env::current_exe()?)
            .arg(collector)
            .arg(workdir)
            .arg(next)
            .args(later)
            .envs(env.vars())
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            failed = Some(format!(
                "job {next} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if let Some(message) = &failed {
        cx.span()
            .set_status(opentelemetry::trace::Status::error(message.clone()));
    }
    cx.span().end();
    pipeline.shutdown(Duration::from_secs(10))?;
    match failed {
        Some(message) => Err(message.into()),
        None => Ok(()),
    }
}

/// The job whose output this job reads.
fn previous(job: &str) -> &'static str {
    match job {
        "transform" => "extract",
        "load" => "transform",
        _ => "none",
    }
}
