//! The `datatracing` command: argument parsing, configuration, logging, signals, and the
//! wiring of store, collector and query into the all-in-one and standalone servers.

mod deferred;
pub mod peers;
pub mod policy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use datatracing_collector::Collector;
use datatracing_config::{Backend, Config, LogConfig, LogFormat, OperatorConfig, TlsConfig};
use datatracing_core::ConfigDuration;
use datatracing_http::{Alpn, Authenticator, HttpMetrics, Readiness, TlsAcceptor, TlsMetrics};
use datatracing_query::QueryService;
use datatracing_store::{Health, TraceReader, TraceWriter};
use datatracing_store_clickhouse::{
    ClickHouseAdmin, ClickHouseMetrics, ClickHouseReader, ClickHouseStore, MigrationReport,
};
use datatracing_store_sqlite::{EmbeddedStore, OpenMode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// DataTracing: tracing for data pipelines.
#[derive(Debug, Parser)]
#[command(name = "datatracing", version, about)]
pub struct Cli {
    /// YAML configuration file.
    #[arg(long, short = 'c', global = true, env = "DATATRACING_CONFIG")]
    pub config: Option<PathBuf>,
    /// Embedded store data directory (default ./data).
    #[arg(long, global = true, env = "DATATRACING_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Ingest (collector) listen address (default 0.0.0.0:4318).
    #[arg(long, global = true, env = "DATATRACING_INGEST_ADDR")]
    pub ingest_addr: Option<SocketAddr>,
    /// OTLP/gRPC listen address (default 0.0.0.0:4317).
    #[arg(long, global = true, env = "DATATRACING_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Query listen address (default 0.0.0.0:16686).
    #[arg(long, global = true, env = "DATATRACING_QUERY_ADDR")]
    pub query_addr: Option<SocketAddr>,
    /// Most expensive query reads at once (`query.max_concurrent_reads`, default 8).
    #[arg(long, global = true, env = "DATATRACING_QUERY_MAX_CONCURRENT_READS")]
    pub max_concurrent_reads: Option<usize>,
    /// Delete spans older than this, e.g. 72h (0 keeps everything; default 168h).
    #[arg(long, global = true, env = "DATATRACING_RETENTION")]
    pub retention: Option<ConfigDuration>,
    /// Log format: text or json.
    #[arg(long, global = true, env = "DATATRACING_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `debug,hyper=info`.
    #[arg(long, global = true, env = "DATATRACING_LOG")]
    pub log_level: Option<String>,
    /// Storage backend: embedded (the default) or clickhouse.
    #[arg(long, global = true, env = "DATATRACING_STORAGE")]
    pub storage: Option<Backend>,
    /// ClickHouse HTTP URL (with `--storage clickhouse`). The password is read from
    /// `DATATRACING_CLICKHOUSE_PASSWORD` or `storage.clickhouse.password_file`, never a flag.
    #[arg(long, global = true, env = "DATATRACING_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database (default datatracing).
    #[arg(long, global = true, env = "DATATRACING_CLICKHOUSE_DATABASE")]
    pub clickhouse_database: Option<String>,
    /// PEM file of the CAs that sign the ClickHouse server's certificate (`https://` URLs;
    /// `storage.clickhouse.ca_file`).
    #[arg(long, global = true, env = "DATATRACING_CLICKHOUSE_CA_FILE")]
    pub clickhouse_ca_file: Option<PathBuf>,
    /// TLS certificate (PEM) for every listener (`tls.cert_file`); with `--tls-key-file`.
    #[arg(long, global = true, env = "DATATRACING_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) for every listener (`tls.key_file`).
    #[arg(long, global = true, env = "DATATRACING_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// CAs (PEM) for client certificates: mutual TLS (`tls.client_ca_file`).
    #[arg(long, global = true, env = "DATATRACING_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collector and query in one process on the embedded store.
    AllInOne,
    /// The collector alone (owns writes to the store).
    Collector,
    /// The query service alone (reads the collector's embedded store read-only).
    Query,
    /// Print the effective configuration as YAML and exit (secrets are never printed).
    PrintConfig,
    /// Create or upgrade the ClickHouse schema (idempotent) and exit.
    Migrate,
    /// Check and try sampling policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The Kubernetes operator: reconciles TracingPipeline and SamplingPolicy resources.
    Operator(Box<OperatorArgs>),
    /// Copy the embedded store into a new file, online (the server may keep running).
    Backup {
        /// The backup file to create (never overwritten).
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Make a backup the embedded store of the data directory (the server must be stopped).
    Restore {
        /// A file `datatracing backup` wrote.
        #[arg(long, short = 'i')]
        input: PathBuf,
        /// Replace a store already in the data directory.
        #[arg(long)]
        replace: bool,
    },
}

/// `datatracing operator` flags (each also a `DATATRACING_OPERATOR_*` variable). Each one
/// overrides the configuration file's `operator:` section, which holds every setting.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "DATATRACING_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics (default 0.0.0.0:8080).
    #[arg(long, env = "DATATRACING_OPERATOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Image for collector and query pods unless a pipeline names one.
    #[arg(long, env = "DATATRACING_OPERATOR_IMAGE")]
    pub image: Option<String>,
    /// Field manager for server-side apply (default datatracing-operator).
    #[arg(long, env = "DATATRACING_OPERATOR_FIELD_MANAGER")]
    pub field_manager: Option<String>,
    /// Elect a leader on a Lease (default true; turn off only for a single replica).
    #[arg(long, env = "DATATRACING_OPERATOR_LEADER_ELECT", action = clap::ArgAction::Set)]
    pub leader_elect: Option<bool>,
    /// Lease name (default datatracing-operator).
    #[arg(long, env = "DATATRACING_OPERATOR_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// Lease namespace (default: POD_NAMESPACE, else the watched namespace, else default).
    #[arg(long, env = "DATATRACING_OPERATOR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "DATATRACING_OPERATOR_IDENTITY")]
    pub identity: Option<String>,
    /// A Lease not renewed for this long may be taken over (default 15s).
    #[arg(long, env = "DATATRACING_OPERATOR_LEASE_DURATION")]
    pub lease_duration: Option<ConfigDuration>,
    /// How often the leader renews its Lease (default 5s).
    #[arg(long, env = "DATATRACING_OPERATOR_RENEW_INTERVAL")]
    pub renew_interval: Option<ConfigDuration>,
    /// Longest a ClickHouse call (ping, migrate, retention) may take (default 10s).
    #[arg(long, env = "DATATRACING_OPERATOR_CLICKHOUSE_TIMEOUT")]
    pub clickhouse_timeout: Option<ConfigDuration>,
    /// First retry delay after a failed reconcile (default 1s).
    #[arg(long, env = "DATATRACING_OPERATOR_RETRY_BACKOFF")]
    pub retry_backoff: Option<ConfigDuration>,
    /// Longest retry delay after failed reconciles (default 5m).
    #[arg(long, env = "DATATRACING_OPERATOR_MAX_RETRY_BACKOFF")]
    pub max_retry_backoff: Option<ConfigDuration>,
    /// Re-check every pipeline this often even without changes (default 5m).
    #[arg(long, env = "DATATRACING_OPERATOR_RESYNC_INTERVAL")]
    pub resync_interval: Option<ConfigDuration>,
    /// On shutdown, the longest wait for reconciles in flight (default 10s).
    #[arg(long, env = "DATATRACING_OPERATOR_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<ConfigDuration>,
    /// Kubeconfig file (default: in-cluster, else KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Skip TLS verification of the API server (test clusters only).
    #[arg(long, env = "DATATRACING_OPERATOR_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
}

impl OperatorArgs {
    /// `base` (the file's `operator:` section) with the flags and variables given applied.
    pub fn config(&self, base: OperatorConfig) -> OperatorConfig {
        fn set<T: Clone>(slot: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *slot = v.clone();
            }
        }
        fn set_opt<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
            if flag.is_some() {
                slot.clone_from(flag);
            }
        }
        let mut c = base;
        set_opt(&mut c.namespace, &self.namespace);
        set(&mut c.listen, &self.listen);
        set(&mut c.image, &self.image);
        set(&mut c.field_manager, &self.field_manager);
        set(&mut c.clickhouse_timeout, &self.clickhouse_timeout);
        set(&mut c.retry_backoff, &self.retry_backoff);
        set(&mut c.max_retry_backoff, &self.max_retry_backoff);
        set(&mut c.resync_interval, &self.resync_interval);
        set(&mut c.drain_timeout, &self.drain_timeout);
        let le = &mut c.leader_election;
        set(&mut le.enabled, &self.leader_elect);
        set(&mut le.lease_name, &self.lease_name);
        set_opt(&mut le.lease_namespace, &self.lease_namespace);
        set_opt(&mut le.identity, &self.identity);
        set(&mut le.lease_duration, &self.lease_duration);
        set(&mut le.renew_interval, &self.renew_interval);
        c
    }

    /// A Kubernetes client: the kubeconfig when one is given, else in-cluster / default.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        peers::kube_client(self.kubeconfig.as_deref(), self.insecure_skip_tls_verify).await
    }
}

