//! The operator's error type.

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A desired object could not be built (a bug, or a spec the schema should have refused).
    #[error("rendering child objects: {0}")]
    Render(String),
    /// The spec renders a configuration the collector would refuse.
    #[error("invalid configuration: {0}")]
    InvalidConfiguration(String),
    /// A selected SamplingPolicy is invalid.
    #[error("{0}")]
    InvalidSamplingPolicy(String),
    /// The referenced password Secret or key is missing.
    #[error("{0}")]
    SecretNotFound(String),
    /// RBAC does not let the operator read the referenced Secret (it has no cluster-wide
    /// Secret access; the namespace must grant it).
    #[error("{0}")]
    SecretForbidden(String),
    /// A child with our name exists and belongs to someone else.
    #[error("{0}")]
    Conflict(String),
    /// The pipeline's ClickHouse database belongs to another pipeline.
    #[error("{0}")]
    StorageConflict(String),
    /// ClickHouse failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] datatracing_store_clickhouse::Error),
    /// Operator configuration is invalid.
    #[error("invalid operator configuration: {0}")]
    Config(String),
    /// Serving the ops endpoints failed.
    #[error("ops server: {0}")]
    Serve(String),
    /// Leadership was lost; the process must stop reconciling.
    #[error("lost the leader lease {0}")]
    LostLease(String),
    /// Adding or removing the storage-cleanup finalizer failed. (Failures of the reconcile
    /// the finalizer wraps keep their own variant: see `From<finalizer::Error>`.)
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<FinalizerError>),
    /// A task the operator spawned (the controllers, the ops server) panicked or was
    /// cancelled.
    #[error("{task} task failed: {source}")]
    Join {
        /// Which task.
        task: &'static str,
        /// What tokio reported.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The error of kube-runtime's finalizer helper around our reconcile.
pub type FinalizerError = kube::runtime::finalizer::Error<Error>;

impl From<FinalizerError> for Error {
    /// The reconcile's own failure when that is what failed (so metrics and backoff see
    /// the real reason); otherwise a [`Error::Finalizer`].
    fn from(e: FinalizerError) -> Self {
        match e {
            FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

impl From<datatracing_config::ConfigError> for Error {
    fn from(e: datatracing_config::ConfigError) -> Self {
        Error::Config(e.to_string())
    }
}

impl Error {
    /// A short, stable label for metrics (`errors_total{reason}`).
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "invalid",
            Error::Kube(_) => "kubernetes",
            Error::Render(_) => "render",
            Error::InvalidConfiguration(_) => "invalid_configuration",
            Error::InvalidSamplingPolicy(_) => "invalid_sampling_policy",
            Error::SecretNotFound(_) => "secret_not_found",
            Error::SecretForbidden(_) => "secret_forbidden",
            Error::Conflict(_) => "conflict",
            Error::StorageConflict(_) => "storage_conflict",
            Error::ClickHouse(_) => "clickhouse",
            Error::Config(_) => "config",
            Error::Serve(_) => "serve",
            Error::LostLease(_) => "lost_lease",
            Error::Finalizer(_) => "finalizer",
            Error::Join { .. } => "task_failed",
        }
    }
}
