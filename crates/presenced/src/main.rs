//! The `presenced` command line: `serve`, `token`, `openapi` and `cert`.
use anyhow::Context;
use clap::Parser;
use presence_core::duration::parse_config_duration;
use presenced::auth::{self, MintRequest};
use presenced::clock::SystemClock;
use presenced::config::{Cli, Cmd, LogFormat, TokenArgs};
use std::process::ExitCode;

// mimalloc rather than glibc malloc: a request allocates and frees many small buffers across
// threads, and glibc's consolidation passes cost ~3-4% of a write's CPU (BENCHMARKS.md §1).
#[path = "allocator.rs"]
mod allocator;
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::Token(args) => token(args),
        Cmd::Openapi => {
            print!("{}", presenced::http::openapi::document_text());
            Ok(())
        }
        Cmd::Cert(args) => cert(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("presenced: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: presenced::config::ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    init_logging(config.log_format, &config.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = presenced::server::shutdown_signal().context("cannot install the SIGTERM/SIGINT handlers")?;
        presenced::server::run(config, shutdown).await
    })
}

fn cert(args: presenced::net::config::CertArgs) -> anyhow::Result<()> {
    use presenced::net::cert;
    let hosts: Vec<String> = if args.hosts.is_empty() {
        cert::DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect()
    } else {
        args.hosts
    };
    let generated = cert::generate(&hosts, args.days).context("generating the certificate")?;
    cert::write(&args.out, &generated, args.force)?;
    let dir = args.out.display();
    println!(
        "wrote {dir}/ca.pem (the CA to trust), {dir}/cert.pem and {dir}/key.pem (for {}; {} days)",
        hosts.join(", "),
        args.days
    );
    println!("serve:  presenced serve --tls-cert {dir}/cert.pem --tls-key {dir}/key.pem");
    println!("trust:  curl --cacert {dir}/ca.pem | NODE_EXTRA_CA_CERTS={dir}/ca.pem node … | SSL_CERT_FILE={dir}/ca.pem python …");
    Ok(())
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).with_context(|| format!("invalid log level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A full disk under a redirected stderr must not take the server down: tracing would
        // report the failed write with eprintln!, which panics when stderr itself fails.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let ttl = parse_config_duration(&args.ttl).with_context(|| format!("invalid --ttl {:?}", args.ttl))?;
    let (scopes, roles) = match (args.scopes.is_empty(), args.roles.is_empty(), &args.user) {
        (true, true, Some(_)) => (
            vec!["Presence.Read.All".to_owned(), "Presence.ReadWrite".to_owned()],
            vec![],
        ),
        (true, true, None) => (vec![], vec!["Presence.ReadWrite.All".to_owned()]),
        _ => (args.scopes, args.roles),
    };
    let secret = match (&args.jwt_secret_file, &args.data_dir) {
        (Some(path), _) => auth::load_secret_file(path)?,
        (None, Some(dir)) => auth::load_or_create_secret(dir)?,
        (None, None) => anyhow::bail!("give --data-dir or --jwt-secret-file"),
    };
    let request = MintRequest {
        tenant: args.tenant,
        user: args.user,
        app: Some(args.app.unwrap_or_else(|| "presenced-cli".to_owned())),
        scopes,
        roles,
        ttl_seconds: ttl.as_secs(),
        issuer: args.issuer,
        audience: args.audience,
        now_unix: SystemClock.unix_seconds(),
    };
    println!("{}", auth::mint_hs256(&secret, &request)?);
    Ok(())
}
