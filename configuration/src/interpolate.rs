//! `${VAR}` / `${VAR:-default}` interpolation of the configuration text, before YAML parsing.

use std::collections::HashMap;

use crate::ConfigError;

/// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Whole-line comments are
/// left alone, so documentation may mention `${VAR}` freely.
pub fn interpolate(text: &str, env: &HashMap<String, String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(&interpolate_line(line, env, offset)?);
        }
        offset += line.len();
    }
    Ok(out)
}

fn interpolate_line(
    text: &str,
    env: &HashMap<String, String>,
    mut offset: usize,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            offset += i + 2;
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or(ConfigError::Unterminated(offset + i))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (env.get(name), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ConfigError::MissingVar(name.to_string())),
            }
            offset += i + 2 + end + 1;
            rest = &body[end + 1..];
        } else {
            out.push('$');
            offset += i + 1;
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolation() {
        let e = env(&[("PORT", "9000")]);
        assert_eq!(interpolate("a: ${PORT}", &e).unwrap(), "a: 9000");
        assert_eq!(interpolate("a: ${NOPE:-7}", &e).unwrap(), "a: 7");
        assert_eq!(
            interpolate("price: $$5 and $x", &e).unwrap(),
            "price: $5 and $x"
        );
        assert!(
            matches!(interpolate("a: ${NOPE}", &e), Err(ConfigError::MissingVar(v)) if v == "NOPE")
        );
        assert!(matches!(
            interpolate("a: ${OPEN", &e),
            Err(ConfigError::Unterminated(3))
        ));
    }
}
