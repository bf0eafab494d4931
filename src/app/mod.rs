//! `serve`, wired: [`serve`] runs a checked [`ServePlan`] until a shutdown future resolves.
//!
//! Owns the order of start-up (first log line, metrics and decision log, the mode, admin
//! listener, the enforced bundle, the shadow bundle, wardgate's own identity, span export, the
//! gRPC or mTLS listener), the one stop signal every task follows, and the drain on the way out
//! (listener first, then every task, span export included, then the decision log). It must
//! never parse flags or print anything but logs (that is `cli`), never decide a request (that
//! is `policy`), and never exit the process: errors are returned as [`AppError`].
//! docs/ARCHITECTURE.md shows where it sits.

mod plan;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminAddr;
use crate::extauthz::{AuthzConfig, Mode};
use crate::grpc::{self, ServerConfig, ServerError};
use crate::listen::ListenError;
use crate::policy::{Policy, PolicyHandle};
use crate::reload::{ReloadObserver, Reloader};
use crate::telemetry::metrics::MetricsError;
use crate::telemetry::TelemetryError;
use crate::telemetry::{DecisionLogTarget, Telemetry};

pub use plan::{
    BundlePlan, DecisionLogPlan, MtlsListener, OwnIdentity, PlanError, ServePlan, EMBEDDED_BUNDLE,
    EMBEDDED_BUNDLE_NAME,
};

/// Why `serve` could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The decision-log file cannot be opened for appending.
    #[error("--decision-log {target}: {source}")]
    DecisionLog {
        /// The target given.
        target: DecisionLogTarget,
        /// The open error.
        source: std::io::Error,
    },
    /// The admin listener cannot bind.
    #[error("--admin {addr}: {source}")]
    Admin {
        /// The address given.
        addr: AdminAddr,
        /// The bind error.
        source: ListenError,
    },
    /// A metric cannot be registered (a programming error: duplicate or malformed name).
    #[error("metrics: {0}")]
    Metrics(MetricsError),
    /// The shadow bundle's metrics cannot be registered.
    #[error("shadow bundle metrics: {0}")]
    ShadowMetrics(MetricsError),
    /// wardgate's own identity source cannot start (a file that does not exist, and the like).
    #[error("wardgate's own identity: {0}")]
    Identity(crate::svid::SvidError),
    /// The mTLS listener's TLS configuration cannot be built.
    #[error("mTLS listener: {0}")]
    Mtls(rustls::Error),
    /// The gRPC listener cannot bind, or failed while serving.
    #[error("server failed: {0}")]
    Server(ServerError),
    /// Span export (`--otlp-endpoint`) cannot start.
    #[error("{0}")]
    Tracing(crate::tracing_otel::TracingError),
    /// The gRPC server task ended abnormally (a panic).
    #[error("server task failed: {0}")]
    ServerTask(tokio::task::JoinError),
}

impl AppError {
    /// Whether `serve` never started serving (something the flags name is unusable), as opposed
    /// to stopping on an error after it started.
    pub fn before_serving(&self) -> bool {
        match self {
            AppError::DecisionLog { .. }
            | AppError::Admin { .. }
            | AppError::Identity(_)
            | AppError::Mtls(_)
            | AppError::Tracing(_) => true,
            // Every server error but the transport's is a listener that could not be set up.
            AppError::Server(e) => !matches!(e, ServerError::Transport(_)),
            AppError::Metrics(_) | AppError::ShadowMetrics(_) | AppError::ServerTask(_) => false,
        }
    }
}

/// The stop signal every task follows, and the tasks to wait for.
struct Tasks {
    stop: watch::Sender<bool>,
    running: Vec<JoinHandle<()>>,
}

impl Tasks {
    fn new() -> Tasks {
        Tasks {
            stop: watch::channel(false).0,
            running: Vec::new(),
        }
    }

    /// Resolves once the stop signal is raised (or `Tasks` is dropped).
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.running.push(tokio::spawn(task));
    }

    /// Raise the stop signal and wait for every task to finish its work.
    async fn drain(self) {
        let _ = self.stop.send(true);
        for task in self.running {
            let _ = task.await;
        }
    }
}

