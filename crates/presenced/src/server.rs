//! Wiring: open the store the configuration names, build the services, start the workers (sweeper,
//! dispatcher, lifecycle), serve HTTP(S) through `net`, shut down cleanly.
use crate::auth::{self, AuthConfig, Verifier};
use crate::client_session::ClientSessions;
use crate::clock::{Clock, SystemClock};
use crate::config::ServeConfig;
use crate::http::{self, AppState};
use crate::net::{self, conn::ListenerInfo, limits::Limiter};
use crate::notify::dispatcher::{DeliveryConfig, Dispatcher};
use crate::notify::endpoint::EndpointPolicy;
use crate::notify::lifecycle::Lifecycle;
use crate::notify::validation_token::ValidationTokenSigner;
use crate::notify::webhook::WebhookClient;
use crate::service::{PresenceService, SubscriptionService};
use crate::store::embedded::{self, EmbeddedStore};
use crate::store::{ChangeLog, Membership, PresenceState, Store, StoreChoice};
use crate::stream::hub::Hub;
use crate::stream::Streams;
use crate::sweeper::Sweeper;
use anyhow::Context;
use presence_core::Command;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::watch;

/// Build the verifier from configuration; the HS256 secret lives (and is created) in the data dir.
pub fn verifier(config: &ServeConfig) -> anyhow::Result<Verifier> {
    let hs256_secret = if config.hs256 {
        Some(match &config.jwt_secret_file {
            Some(path) => auth::load_secret_file(path).context("loading --jwt-secret-file")?,
            None => auth::load_or_create_secret(&config.data_dir).context("loading the token-signing secret")?,
        })
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
        max_lifetime_seconds: config.max_token_lifetime.as_secs(),
    })?)
}

