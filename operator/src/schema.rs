//! Structural OpenAPI schemas for the parts of the CRDs that come from the policy model.
//!
//! A CRD schema must be *structural*: no `$ref`, no `anyOf` carrying types, a single `type`
//! per node, and no `additionalProperties` beside `properties`. The policy model's condition
//! tree is recursive, which a structural schema cannot express, so the tree is spelled out to
//! [`CONDITION_DEPTH`] levels; deeper nodes are opaque objects the operator validates itself
//! (with path-addressed errors in the SamplingPolicy status). CEL rules state what the
//! model's doc comments say: exactly one field per condition node, and keep-only modifiers.

use datatracing_core::policy::{Action, Rule};
use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

/// Levels of `all` / `any` / `not` the CRD schema spells out (deeper ones are checked by the
/// operator).
pub const CONDITION_DEPTH: usize = 3;
/// Condition levels that carry the exactly-one CEL rule. The API server bounds a CRD's
/// estimated CEL cost by the product of the enclosing lists' `maxItems`, so deeper nodes are
/// left to the operator's validation.
const CEL_CONDITION_DEPTH: usize = 2;
/// Most sub-conditions in one `all` / `any`.
const MAX_SUBCONDITIONS: u64 = 32;
/// Most rules in one SamplingPolicy.
pub const MAX_RULES: u64 = 128;

/// Fields of a condition node; CEL checks exactly one is set.
const CONDITION_FIELDS: &[&str] = &[
    "all",
    "any",
    "not",
    "duration",
    "status",
    "operation",
    "service",
    "kind",
    "attribute",
    "span_count",
    "root_present",
    "linked_to_kept",
    "probability",
];

/// Formats the API server understands; schemars' others (`uint32`, `uint`) are dropped.
const KNOWN_FORMATS: &[&str] = &["int32", "int64", "float", "double", "byte", "date-time"];

/// Schema of `SamplingPolicy.spec.rules`.
pub fn rules_schema(_: &mut SchemaGenerator) -> Schema {
    let mut s = structural_for::<Vec<Rule>>();
    s.insert("minItems".into(), json!(1));
    s.insert("maxItems".into(), json!(MAX_RULES));
    s.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "self.all(r, self.exists_one(o, o.name == r.name))",
            "message": "rule names must be unique within a SamplingPolicy",
        }]),
    );
    s
}

/// Schema of `TracingPipeline.spec.sampling.defaultAction`.
pub fn action_schema(_: &mut SchemaGenerator) -> Schema {
    structural_for::<Action>()
}

/// A map-keyed list of `meta/v1` Conditions, so server-side apply merges by `type`.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut s =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    s.insert("x-kubernetes-list-type".into(), json!("map"));
    s.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    s
}

fn structural_for<T: JsonSchema>() -> Schema {
    let root = schemars::schema_for!(T).to_value();
    let defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut v = structural(&root, &defs, 0);
    if let Some(o) = v.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
        o.remove("$defs");
    }
    Schema::try_from(v).unwrap_or_default()
}

/// Rewrites a schemars node into a structural one; `depth` counts condition nodes above.
fn structural(node: &Value, defs: &Map<String, Value>, depth: usize) -> Value {
    let Some(obj) = node.as_object() else {
        return node.clone();
    };
    if let Some(target) = obj.get("$ref").and_then(Value::as_str) {
        let name = target.trim_start_matches("#/$defs/");
        let mut inlined = if name == "Condition" && depth >= CONDITION_DEPTH {
            json!({
                "type": "object",
                "description": "A nested condition (validated by the operator; see the SamplingPolicy status).",
                "x-kubernetes-preserve-unknown-fields": true,
            })
        } else {
            let next = depth + usize::from(name == "Condition");
            let mut v = structural(defs.get(name).unwrap_or(&Value::Null), defs, next);
            match name {
                "Condition" => condition_bounds(&mut v, depth < CEL_CONDITION_DEPTH),
                "Action" => add_action_rules(&mut v),
                "Rule" => {
                    if let Some(n) = v
                        .pointer_mut("/properties/name")
                        .and_then(Value::as_object_mut)
                    {
                        n.insert("minLength".into(), json!(1));
                        n.insert("maxLength".into(), json!(253));
                    }
                }
                _ => {}
            }
            v
        };
        // A `$ref` beside a description keeps the description. Below the first nesting
        // level descriptions repeat the ones above and only bloat the CRD (the API server
        // and client-side apply limit its size).
        if let Some(o) = inlined.as_object_mut() {
            match obj.get("description") {
                Some(d) if depth < 2 => {
                    o.insert("description".into(), d.clone());
                }
                _ if depth >= 2 => strip_descriptions(o),
                _ => {}
            }
        }
        return inlined;
    }
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "anyOf" => {
                // `Option<T>` as `anyOf: [T, {type: null}]`: hoist T, mark nullable.
                let arms = v.as_array().cloned().unwrap_or_default();
                for arm in arms
                    .iter()
                    .filter(|a| a.get("type") != Some(&json!("null")))
                {
                    if let Value::Object(m) = structural(arm, defs, depth) {
                        out.extend(m);
                    }
                }
                out.insert("nullable".into(), json!(true));
            }
            "type" => match v {
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if let Some(t) = real.first() {
                        out.insert("type".into(), (*t).clone());
                    }
                    if real.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            },
            "format" => {
                if v.as_str().is_some_and(|f| KNOWN_FORMATS.contains(&f)) {
                    out.insert(k.clone(), v.clone());
                }
            }
            "additionalProperties" if obj.contains_key("properties") => {}
            "additionalProperties" if v.is_boolean() => {}
            "default" if v.is_null() => {}
            "$schema" | "title" | "$defs" | "const" => {}
            "properties" => {
                let props = v
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(name, p)| (name.clone(), structural(p, defs, depth)))
                            .collect::<Map<_, _>>()
                    })
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" => {
                out.insert(k.clone(), structural(v, defs, depth));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    // A map (`additionalProperties` schema) without a type would not be structural.
    if out.contains_key("properties") && !out.contains_key("type") {
        out.insert("type".into(), json!("object"));
    }
    Value::Object(out)
}

