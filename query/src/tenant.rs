//! Tenant scoping of every read (ADR 0010). Handlers take their state through [`Tenanted`]
//! instead of `State`: the extractor replaces the state's store with the caller's tenant's
//! view (from the token the auth layer accepted), so a handler holds no handle that could
//! read another tenant's spans.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use datatracing_core::Tenant;
use datatracing_http::Principal;
use datatracing_store::TraceReader;

/// State whose store can be narrowed to one tenant.
pub(crate) trait Scoped: Clone + Send + Sync + 'static {
    /// The same state reading only `tenant`'s spans.
    fn scoped(&self, tenant: &Tenant) -> Self;
}

/// The store handle the service opened is the default tenant's; any other is asked for.
pub(crate) fn scope_reader(store: &Arc<dyn TraceReader>, tenant: &Tenant) -> Arc<dyn TraceReader> {
    if tenant.is_default() {
        Arc::clone(store)
    } else {
        store.for_tenant(tenant)
    }
}

impl Scoped for Arc<dyn TraceReader> {
    fn scoped(&self, tenant: &Tenant) -> Self {
        scope_reader(self, tenant)
    }
}

/// The route state, scoped to the caller's tenant. Without a [`Principal`] (authentication
/// off, where every token is the default tenant's) the default tenant.
pub(crate) struct Tenanted<S>(pub S);

impl<S: Scoped> FromRequestParts<S> for Tenanted<S> {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let tenant = parts
            .extensions
            .get::<Principal>()
            .map(|p| p.tenant.clone())
            .unwrap_or_default();
        Ok(Tenanted(state.scoped(&tenant)))
    }
}
