//! Trace context propagation (W3C `traceparent`, `tracestate` and `baggage`) through the
//! carriers pipelines use: HTTP headers, Kafka record headers, Temporal workflow headers and
//! environment variables of a child process.
//!
//! Every carrier implements OpenTelemetry's [`Injector`] and [`Extractor`], so it works with
//! any propagator; [`inject`] and [`extract`] use [`propagator`], the W3C trace context plus
//! baggage that other OpenTelemetry SDKs use by default, so a context written here is read
//! by them and the other way round.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::Error;

/// The W3C trace context and baggage propagators, composed.
pub fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Writes `cx` (its span context and baggage) into `carrier`.
pub fn inject(cx: &Context, carrier: &mut dyn Injector) {
    propagator().inject_context(cx, carrier);
}

/// Reads a context from `carrier`; without a valid `traceparent` the context has no span,
/// and a step started in it becomes a root.
pub fn extract(carrier: &dyn Extractor) -> Context {
    propagator().extract(carrier)
}

/// HTTP headers ([`http::HeaderMap`]): header names are case-insensitive; a value that is not
/// a valid header value is not written.
#[derive(Debug)]
pub struct HeaderCarrier<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Read-only HTTP headers, for extracting.
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Kafka record headers as a name-to-bytes map (the shape of `rskafka`'s
/// `Record::headers`; rdkafka's `OwnedHeaders` converts to and from it). Values are written
/// as UTF-8; a header that is not UTF-8 is not read. The key is written as the propagator
/// names it (`traceparent`), which is what the OpenTelemetry Java and Python Kafka
/// instrumentations write and read.
#[derive(Debug)]
pub struct KafkaHeaders<'a>(pub &'a mut BTreeMap<String, Vec<u8>>);

impl Injector for KafkaHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value.into_bytes());
    }
}

impl Extractor for KafkaHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| {
                // Header names are case-sensitive in Kafka; be lenient with writers that
                // capitalise them.
                self.0
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Environment variables for a job started by a scheduler, per OpenTelemetry's
/// environment-variable carrier: keys are upper-cased and every character other than
/// `A-Z`, `0-9` and `_` becomes `_` (`traceparent` is `TRACEPARENT`).
///
/// Inject into an empty carrier and pass [`EnvCarrier::vars`] to the child's environment
/// (`std::process::Command::envs`); in the child, extract from [`EnvCarrier::from_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvCarrier {
    vars: BTreeMap<String, String>,
}

impl EnvCarrier {
    /// An empty carrier, to inject into.
    pub fn new() -> Self {
        EnvCarrier::default()
    }

    /// The variables of this process that are valid carrier keys (upper-case names).
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// A carrier over the given variables (for tests, or an environment read elsewhere).
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        EnvCarrier {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .filter(|(k, _)| is_normalized(k))
                .collect(),
        }
    }

    /// The variables to set on the child process.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The variable name a propagation key travels in.
    pub fn normalize(key: &str) -> String {
        if key.is_empty() {
            return "_".to_string();
        }
        let mut out: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        if out.starts_with(|c: char| c.is_ascii_digit()) {
            out.insert(0, '_');
        }
        out
    }
}

fn is_normalized(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

impl Injector for EnvCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.vars.insert(Self::normalize(key), value);
    }
}

impl Extractor for EnvCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(&Self::normalize(key)).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.vars.keys().map(String::as_str).collect()
    }
}

/// The header Temporal's own OpenTelemetry interceptors (the Python, TypeScript and Go SDKs;
/// Cadence's Go client uses the same convention) put the trace context in.
pub const TEMPORAL_HEADER: &str = "_tracer-data";

/// A Temporal `Payload`: metadata plus data bytes, the value type of a workflow, activity or
/// signal header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemporalPayload {
    /// Payload metadata; `encoding` says how `data` is encoded.
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// The encoded value.
    pub data: Vec<u8>,
}

/// Temporal workflow headers (header name to payload), carrying the context as Temporal's
/// interceptors do: one header, [`TEMPORAL_HEADER`], whose payload is the propagator's
/// key-value map as a JSON object (`encoding: json/plain`).
#[derive(Debug, Default)]
pub struct TemporalHeaders {
    fields: HashMap<String, String>,
}

impl TemporalHeaders {
    /// Injects `cx` and returns the payload for [`TEMPORAL_HEADER`].
    pub fn inject(cx: &Context) -> TemporalPayload {
        let mut carrier = TemporalHeaders::default();
        inject(cx, &mut carrier);
        let data = serde_json::to_vec(&carrier.fields.into_iter().collect::<BTreeMap<_, _>>())
            .unwrap_or_else(|_| b"{}".to_vec());
        TemporalPayload {
            metadata: BTreeMap::from([("encoding".to_string(), b"json/plain".to_vec())]),
            data,
        }
    }