/// Open the backend the configuration names.
async fn open_store(config: &ServeConfig, clock: &Clock, epoch: &str) -> anyhow::Result<Store> {
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
        StoreChoice::Redis(ref target) => {
            let mut options = crate::store::redis::Options::new(target.clone(), clock.clone());
            options.partitions = config.redis.partitions;
            options.prefix = config.redis.prefix.clone();
            options.relaxed = config.redis.relaxed_durability;
            options.retain = config.retention.count;
            options.retain_for = config.retention.age;
            options.node = Some(epoch.to_owned());
            options.lease = config.redis.node_lease;
            options.wait_replicas = config.redis.wait_replicas;
            let store = crate::store::redis::RedisStore::open(options).await?;
            tracing::info!(nodes = ?target.urls, cluster = target.cluster, "store opened on Redis");
            Ok(Store::Redis(store))
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
    // Before the store opens its files, so they count against the raised limit.
    let descriptors = net::fd::apply(config.net.open_files);
    // This process's epoch: its client sessions carry it, and on a shared store its lease.
    let epoch = uuid::Uuid::new_v4().to_string();
    let store = open_store(&config, &clock, &epoch).await?;

    let endpoints = EndpointPolicy {
        allow_http: config.webhook_allow_http,
        allowed_networks: config.webhook_allow_networks.clone(),
        allowed_on_ports: config.webhook_allow_on_ports.clone(),
    };
    let client = WebhookClient::new(endpoints.clone()).context("building the webhook client")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let delivery_metrics = crate::metrics::DeliveryMetrics::default();
    let connection_metrics = net::metrics::ConnectionMetrics::default();
    let mut metrics = crate::metrics::Metrics::new(store.metrics(), &delivery_metrics);
    connection_metrics.register(metrics.registry_mut());
    let swept = prometheus_client::metrics::counter::Counter::default();
    metrics.registry_mut().register(
        "sweeper_transitions",
        "Users whose fade or expiry this node applied",
        swept.clone(),
    );
    let metrics = Arc::new(metrics);
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
    let validation_tokens = Arc::new(match &config.validation_token_key_file {
        Some(path) => ValidationTokenSigner::load_file(path).context("loading --validation-token-key-file")?,
        None => ValidationTokenSigner::load_or_create(&config.data_dir).context("loading the validation-token key")?,
    });
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
    let sweeper = tokio::spawn(Sweeper::new(service.clone()).counting(swept).run(stop_rx.clone()));
    let clients = Arc::new(ClientSessions::new(config.clients.clone(), epoch));
    let orphans = tokio::spawn(orphan_clients(service.clone(), clients.clone()));

    let listeners = listeners(&config, descriptors, connection_metrics, stop_rx).await?;
    let addr = listeners[0].tcp.local_addr()?;
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
        clients,
        delegated_writes_to_others: config.delegated_writes_to_others,
        metrics,
        validation_tokens,
    };
    // Tests and scripts wait for this exact line on stdout ("listening on " and the base URL);
    // logs go to stderr.
    let scheme = if listeners[0].tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    if let Some(metrics) = listeners.get(1) {
        println!("metrics on http://{}/metrics", metrics.tcp.local_addr()?);
    }
    std::io::stdout().flush()?;
    tracing::info!(%addr, scheme, "serving");

    // On the signal, streams and sockets first get their final message and close (bounded by
    // the drain time); then the server stops accepting and waits for in-flight requests.
    let draining = streams.clone();
    let fenced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (fenced_flag, fencing_store) = (fenced.clone(), store.clone());
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = fencing_store.fenced() => {
                tracing::error!("this node was declared dead (its lease lapsed) and may not write; stopping");
                fenced_flag.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let left = draining.shut_down().await;
        if left > 0 {
            tracing::warn!(streams = left, "streams still open after the drain time; closing them");
        }
    };
    let settings = net::Settings::new(
        net::conn::Timeouts {
            header_read: config.net.header_read_timeout,
            idle: config.net.idle_timeout,
            body_read: config.net.body_read_timeout,
        },
        config.net.shutdown_timeout,
    );
    net::serve(listeners, http::service(state), settings, shutdown).await;
    tracing::info!("draining finished; stopping");
    let _ = stop_tx.send(true);
    orphans.abort();
    let _ = tokio::join!(sweeper, dispatcher, lifecycle, hub_task);
    if !fenced.load(std::sync::atomic::Ordering::Acquire) {
        // After the last write: the other nodes (on a shared store) take over at once.
        store.leave().await;
    }
    // The last handles: the services' and the request state's are gone with the server.
    drop((service, subscriptions));
    tokio::task::spawn_blocking(move || store.close()).await?;
    if fenced.load(std::sync::atomic::Ordering::Acquire) {
        anyhow::bail!("stopped: this node's lease lapsed and another node took over its client sessions");
    }
    Ok(())
}

/// Connections a `--metrics-listen` address holds at once (scrapers, not clients).
const METRICS_CONNECTIONS: usize = 16;

