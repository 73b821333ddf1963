//! Tenants: the isolation unit of a shared deployment (ADR 0010).
//!
//! A bearer token may be bound to a tenant. The collector stamps every span it accepts with
//! its token's tenant in the reserved attribute [`TENANT_ATTRIBUTE`] (a value the client sent
//! is overwritten, never trusted); stores keep the tenant beside the span and every read is
//! confined to one tenant. The empty name is the default tenant: tokens without a tenant and
//! deployments without authentication use it, so they behave as before tenants existed.

use std::fmt;

use crate::{AttributeValue, Span};

/// The reserved span attribute holding the tenant a span was accepted for.
pub const TENANT_ATTRIBUTE: &str = "datatracing.tenant";

/// Longest tenant name (a DNS label, so it fits Kubernetes names and metric labels).
pub const MAX_TENANT_LEN: usize = 63;

/// A validated tenant name: `[a-z0-9-]{1,63}`, or empty for the default tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    /// The default tenant (`""`).
    pub fn default_tenant() -> Self {
        Self(String::new())
    }

    /// Checks a configured name. The empty name is not accepted here: the default tenant is
    /// spelled by leaving the tenant out.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_TENANT_LEN {
            return Err(format!(
                "a tenant name has 1 to {MAX_TENANT_LEN} characters, got {}",
                name.len()
            ));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "tenant name {name:?} may only hold a-z, 0-9 and '-'"
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// The name (`""` for the default tenant).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default tenant.
    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }

    /// The tenant a stored span belongs to, from its reserved attribute (absent or not a
    /// string: the default tenant). Stores call this on write; only the collector sets the
    /// attribute, through [`Tenant::stamp`].
    pub fn of_span(span: &Span) -> &str {
        match span.attributes.get(TENANT_ATTRIBUTE) {
            Some(AttributeValue::String(s)) => s,
            _ => "",
        }
    }

    /// Marks `span` as accepted for this tenant, replacing whatever the client put in the
    /// reserved attribute (removing it for the default tenant).
    pub fn stamp(&self, span: &mut Span) {
        if self.is_default() {
            span.attributes.remove(TENANT_ATTRIBUTE);
        } else {
            span.attributes.insert(
                TENANT_ATTRIBUTE.to_string(),
                AttributeValue::String(self.0.clone()),
            );
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Tenant::parse("team-a").is_ok());
        assert!(Tenant::parse(&"a".repeat(63)).is_ok());
        for bad in ["", "Team", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Tenant::default().is_default());
    }
}