    /// Extracts the context from a workflow's headers; a missing header gives an empty
    /// context, a header that is not a JSON-encoded object an error.
    pub fn extract(headers: &HashMap<String, TemporalPayload>) -> Result<Context, Error> {
        let Some(payload) = headers.get(TEMPORAL_HEADER) else {
            return Ok(Context::new());
        };
        let encoding = payload.metadata.get("encoding").map(Vec::as_slice);
        if encoding != Some(b"json/plain".as_slice()) {
            return Err(Error::Carrier(format!(
                "temporal header {TEMPORAL_HEADER}: encoding {:?}, expected json/plain",
                encoding.map(String::from_utf8_lossy)
            )));
        }
        let fields: HashMap<String, String> = serde_json::from_slice(&payload.data)
            .map_err(|e| Error::Carrier(format!("temporal header {TEMPORAL_HEADER}: {e}")))?;
        Ok(extract(&TemporalHeaders { fields }))
    }
}

impl Injector for TemporalHeaders {
    fn set(&mut self, key: &str, value: String) {
        self.fields.insert(key.to_string(), value);
    }
}

impl Extractor for TemporalHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.fields.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    fn sample() -> Context {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        Context::new()
            .with_remote_span_context(sc)
            .with_baggage([opentelemetry::KeyValue::new("run", "42")])
    }

    fn assert_same(a: &Context, b: &Context) {
        let (sa, sb) = (
            a.span().span_context().clone(),
            b.span().span_context().clone(),
        );
        assert_eq!(sa.trace_id(), sb.trace_id());
        assert_eq!(sa.span_id(), sb.span_id());
        assert_eq!(sa.trace_flags(), sb.trace_flags());
        assert_eq!(sa.trace_state().header(), sb.trace_state().header());
        assert_eq!(
            b.baggage().get("run").map(|v| v.as_str().to_string()),
            Some("42".to_string())
        );
    }

    #[test]
    fn http_headers_round_trip() {
        let mut headers = http::HeaderMap::new();
        inject(&sample(), &mut HeaderCarrier(&mut headers));
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(headers["tracestate"], "vendor=x");
        assert_eq!(headers["baggage"], "run=42");
        assert_same(&sample(), &extract(&HeaderExtractor(&headers)));
    }

    #[test]
    fn kafka_headers_round_trip_and_tolerate_capitals() {
        let mut headers = BTreeMap::new();
        inject(&sample(), &mut KafkaHeaders(&mut headers));
        assert_eq!(
            headers["traceparent"],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_same(&sample(), &extract(&KafkaHeaders(&mut headers)));
        let mut capital =
            BTreeMap::from([("Traceparent".to_string(), headers["traceparent"].clone())]);
        let cx = extract(&KafkaHeaders(&mut capital));
        assert!(cx.span().span_context().is_valid());
    }

    #[test]
    fn env_keys_are_normalized_and_round_trip() {
        let mut env = EnvCarrier::new();
        inject(&sample(), &mut env);
        assert_eq!(
            env.vars().keys().collect::<Vec<_>>(),
            ["BAGGAGE", "TRACEPARENT", "TRACESTATE"]
        );
        assert_same(&sample(), &extract(&env));
        assert_eq!(EnvCarrier::normalize("x-b3.id"), "X_B3_ID");
        assert_eq!(EnvCarrier::normalize("3x"), "_3X");
        // Lower-case variables are not carrier keys (the spec reads only normalized names).
        let lower = EnvCarrier::from_vars([(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert!(!extract(&lower).span().span_context().is_valid());
    }

    #[test]
    fn temporal_payload_is_the_interceptors_json_map() {
        let payload = TemporalHeaders::inject(&sample());
        assert_eq!(payload.metadata["encoding"], b"json/plain");
        let json: serde_json::Value = serde_json::from_slice(&payload.data).unwrap();
        assert_eq!(
            json["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let headers = HashMap::from([(TEMPORAL_HEADER.to_string(), payload.clone())]);
        assert_same(&sample(), &TemporalHeaders::extract(&headers).unwrap());
        assert!(
            !TemporalHeaders::extract(&HashMap::new())
                .unwrap()
                .span()
                .span_context()
                .is_valid()
        );
        let mut binary = payload;
        binary
            .metadata
            .insert("encoding".into(), b"binary/plain".to_vec());
        let headers = HashMap::from([(TEMPORAL_HEADER.to_string(), binary)]);
        assert!(matches!(
            TemporalHeaders::extract(&headers),
            Err(Error::Carrier(_))
        ));
    }
}