/// Run `plan` until `shutdown` resolves, then drain: stop accepting, let in-flight checks
/// finish (bounded by the server's drain timeout), stop every task, flush the decision log.
///
/// Returns an error when something cannot start (nothing keeps running then) or the gRPC
/// server fails. A bundle that cannot be loaded is not an error: every check is denied
/// `no_policy` until one loads, and the health service says NOT_SERVING.
pub async fn serve(
    plan: ServePlan,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    announce(&plan);
    // A SIGHUP before the reloader listens for it (or with no reloader at all) must not kill the
    // process: once tokio listens for a signal, its default action is gone for good.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let d = &plan.decision_log;
    let telemetry = Telemetry::from_flags(&d.target, d.queue, d.sample_allows, d.redaction.clone())
        .map_err(|e| match e {
            TelemetryError::DecisionLog(source) => AppError::DecisionLog {
                target: d.target.clone(),
                source,
            },
            TelemetryError::Metrics(e) => AppError::Metrics(e),
        })?;
    let mut tasks = Tasks::new();
    let server = match start(plan, &telemetry, &mut tasks, hangups).await {
        Ok(server) => server,
        Err(e) => {
            tasks.drain().await;
            close(&telemetry).await;
            return Err(e);
        }
    };
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown => {
            let _ = tasks.stop.send(true);
            server.await
        }
    };
    tasks.drain().await;
    close(&telemetry).await;
    match result {
        Ok(Ok(())) => {
            tracing::info!("shut down cleanly");
            Ok(())
        }
        Ok(Err(e)) => Err(AppError::Server(e)),
        Err(e) => Err(AppError::ServerTask(e)),
    }
}

/// The first log line says which bundle this process enforces; in audit mode a warning says
/// that it enforces nothing.
fn announce(plan: &ServePlan) {
    if plan.mode == Mode::Audit {
        tracing::warn!(
            mode = plan.mode.as_str(),
            "AUDIT MODE (--audit): every check is decided and logged but answered allow; \
             would-be denials reach the upstream with x-wardgate-audit and are counted in \
             wardgate_audit_would_deny_total. Nothing is enforced."
        );
    }
    match &plan.bundle {
        BundlePlan::Embedded => tracing::info!(
            listen = %plan.listen,
            version = env!("CARGO_PKG_VERSION"),
            revision = env!("WARDGATE_BUILD_REV"),
            "no --bundle given: serving the example bundle embedded in the binary (deploy/bundles/hospital.yaml)"
        ),
        BundlePlan::Source(cfg) => tracing::info!(
            source = %cfg.source,
            listen = %plan.listen,
            version = env!("CARGO_PKG_VERSION"),
            revision = env!("WARDGATE_BUILD_REV"),
            "loading bundle"
        ),
    }
}

async fn close(telemetry: &Telemetry) {
    telemetry
        .close_decision_log(crate::telemetry::DECISION_LOG_FLUSH_TIMEOUT)
        .await;
}

type ServerHandle = JoinHandle<Result<(), ServerError>>;

