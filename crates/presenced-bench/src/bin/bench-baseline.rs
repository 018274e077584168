//! `bench-baseline`: the "minimal axum endpoint that returns 200" that `bench/http.sh` measures
//! presenced against, in the same run and on the same machine.
//!
//! It has presenced's runtime shape (a multi-threaded tokio runtime serving axum over HTTP/1) and
//! nothing else: `GET` on any path answers 200 with a fixed JSON body about the size of a presence
//! document, and `POST` on any path reads the whole request body and answers 200 with an empty
//! body. No routing, authentication, state or disk. The ratio presenced/baseline therefore shows
//! what presenced's own work costs on top of the HTTP stack both share.
//!
//! Usage: `bench-baseline --listen 127.0.0.1:0`; prints `listening on http://HOST:PORT` on stdout
//! when ready, like `presenced serve`.
use anyhow::Context;
use axum::body::Bytes;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use std::io::Write;

/// A fixed document shaped like a Graph presence response (~270 bytes, as presenced's).
const PRESENCE_LIKE: &str = concat!(
    r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#users('user-1')/presence/$entity","#,
    r#""id":"user-1","availability":"Busy","activity":"InACall","#,
    r#""statusMessage":null,"outOfOfficeSettings":{"message":null,"isOutOfOffice":false},"#,
    r#""sequenceNumber":"00001795765695311400"}"#
);

#[derive(Debug, Parser)]
#[command(
    name = "bench-baseline",
    about = "Minimal axum server: the baseline for bench/http.sh"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

async fn handle(method: Method, body: Bytes) -> Response {
    if method == Method::POST {
        // The body has been read in full by the `Bytes` extractor; answer like setPresence.
        drop(body);
        StatusCode::OK.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], PRESENCE_LIKE).into_response()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        axum::serve(listener, Router::new().fallback(handle)).await?;
        Ok(())
    })
}