/// `datatracing policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (YAML or JSON); every problem is reported with its path.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Decide every trace in a folder of span batches and print the decision per trace.
    Test {
        /// The policy file.
        file: PathBuf,
        /// Folder of `*.json` span batches (for example `fixtures/traces`).
        #[arg(long)]
        traces: PathBuf,
    },
}

impl Cli {
    /// Loads the file (if any) and applies flag / environment overrides, then validates.
    pub fn effective_config(&self, env: &HashMap<String, String>) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path, env)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            c.storage.embedded.data_dir = d.clone();
        }
        if let Some(a) = self.ingest_addr {
            c.collector.listen = a;
        }
        if let Some(a) = self.grpc_addr {
            c.collector.grpc_listen = Some(a);
        }
        if let Some(a) = self.query_addr {
            c.query.listen = a;
        }
        if let Some(n) = self.max_concurrent_reads {
            c.query.max_concurrent_reads = n;
        }
        if let Some(r) = self.retention {
            c.storage.embedded.retention = r;
        }
        if let Some(f) = self.log_format {
            c.log.format = f;
        }
        if let Some(l) = &self.log_level {
            c.log.level = l.clone();
        }
        if let Some(b) = self.storage {
            c.storage.backend = b;
        }
        if let Some(u) = &self.clickhouse_url {
            c.storage.clickhouse.url = u.clone();
        }
        if let Some(d) = &self.clickhouse_database {
            c.storage.clickhouse.database = d.clone();
        }
        if let Some(f) = &self.clickhouse_ca_file {
            c.storage.clickhouse.ca_file = Some(f.clone());
        }
        self.apply_tls(&mut c)?;
        if let Some(p) = env.get("DATATRACING_CLICKHOUSE_PASSWORD") {
            c.storage.clickhouse.password = p.clone();
        }
        if let Command::Operator(args) = &self.command {
            c.operator = args.config(c.operator);
        }
        c.validate()?;
        // The filter syntax is tracing-subscriber's, so it is checked here where the filter
        // is built rather than in the configuration crate.
        tracing_subscriber::EnvFilter::try_new(&c.log.level)
            .map_err(|e| anyhow::anyhow!("log.level: {e}"))?;
        Ok(c)
    }
}