fn strip_descriptions(o: &mut Map<String, Value>) {
    o.remove("description");
    for v in o.values_mut() {
        match v {
            Value::Object(m) => strip_descriptions(m),
            Value::Array(a) => a
                .iter_mut()
                .filter_map(Value::as_object_mut)
                .for_each(strip_descriptions),
            _ => {}
        }
    }
}

/// Removes `format` values the API server does not know (schemars emits `uint`, `uint32`
/// for unsigned fields) from a whole CRD schema.
pub fn drop_unknown_formats(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !KNOWN_FORMATS.contains(&f))
            {
                o.remove("format");
            }
            o.values_mut().for_each(drop_unknown_formats);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_unknown_formats),
        _ => {}
    }
}

fn condition_bounds(v: &mut Value, with_cel: bool) {
    for (field, max) in [
        ("all", MAX_SUBCONDITIONS),
        ("any", MAX_SUBCONDITIONS),
        ("status", 16),
        ("kind", 16),
    ] {
        if let Some(p) = v
            .pointer_mut(&format!("/properties/{field}"))
            .and_then(Value::as_object_mut)
        {
            p.insert("maxItems".into(), json!(max));
        }
    }
    let Some(o) = v.as_object_mut() else { return };
    if !with_cel {
        return;
    }
    let set = CONDITION_FIELDS
        .iter()
        .map(|f| format!("has(self.{f})"))
        .collect::<Vec<_>>()
        .join(", ");
    o.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": format!("[{set}].filter(x, x).size() == 1"),
            "message": "a condition sets exactly one of: all, any, not, duration, status, operation, service, kind, attribute, span_count, root_present, linked_to_kept, probability",
        }]),
    );
}

fn add_action_rules(v: &mut Value) {
    let Some(o) = v.as_object_mut() else { return };
    o.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "self.decision == 'keep' || (!has(self.sample_rate) && !has(self.rate_limit) && !(has(self.keep_linked) && self.keep_linked))",
            "message": "sample_rate, rate_limit and keep_linked apply to decision: keep only",
        }]),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(v: &Value, path: &str, f: &mut dyn FnMut(&str, &Map<String, Value>)) {
        if let Some(o) = v.as_object() {
            f(path, o);
            for (k, c) in o {
                walk(c, &format!("{path}/{k}"), f);
            }
        } else if let Some(a) = v.as_array() {
            for (i, c) in a.iter().enumerate() {
                walk(c, &format!("{path}/{i}"), f);
            }
        }
    }

    #[test]
    fn rules_schema_is_structural() {
        let v = rules_schema(&mut SchemaGenerator::default()).to_value();
        let mut problems = Vec::new();
        walk(&v, "", &mut |path, o| {
            for bad in ["$ref", "anyOf", "oneOf", "$defs"] {
                if o.contains_key(bad) {
                    problems.push(format!("{path}: {bad}"));
                }
            }
            if o.get("type").is_some_and(Value::is_array) {
                problems.push(format!("{path}: type array"));
            }
            if o.contains_key("properties") && o.contains_key("additionalProperties") {
                problems.push(format!("{path}: additionalProperties beside properties"));
            }
        });
        assert!(problems.is_empty(), "{problems:#?}");
        // Spelled out to the fixed depth, then opaque.
        let mut deepest_opaque = 0;
        walk(&v, "", &mut |path, o| {
            if o.contains_key("x-kubernetes-preserve-unknown-fields") {
                deepest_opaque = deepest_opaque.max(path.matches("/not").count());
            }
        });
        assert_eq!(deepest_opaque, CONDITION_DEPTH);
    }

    #[test]
    fn unknown_formats_are_dropped_and_nullable_is_set() {
        let v = rules_schema(&mut SchemaGenerator::default()).to_value();
        let text = v.to_string();
        assert!(!text.contains("uint"), "uint formats must be dropped");
        let action = &v["items"]["properties"]["action"];
        assert_eq!(action["properties"]["sample_rate"]["nullable"], json!(true));
        assert_eq!(
            action["properties"]["sample_rate"]["type"],
            json!("integer")
        );
        assert!(action["x-kubernetes-validations"].is_array());
    }
}
