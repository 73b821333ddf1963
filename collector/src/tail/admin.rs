//! Admin routes: the policy status and an on-demand reload.

use std::sync::Arc;

use super::policy::PolicyHolder;

/// `GET /admin/sampling` (status) and `POST /admin/sampling/reload`.
pub(crate) fn admin_routes(holder: Option<Arc<PolicyHolder>>) -> axum::Router {
    use axum::routing::{get, post};
    use datatracing_http::{ApiError, ErrorCode};
    let status = {
        let holder = holder.clone();
        move || {
            let holder = holder.clone();
            async move {
                match holder {
                    Some(h) => {
                        axum::Json(serde_json::json!({ "enabled": true, "status": h.status() }))
                    }
                    None => axum::Json(serde_json::json!({ "enabled": false })),
                }
            }
        }
    };
    let reload = move || {
        let holder = holder.clone();
        async move {
            let Some(h) = holder else {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    "sampling is not enabled",
                ));
            };
            let h2 = Arc::clone(&h);
            match tokio::task::spawn_blocking(move || h2.reload()).await {
                Ok(Ok(changed)) => Ok(axum::Json(
                    serde_json::json!({ "changed": changed, "status": h.status() }),
                )),
                Ok(Err(e)) => Err(ApiError::invalid_argument(format!(
                    "policy rejected; the previous one stays: {e}"
                ))),
                Err(e) => Err(ApiError::internal(&e)),
            }
        }
    };
    axum::Router::new()
        .route("/admin/sampling", get(status))
        .route("/admin/sampling/reload", post(reload))
}