impl Cli {
    /// The `--tls-*` flags on the shared `tls:` block: a certificate and key create it when
    /// the file has none; one of them alone, or a client CA, changes the file's block.
    fn apply_tls(&self, c: &mut Config) -> anyhow::Result<()> {
        match (&self.tls_cert_file, &self.tls_key_file, c.tls.as_mut()) {
            (Some(cert), Some(key), None) => c.tls = Some(TlsConfig::new(cert, key)),
            (None, None, _) => {}
            (cert, key, Some(t)) => {
                if let Some(cert) = cert {
                    t.cert_file = cert.clone();
                }
                if let Some(key) = key {
                    t.key_file = key.clone();
                }
            }
            (_, _, None) => anyhow::bail!(
                "--tls-cert-file and --tls-key-file (DATATRACING_TLS_CERT_FILE, DATATRACING_TLS_KEY_FILE) go together unless the file has a tls: block"
            ),
        }
        if let Some(ca) = &self.tls_client_ca_file {
            let Some(t) = c.tls.as_mut() else {
                anyhow::bail!(
                    "--tls-client-ca-file (DATATRACING_TLS_CLIENT_CA_FILE) needs a server certificate: --tls-cert-file and --tls-key-file, or a tls: block"
                );
            };
            t.client_ca_file = Some(ca.clone());
        }
        Ok(())
    }
}

