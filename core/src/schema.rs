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

/// A `#[schemars(transform = ...)]` for enums of unit variants: schemars turns documented
/// variants into a `oneOf` of string constants, each with its own `description`. Structural
/// CRD schemas forbid `description` inside `oneOf`, so this folds it back into one
/// `{"type": "string", "enum": [...]}`; the variants keep their doc comments for Rust readers,
/// the enum's own doc is the schema's description.
pub fn string_enum(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let Some(serde_json::Value::Array(variants)) = obj.get("oneOf") else {
        return;
    };
    let names: Option<Vec<serde_json::Value>> = variants
        .iter()
        .map(|v| {
            let c = v.get("const")?;
            c.is_string().then(|| c.clone())
        })
        .collect();
    let Some(names) = names else {
        return;
    };
    obj.remove("oneOf");
    obj.insert("type".into(), "string".into());
    obj.insert("enum".into(), serde_json::Value::Array(names));
}

#[cfg(test)]
mod tests {
    #[test]
    fn documented_unit_enums_stay_one_string_enum() {
        let v = serde_json::to_value(schemars::schema_for!(crate::policy::Verdict)).unwrap();
        assert_eq!(v["type"], "string", "{v}");
        assert_eq!(v["enum"], serde_json::json!(["keep", "drop"]), "{v}");
        assert!(v.get("oneOf").is_none(), "{v}");
        assert_eq!(v["description"], "Keep or drop.", "{v}");
    }

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
