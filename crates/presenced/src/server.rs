//! Wiring: open the store the configuration names, build the services, start the workers (sweeper,
//! dispatcher, lifecycle), serve HTTP, shut down cleanly.
use crate::auth::{self, AuthConfig, Verifier};
use crate::clock::{Clock, SystemClock};
use crate::config::ServeConfig;
use crate::http::{self, AppState};
use crate::notify::dispatcher::{DeliveryConfig, Dispatcher};
use crate::notify::endpoint::EndpointPolicy;
use crate::notify::lifecycle::Lifecycle;
use crate::notify::validation_token::ValidationTokenSigner;
use crate::notify::webhook::WebhookClient;
use crate::service::{PresenceService, SubscriptionService};
use crate::store::embedded::{self, EmbeddedStore};
use crate::store::{ChangeLog, Store, StoreChoice};
use crate::stream::hub::Hub;
use crate::stream::Streams;
use crate::sweeper::Sweeper;
use anyhow::Context;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::watch;

/// Build the verifier from configuration; the HS256 secret lives (and is created) in the data dir.
pub fn verifier(config: &ServeConfig) -> anyhow::Result<Verifier> {
    let hs256_secret = if config.hs256 {
        Some(auth::load_or_create_secret(&config.data_dir).context("loading the token-signing secret")?)
    } else {
        None
    };
    let jwks = match &config.jwks_file {
        Some(path) => Some(auth::load_jwks_file(path).with_context(|| format!("loading JWKS {}", path.display()))?),
        None => None,
    };
    Ok(Verifier::new(AuthConfig {
        hs256_secret,
        jwks,
        audiences: config.audiences.clone(),
        issuers: config.issuers.clone(),
        leeway_seconds: auth::DEFAULT_LEEWAY_SECONDS,
    })?)
}

/// Open the backend the configuration names.
async fn open_store(config: &ServeConfig, clock: &Clock) -> anyhow::Result<Store> {
    match config.store {
        StoreChoice::Embedded => {
            let dir = config.data_dir.clone();
            let options = embedded::Options {
                retention: config.retention,
                clock: clock.clone(),
            };
            let (store, report) = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, options)).await??;
            tracing::info!(
                users = report.users,
                pending_deadlines = report.pending_deadlines,
                change_log = report.log_retained,
                data_dir = %config.data_dir.display(),
                "store opened"
            );
            Ok(Store::Embedded(store))
        }
    }
}

/// Run until `shutdown` resolves; then stop accepting, drain in-flight requests, stop the
/// workers and close the store.
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    run_with_clock(config, Clock::system(), shutdown).await
}

/// [`run`] on a given clock (tests drive timers with a manual one).
pub async fn run_with_clock(
    config: ServeConfig,
    clock: Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let verifier = verifier(&config)?;
    let store = open_store(&config, &clock).await?;

    let endpoints = EndpointPolicy {
        allow_http: config.webhook_allow_http,
        allowed_networks: config.webhook_allow_networks.clone(),
    };
    let client = WebhookClient::new(endpoints.clone()).context("building the webhook client")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let delivery_metrics = crate::metrics::DeliveryMetrics::default();
    let metrics = Arc::new(crate::metrics::Metrics::new(store.metrics(), &delivery_metrics));
    let service = Arc::new(PresenceService::new(
        store.clone(),
        config.timing.clone(),
        clock.clone(),
    ));
    let subscriptions = Arc::new(SubscriptionService::new(
        store.clone(),
        config.subscriptions.clone(),
        endpoints,
        client.clone(),
        clock.clone(),
    ));
    let validation_tokens =
        Arc::new(ValidationTokenSigner::load_or_create(&config.data_dir).context("loading the validation-token key")?);
    let delivery = DeliveryConfig {
        validation_tokens: Some(validation_tokens.clone()),
        ..config.delivery.clone()
    };
    let dispatcher = tokio::spawn(
        Dispatcher::new(
            store.clone(),
            client,
            delivery,
            delivery_metrics,
            clock.clone(),
            stop_rx.clone(),
        )
        .run(),
    );
    let lifecycle = tokio::spawn(Lifecycle::new(subscriptions.clone()).run(stop_rx.clone()));
    let hub = Hub::new(config.streams.queue, store.head());
    let streams = Arc::new(Streams::new(hub.clone(), config.streams.clone()));
    let hub_task = tokio::spawn(hub.run(store.clone(), stop_rx.clone()));
    let sweeper = tokio::spawn(Sweeper::new(service.clone()).run(stop_rx));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        service: service.clone(),
        subscriptions: subscriptions.clone(),
        store: store.clone(),
        verifier: Arc::new(verifier),
        clock: SystemClock,
        rate_limiter: config
            .rate_limit
            .map(|l| Arc::new(crate::http::rate_limit::RateLimiter::new(l))),
        streams: streams.clone(),
        delegated_writes_to_others: config.delegated_writes_to_others,
        metrics,
        validation_tokens,
    };
    // Tests and scripts wait for this exact line on stdout; logs go to stderr.
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, "serving");

    let entry = axum::ServiceExt::<axum::extract::Request>::into_make_service(http::service(state));
    // On the signal, streams and sockets first get their final message and close (bounded by
    // the drain time); then the server stops accepting and waits for in-flight requests.
    let draining = streams.clone();
    let shutdown = async move {
        shutdown.await;
        let left = draining.shut_down().await;
        if left > 0 {
            tracing::warn!(streams = left, "streams still open after the drain time; closing them");
        }
    };
    axum::serve(listener, entry).with_graceful_shutdown(shutdown).await?;
    tracing::info!("draining finished; stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::join!(sweeper, dispatcher, lifecycle, hub_task);
    // The last handles: the services' and the request state's are gone with the server.
    drop((service, subscriptions));
    tokio::task::spawn_blocking(move || store.close()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call, not when the future is
/// first polled: `axum::serve` polls it only after "listening on" is printed, and a SIGTERM sent
/// as soon as that line appears killed the process with the default action instead of draining.
/// Call it inside the runtime, before [`run`].
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