/// Installs the global `tracing` subscriber.
pub fn init_logging(config: &LogConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level).context("log level")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install logger: {e}"))
}

/// Cancels `token` on the first SIGINT or SIGTERM; a second signal exits at once.
pub fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    Ok(())
}

/// The storage handles one server command holds: a writer for the collector, a reader for
/// query, and what readiness asks.
struct Stores {
    writer: Option<Arc<dyn TraceWriter>>,
    reader: Option<Arc<dyn TraceReader>>,
    health: Arc<dyn Health>,
}

/// Opens the configured backend for the sides a command needs, registering its metrics.
async fn open_stores(
    config: &Config,
    write: bool,
    read: bool,
    registry: &mut Registry,
) -> anyhow::Result<Stores> {
    Ok(match config.storage.backend {
        Backend::Embedded => {
            let mode = if write {
                OpenMode::ReadWrite
            } else {
                OpenMode::ReadOnly
            };
            let store = EmbeddedStore::open(config.storage.embedded.clone(), mode)
                .await
                .with_context(|| {
                    format!(
                        "opening the embedded store in {}",
                        config.storage.embedded.data_dir.display()
                    )
                })?;
            let store = Arc::new(store);
            Stores {
                writer: write.then(|| Arc::clone(&store) as Arc<dyn TraceWriter>),
                reader: read.then(|| Arc::clone(&store) as Arc<dyn TraceReader>),
                health: store,
            }
        }
        Backend::Clickhouse if !write => {
            // A process that only reads neither migrates nor runs an insert batcher: it
            // connects, checks the schema is there, and fails clearly if it is not.
            let metrics = ClickHouseMetrics::register(registry);
            let reader = ClickHouseReader::open(config.storage.clickhouse.clone(), metrics)
                .await
                .with_context(|| {
                    format!(
                        "opening ClickHouse at {} for reading",
                        config.storage.clickhouse.url
                    )
                })?;
            let reader = Arc::new(reader);
            Stores {
                writer: None,
                reader: Some(Arc::clone(&reader) as Arc<dyn TraceReader>),
                health: reader,
            }
        }
        Backend::Clickhouse if !read && config.collector.durable_queue.enabled => {
            // A collector with the durable queue starts while ClickHouse is unreachable and
            // acknowledges into the queue; the store is opened (and migrated) once it
            // answers.
            let metrics = ClickHouseMetrics::register(registry);
            let store = deferred::DeferredWriter::open(config.storage.clickhouse.clone(), metrics);
            Stores {
                writer: Some(Arc::clone(&store) as Arc<dyn TraceWriter>),
                reader: None,
                health: store,
            }
        }
        Backend::Clickhouse => {
            let metrics = ClickHouseMetrics::register(registry);
            let store = ClickHouseStore::open(config.storage.clickhouse.clone(), metrics)
                .await
                .with_context(|| {
                    format!(
                        "connecting to ClickHouse at {}",
                        config.storage.clickhouse.url
                    )
                })?;
            let store = Arc::new(store);
            Stores {
                writer: write.then(|| Arc::clone(&store) as Arc<dyn TraceWriter>),
                reader: read.then(|| Arc::clone(&store) as Arc<dyn TraceReader>),
                health: store,
            }
        }
    })
}