/// Start everything in order: admin, wardgate's own identity, the gRPC server (bound before any
/// bundle work), then the shadow and the enforced bundle's first loads.
async fn start(
    plan: ServePlan,
    telemetry: &Arc<Telemetry>,
    tasks: &mut Tasks,
    hangups: Option<tokio::signal::unix::Signal>,
) -> Result<ServerHandle, AppError> {
    let ServePlan {
        listen,
        bundle,
        shadow,
        identity,
        destination_principal,
        admin,
        decision_log: _,
        mode,
        tracing: otlp,
    } = plan;
    crate::extauthz::export_mode(telemetry.registry(), mode).map_err(AppError::Metrics)?;
    let audit = match mode {
        Mode::Enforce => None,
        Mode::Audit => Some(Arc::new(
            crate::extauthz::Audit::new(Some(telemetry.registry())).map_err(AppError::Metrics)?,
        )),
    };
    let handle: PolicyHandle = Arc::new(arc_swap::ArcSwapOption::empty());
    // The admin listener is up (not ready) before the first load.
    match crate::admin::start(&admin, telemetry, &handle, mode, tasks.stopped()).await {
        Ok(Some(listener)) => tasks.running.push(listener),
        Ok(None) => {}
        Err(source) => {
            return Err(AppError::Admin {
                addr: admin,
                source,
            })
        }
    }
    // The shadow evaluator exists before its first load, so the gRPC service can hold it.
    let shadow = match shadow {
        None => None,
        Some(cfg) => {
            let evaluator = crate::shadow::Shadow::new(
                Arc::new(arc_swap::ArcSwapOption::empty()),
                Some(telemetry.registry()),
            )
            .map_err(AppError::ShadowMetrics)?;
            Some((evaluator, cfg))
        }
    };
    // The trust bundles shared by the mTLS listener and forwarded-chain verification, kept
    // current by wardgate's identity source (src/svid) when one is configured.
    let trust: crate::trust::TrustHandle = Arc::default();
    let mut tls = None;
    let mut reflection_allow = Vec::new();
    let mut verify_chain = false;
    if let Some(own) = identity {
        let metrics = crate::svid::metrics::SvidMetrics::for_telemetry(telemetry)
            .map_err(AppError::Metrics)?;
        let identity = crate::svid::Identity::new(Arc::clone(&trust), metrics);
        let source =
            crate::svid::start(own.source, Arc::clone(&identity)).map_err(AppError::Identity)?;
        tracing::info!(source = source.kind(), "following wardgate's own identity");
        tasks.spawn(source.run(Box::pin(tasks.stopped())));
        if let Some(mtls) = own.mtls {
            tracing::info!(listen = %mtls.addr, allow = %mtls.allow, "mTLS listener: callers admitted");
            let config = crate::tls::server_config(identity, mtls.allow).map_err(AppError::Mtls)?;
            tls = Some((mtls.addr, config));
            reflection_allow = mtls.reflection_allow;
        }
        verify_chain = own.verify_chain;
    }
    let tracing = match otlp {
        None => None,
        Some(otlp) => {
            let t = crate::tracing_otel::Tracing::start(&otlp, telemetry.registry())
                .map_err(AppError::Tracing)?;
            tasks.spawn(Arc::clone(&t).shut_down_when(tasks.stopped()));
            Some(t)
        }
    };
    let config = ServerConfig {
        authz: AuthzConfig {
            destination_principal,
            telemetry: Some(Arc::clone(telemetry)),
            verify_chain: verify_chain.then(|| Arc::clone(&trust)),
            shadow: shadow.as_ref().map(|(evaluator, _)| Arc::clone(evaluator)),
            audit,
            tracing: tracing.clone(),
        },
        reflection_allow,
        ..ServerConfig::default()
    };
    // The socket is bound before any bundle work: a slow or hostile bundle never leaves Envoy
    // without an answer. Until a bundle is in force every check is denied `no_policy` and the
    // health service says NOT_SERVING. A listener that cannot bind ends its task at once with
    // a listen error, which `AppError::before_serving` reports as a start-up refusal.
    let server = match tls {
        Some((addr, tls)) => tokio::spawn(grpc::run_tls(
            addr,
            tls,
            Arc::clone(&handle),
            config,
            tasks.stopped(),
        )),
        None => tokio::spawn(grpc::run(
            listen,
            Arc::clone(&handle),
            config,
            tasks.stopped(),
        )),
    };
    // The shadow bundle's first load comes before the enforced one's: once the health service
    // says SERVING (a bundle is in force), every check is also compared with the shadow.
    if let Some((evaluator, cfg)) = shadow {
        tracing::info!(source = %cfg.source, "loading shadow bundle (evaluated, never enforced)");
        let mut shadow_observer: Arc<dyn ReloadObserver> = evaluator.clone();
        if let Some(t) = &tracing {
            shadow_observer =
                t.observe_reloads(shadow_observer, "shadow bundle", &cfg.source.to_string());
        }
        let mut reloader = Reloader::new(
            cfg,
            Arc::clone(evaluator.handle()),
            shadow_observer,
            "shadow bundle",
        );
        reloader.initial_load().await;
        tasks.spawn(reloader.run(tasks.stopped()));
    }
    let observer: Arc<dyn ReloadObserver> = telemetry.clone();
    match bundle {
        BundlePlan::Embedded => {
            install_embedded(&handle, observer.as_ref());
            if let Some(hangups) = hangups {
                tasks.spawn(ignore_hangups(hangups, tasks.stopped()));
            }
        }
        BundlePlan::Source(cfg) => {
            let source = cfg.source.to_string();
            let observer = match &tracing {
                Some(t) => t.observe_reloads(observer, "bundle", &source),
                None => observer,
            };
            let mut reloader = Reloader::new(cfg, Arc::clone(&handle), observer, "bundle");
            reloader.initial_load().await;
            if handle.load().is_none() {
                tracing::error!(source = %source, "no valid bundle: every check is denied with no_policy until one loads");
            }
            tasks.spawn(reloader.run(tasks.stopped()));
        }
    }
    Ok(server)
}

/// Compile the embedded bundle and put it in force: stored into the handle first, observers
/// told after, the same order as the reloader's swap.
fn install_embedded(handle: &PolicyHandle, observer: &dyn ReloadObserver) {
    match Policy::from_yaml_str(EMBEDDED_BUNDLE_NAME, EMBEDDED_BUNDLE) {
        Ok(policy) => {
            let policy = Arc::new(policy);
            handle.store(Some(Arc::clone(&policy)));
            tracing::info!(
                source = EMBEDDED_BUNDLE_NAME,
                revision = policy.revision(),
                digest = policy.digest(),
                rules = policy.rule_count(),
                "bundle swapped in"
            );
            observer.swapped(&policy, EMBEDDED_BUNDLE_NAME, Duration::ZERO);
        }
        Err(errors) => tracing::error!("embedded bundle refused: {errors}"),
    }
}

/// With the embedded bundle there is nothing to reload: say so on SIGHUP instead of dying.
async fn ignore_hangups(
    mut hangups: tokio::signal::unix::Signal,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            Some(()) = hangups.recv() => tracing::info!(
                "SIGHUP ignored: the embedded bundle is never reloaded (give --bundle to reload)"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
