//! JSON Schema of the native span format, published as `docs/span.schema.json`.
//!
//! The committed file is generated from the Rust types; a test fails when the two drift.

/// The JSON Schema of one span in the native (v2) JSON form.
pub fn span_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(crate::Span)).unwrap_or_default()
}

/// The schema as pretty JSON with a trailing newline, exactly as committed.
pub fn span_schema_pretty() -> String {
    let mut s = serde_json::to_string_pretty(&span_schema()).unwrap_or_default();
    s.push('\n');
    s
}

/// The JSON Schema of a sampling policy, published as `docs/sampling-policy.schema.json`.
/// (The `SamplingPolicy` CRD derives its structural schema from the same types through
/// kube's schema generator, which rewrites optional fields as `nullable`.)
pub fn policy_schema_pretty() -> String {
    let v = serde_json::to_value(schemars::schema_for!(crate::policy::SamplingPolicy))
        .unwrap_or_default();
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_policy_schema_matches_the_code() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/sampling-policy.schema.json"
        );
        let generated = super::policy_schema_pretty();
        if std::env::var_os("DATATRACING_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/sampling-policy.schema.json is stale; regenerate with: DATATRACING_BLESS=1 cargo test -p datatracing-core schema"
        );
        assert!(
            !generated.contains("oneOf"),
            "no untagged enums: the CRD schema must stay structural"
        );
    }

    #[test]
    fn committed_schema_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/span.schema.json");
        let generated = super::span_schema_pretty();
        if std::env::var_os("DATATRACING_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/span.schema.json is stale; regenerate with: DATATRACING_BLESS=1 cargo test -p datatracing-core schema"
        );
        let v = super::span_schema();
        assert_eq!(v["additionalProperties"], serde_json::json!(false));
        let required: Vec<&str> = v["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x.as_str())
            .collect();
        for f in [
            "trace_id",
            "span_id",
            "service",
            "operation",
            "start_time",
            "end_time",
        ] {
            assert!(required.contains(&f), "{f} must be required");
        }
    }
}