/// `datatracing migrate`: applies ClickHouse migrations and reports what it did.
pub async fn migrate(config: &Config) -> anyhow::Result<MigrationReport> {
    anyhow::ensure!(
        config.storage.backend == Backend::Clickhouse,
        "migrate applies to storage.backend: clickhouse (the embedded store migrates itself on open)"
    );
    let admin = ClickHouseAdmin::new(&config.storage.clickhouse)?;
    admin
        .wait_until_reachable(config.storage.clickhouse.connect_timeout.get())
        .await
        .with_context(|| {
            format!(
                "connecting to ClickHouse at {}",
                config.storage.clickhouse.url
            )
        })?;
    Ok(admin.migrate().await?)
}

/// `datatracing backup` and `datatracing restore`: the embedded store's disaster recovery
/// (runbooks/disaster-recovery.md). Returns the line to print.
pub fn backup_or_restore(command: &Command, config: &Config) -> anyhow::Result<Option<String>> {
    let data_dir = &config.storage.embedded.data_dir;
    let not_embedded = || {
        anyhow::anyhow!(
            "backup and restore copy the embedded store; for ClickHouse use its BACKUP and \
             RESTORE statements (runbooks/disaster-recovery.md)"
        )
    };
    let report = match command {
        Command::Backup { output } => {
            anyhow::ensure!(config.storage.backend == Backend::Embedded, not_embedded());
            datatracing_store_sqlite::backup(data_dir, output)
                .with_context(|| format!("backing up the store in {}", data_dir.display()))?
        }
        Command::Restore { input, replace } => {
            anyhow::ensure!(config.storage.backend == Backend::Embedded, not_embedded());
            datatracing_store_sqlite::restore(input, data_dir, *replace).with_context(|| {
                format!("restoring {} into {}", input.display(), data_dir.display())
            })?
        }
        _ => return Ok(None),
    };
    Ok(Some(format!(
        "{} {}: {} spans, {} bytes, schema version {}",
        if matches!(command, Command::Backup { .. }) {
            "wrote"
        } else {
            "restored"
        },
        report.path.display(),
        report.spans,
        report.bytes,
        report.schema_version
    )))
}