/// Bind the API listener (first) and the metrics one (if configured), with their connection
/// limits; load the TLS certificate and start reloading it on SIGHUP and file changes.
async fn listeners(
    config: &ServeConfig,
    descriptors: net::fd::Descriptors,
    metrics: net::metrics::ConnectionMetrics,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<net::Listener>> {
    let c = &config.net;
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics_tcp = match c.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let tls = match &c.tls {
        Some(files) => {
            let certificates = net::tls::Certificates::load(files)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(certificates.server_config()?);
            // Installed now: SIGHUP's default action ends the process.
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot install the SIGHUP handler")?;
            tokio::spawn(certificates.watch(hangup, stop));
            Some(acceptor)
        }
        None => None,
    };
    let open = net::fd::open_now();
    let reserve = net::fd::reserve(descriptors.limit, open);
    let cap = net::fd::connection_cap(c.max_connections, descriptors.limit, reserve);
    tracing::info!(
        max_connections = cap,
        open_files_limit = descriptors.limit,
        open_files_limit_was = descriptors.was,
        open_files_hard_limit = descriptors.hard,
        open_now = open,
        reserved = reserve,
        "connection limits"
    );
    if cap < c.max_connections {
        tracing::warn!(
            max_connections = c.max_connections,
            allowed = cap,
            open_files_limit = descriptors.limit,
            "the open-files limit leaves room for fewer connections than --max-connections; \
             raise the hard limit (e.g. LimitNOFILE= in systemd) to allow more"
        );
    }
    let mut listeners = vec![net::Listener {
        tcp,
        info: Arc::new(ListenerInfo {
            tls: tls.is_some(),
            serves_metrics: metrics_tcp.is_none(),
            metrics_only: false,
            public_url: c.public_url.as_deref().map(Arc::from),
        }),
        limiter: Limiter::new(cap, metrics.clone()),
        metrics,
        tls,
    }];
    if let Some(tcp) = metrics_tcp {
        let metrics = net::metrics::ConnectionMetrics::default();
        listeners.push(net::Listener {
            tcp,
            info: Arc::new(ListenerInfo {
                tls: false,
                serves_metrics: true,
                metrics_only: true,
                public_url: None,
            }),
            limiter: Limiter::new(METRICS_CONNECTIONS, metrics.clone()),
            metrics,
            tls: None,
        });
    }
    Ok(listeners)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call, not when the future is
/// first polled: `net::serve` polls it only after "listening on" is printed, and a SIGTERM sent
/// as soon as that line appears killed the process with the default action instead of draining.
/// Call it inside the runtime, before [`run`].
/// How often a node on a shared store looks for nodes that died.
const NODE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Give the client sessions of processes that are gone their grace from now: at start those an
/// earlier process left connected, and on a shared store, whenever a node's lease lapses, that
/// node's. Clients that reconnect within the grace keep their session; the others go.
async fn orphan_clients(service: Arc<PresenceService>, clients: Arc<ClientSessions>) {
    let mut known_live: Option<Vec<String>> = None;
    loop {
        let live = match service.store().live_epochs().await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which nodes are alive; will retry");
                tokio::time::sleep(NODE_CHECK_EVERY).await;
                continue;
            }
        };
        let shared = live.is_some();
        let mut live = live.unwrap_or_default();
        if !live.contains(&clients.epoch) {
            live.push(clients.epoch.clone());
        }
        let someone_died = known_live
            .as_ref()
            .is_none_or(|before| before.iter().any(|e| !live.contains(e)));
        if someone_died {
            match orphan_pass(&service, &clients, &live).await {
                Ok(()) => known_live = Some(live),
                Err(e) => tracing::warn!(error = %e, "could not give orphaned client sessions their grace; will retry"),
            }
        } else {
            known_live = Some(live);
        }
        if !shared && known_live.is_some() {
            return;
        }
        tokio::time::sleep(NODE_CHECK_EVERY).await;
    }
}

/// One pass over the users holding a connected client session: those of a process not in `live`
/// are disconnected with the grace from now.
async fn orphan_pass(
    service: &Arc<PresenceService>,
    clients: &ClientSessions,
    live: &[String],
) -> Result<(), crate::store::StoreError> {
    use futures_util::StreamExt;
    let keys = service.store().users_with_connected_clients().await?;
    if keys.is_empty() {
        return Ok(());
    }
    let grace = jiff::SignedDuration::try_from(clients.config.grace).unwrap_or_default();
    let count = keys.len();
    // Concurrent, so the store batches them.
    let failed = futures_util::stream::iter(keys)
        .map(|key| {
            let command = Command::OrphanClients {
                live: live.to_vec(),
                grace,
            };
            let service = service.clone();
            async move { service.execute(&key, command).await.is_err() }
        })
        .buffer_unordered(64)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    tracing::info!(
        users = count,
        failed,
        "client sessions of stopped processes given their grace"
    );
    Ok(())
}

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