/// Runs a server command until `shutdown` fires, then drains and returns.
pub async fn run(
    command: &Command,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (write, read) = match command {
        Command::AllInOne => (true, true),
        Command::Collector => (true, false),
        Command::Query => (false, true),
        Command::Operator(args) => {
            // The operator opens no store; it uses the `operator:` section (flags applied by
            // `effective_config`) and logging.
            let client = args.client().await?;
            return Ok(datatracing_operator::run(config.operator, client, shutdown).await?);
        }
        Command::PrintConfig
        | Command::Migrate
        | Command::Policy(_)
        | Command::Backup { .. }
        | Command::Restore { .. } => return Ok(()),
    };
    // Tokens are read before anything listens: a missing one fails start-up.
    let env: HashMap<String, String> = std::env::vars().collect();
    let auth = Authenticator::load(&config.auth, &env).context("loading auth.tokens")?;
    auth.spawn_reloader(shutdown.clone());
    let mut registry = Registry::default();
    // Certificates too: a missing file or a key that does not match fails start-up.
    let tls_metrics = TlsMetrics::register(&mut registry);
    let load_tls = |tls: &TlsConfig, listener: &'static str, alpn: Alpn| {
        let acceptor = TlsAcceptor::load(tls, listener, alpn, tls_metrics.clone())
            .with_context(|| format!("loading the TLS certificate of the {listener} listener"))?;
        acceptor.spawn_reloader(shutdown.clone());
        anyhow::Ok(acceptor)
    };
    let collector_tls = match config.collector_tls() {
        Some(t) if write => {
            let http = load_tls(t, "collector", Alpn::Http1)?;
            let grpc = match config.collector.grpc_listen {
                Some(_) => load_tls(t, "collector-grpc", Alpn::H2)?,
                None => http.clone(), // never served: there is no gRPC listener
            };
            Some((http, grpc))
        }
        _ => None,
    };
    let query_tls = match config.query_tls() {
        Some(t) if read => Some(load_tls(t, "query", Alpn::Http1)?),
        _ => None,
    };
    let stores = open_stores(&config, write, read, &mut registry).await?;
    let http_metrics = HttpMetrics::register(&mut registry);
    let collector = match &stores.writer {
        Some(writer) => {
            let c = Collector::new(
                config.collector.clone(),
                Arc::clone(writer),
                &mut registry,
                http_metrics.clone(),
            )?
            .with_auth(auth.clone());
            Some(match collector_tls {
                Some((http, grpc)) => c.with_tls(http, grpc),
                None => c,
            })
        }
        None => None,
    };
    let query = match &stores.reader {
        Some(reader) => {
            let q = QueryService::new(config.query.clone(), Arc::clone(reader), http_metrics)?
                .with_metrics(datatracing_query::QueryMetrics::register(&mut registry))
                .with_auth(auth);
            Some(match query_tls {
                Some(t) => q.with_tls(t),
                None => q,
            })
        }
        None => None,
    };
    if let (Some(c), Some(k)) = (&collector, &config.collector.peers.kubernetes)
        && let Some(membership) = c.membership()
    {
        // Without API access the collector still serves (every trace local, as with an
        // empty ring): the no-loss promise never depends on membership.
        tokio::spawn(peers::watch_endpoint_slices(
            k.clone(),
            membership,
            shutdown.clone(),
        ));
    }
    let registry = Arc::new(registry);
    let readiness = Readiness::new(Arc::clone(&stores.health));

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(c) = collector {
        let listener = bind(c.config().listen, "ingest").await?;
        let grpc = match c.config().grpc_listen {
            Some(addr) => Some(bind(addr, "OTLP/gRPC ingest").await?),
            None => None,
        };
        let (r, reg, s) = (readiness.clone(), Arc::clone(&registry), shutdown.clone());
        tasks.spawn(async move {
            c.run(listener, grpc, r, reg, s)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if let Some(q) = query {
        let listener = bind(q.config().listen, "query").await?;
        let (r, reg, s) = (readiness.clone(), Arc::clone(&registry), shutdown.clone());
        tasks.spawn(async move {
            q.run(listener, r, reg, s)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    readiness.set_ready(true);
    tracing::info!(command = ?command, backend = stores.health.backend(), "ready");

    // Readiness drops as soon as shutdown starts, so load balancers stop sending traffic.
    let ready = readiness.clone();
    let flip = shutdown.clone();
    tokio::spawn(async move {
        flip.cancelled().await;
        ready.set_ready(false);
    });

    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %e, "server failed; shutting down");
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    if let Some(writer) = &stores.writer {
        writer.close().await.context("closing the store")?;
    }
    tracing::info!("shutdown complete");
    first_error.map_or(Ok(()), Err)
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn effective(args: &[&str], file: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("datatracing.yaml");
        std::fs::write(&path, file)?;
        let path = path.to_str().unwrap_or_default().to_string();
        let argv = ["datatracing", "--config", &path]
            .into_iter()
            .chain(args.iter().copied());
        Cli::try_parse_from(argv)?.effective_config(&HashMap::new())
    }

    /// The file's `operator:` section reaches the operator; a flag wins over the file.
    #[test]
    fn operator_settings_come_from_the_file_and_flags_override_them() {
        let file = "operator:\n  resync_interval: 7m\n  field_manager: from-file\n  leader_election:\n    lease_name: from-file\n    lease_duration: 40s\n";
        let c = effective(
            &[
                "operator",
                "--lease-name",
                "from-flag",
                "--renew-interval",
                "9s",
            ],
            file,
        )
        .unwrap();
        let o = &c.operator;
        assert_eq!(o.resync_interval.get().as_secs(), 420);
        assert_eq!(o.field_manager, "from-file");
        assert_eq!(o.leader_election.lease_name, "from-flag");
        assert_eq!(o.leader_election.lease_duration.get().as_secs(), 40);
        assert_eq!(o.leader_election.renew_interval.get().as_secs(), 9);
        assert!(
            o.leader_election.enabled,
            "unset flags keep the file (or default) value"
        );

        let err = effective(&["operator", "--renew-interval", "50s"], file).unwrap_err();
        assert!(err.to_string().contains("renew_interval"), "{err}");
    }

    /// Every operator setting can also be set by a `DATATRACING_OPERATOR_*` variable.
    #[test]
    fn every_operator_flag_has_a_variable() {
        let cli = Cli::command();
        let operator = cli
            .find_subcommand("operator")
            .expect("operator subcommand");
        let mut flags = 0;
        for arg in operator.get_arguments().filter(|a| !a.is_global_set()) {
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert!(
                env.starts_with("DATATRACING_OPERATOR_") || env == "KUBECONFIG",
                "--{:?} has no DATATRACING_OPERATOR_ variable",
                arg.get_long()
            );
            flags += 1;
        }
        assert!(flags >= 17, "{flags}");
    }

    /// The `--tls-*` flags (also `DATATRACING_TLS_*`) create or change the shared block;
    /// half a pair, or a client CA without a certificate, is refused with the flag names.
    #[test]
    fn tls_flags_create_or_change_the_shared_block() {
        let c = effective(
            &[
                "collector",
                "--tls-cert-file",
                "/t/c.crt",
                "--tls-key-file",
                "/t/c.key",
            ],
            "",
        )
        .unwrap();
        let t = c.collector_tls().unwrap();
        assert_eq!(
            (t.cert_file.to_str(), t.key_file.to_str()),
            (Some("/t/c.crt"), Some("/t/c.key"))
        );
        assert_eq!(c.query_tls(), c.tls.as_ref());
        let file = "tls:
  cert_file: /f/c.crt
  key_file: /f/c.key
  reload_interval: 1s
query:
  tls: {cert_file: /q/c.crt, key_file: /q/c.key}
";
        let c = effective(
            &[
                "all-in-one",
                "--tls-cert-file",
                "/new.crt",
                "--tls-client-ca-file",
                "/ca.crt",
            ],
            file,
        )
        .unwrap();
        let t = c.tls.clone().unwrap();
        assert_eq!(t.cert_file.to_str(), Some("/new.crt"));
        assert_eq!(t.key_file.to_str(), Some("/f/c.key"), "kept from the file");
        assert_eq!(
            t.client_ca_file.as_deref().and_then(|p| p.to_str()),
            Some("/ca.crt")
        );
        assert_eq!(t.reload_interval.get().as_secs(), 1);
        assert_eq!(c.query_tls().unwrap().cert_file.to_str(), Some("/q/c.crt"));
        let e = effective(&["collector", "--tls-key-file", "/k"], "").unwrap_err();
        assert!(
            e.to_string().contains("--tls-cert-file and --tls-key-file"),
            "{e}"
        );
        let e = effective(&["collector", "--tls-client-ca-file", "/ca"], "").unwrap_err();
        assert!(e.to_string().contains("needs a server certificate"), "{e}");
        let c = effective(
            &[
                "collector",
                "--clickhouse-url",
                "https://ch:8443",
                "--clickhouse-ca-file",
                "/ch-ca.crt",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            c.storage
                .clickhouse
                .ca_file
                .as_deref()
                .and_then(|p| p.to_str()),
            Some("/ch-ca.crt")
        );
    }

    #[test]
    fn a_log_filter_tracing_cannot_parse_is_refused() {
        let err = effective(&["collector"], "log:\n  level: \"[[[\"\n").unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
    }
}
