//! The base of every absolute URL the server writes (`@odata.context`, `@odata.nextLink`): the
//! scheme and host the client used.
//!
//! `--public-url` wins (a server behind a proxy cannot see what the client typed); else the
//! scheme is the listener's (`https` with `--tls-cert`) and the host is the request's `Host`
//! header, or the address the client connected to when it sent none. A `Host` that is not a
//! plain host name or address with an optional port is not echoed.
//!
//! The connection and the request's `Host` are those the connection layer makes current while
//! the handler is polled (`net::conn`), so handlers that are not given the headers can ask.
use crate::net::conn::read_current;
use std::ops::Deref;
use std::sync::Arc;

/// The start of an absolute URL: `https://` or `http://` (then the host follows), or the whole
/// `--public-url`.
pub enum Prefix {
    Scheme(&'static str),
    Public(Arc<str>),
}

impl Deref for Prefix {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Prefix::Scheme(s) => s,
            Prefix::Public(p) => p,
        }
    }
}

/// The base for a request whose `Host` is `host`, as a prefix and a host to write after it
/// (empty after a public URL); `None` if there is neither a public URL nor a usable host.
pub fn for_host(host: Option<&str>) -> Option<(Prefix, &str)> {
    let (tls, public) = connection();
    if let Some(public) = public {
        return Some((Prefix::Public(public), ""));
    }
    let host = host.filter(|h| is_plain_host(h))?;
    Some((scheme(tls), host))
}

/// The base URL of the current request, e.g. `https://presence.example.com` (no trailing `/`).
pub fn current() -> String {
    read_current(|c| {
        let Some(c) = c else {
            return "http://localhost".to_owned();
        };
        let listener = &c.conn.listener;
        if let Some(public) = &listener.public_url {
            return public.to_string();
        }
        let host = c
            .host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|h| is_plain_host(h));
        match host {
            Some(host) => format!("{}{host}", &*scheme(listener.tls)),
            None => format!("{}{}", &*scheme(listener.tls), c.conn.local),
        }
    })
}

fn scheme(tls: bool) -> Prefix {
    Prefix::Scheme(if tls { "https://" } else { "http://" })
}

/// Whether the connection is TLS, and the public URL, if any.
fn connection() -> (bool, Option<Arc<str>>) {
    read_current(|c| match c {
        Some(c) => (c.conn.listener.tls, c.conn.listener.public_url.clone()),
        None => (false, None),
    })
}

/// A host name, IPv4 address or bracketed IPv6 address, with an optional port: what may be put
/// in a URL without escaping.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_connection_the_host_is_used_over_http() {
        let (prefix, host) = for_host(Some("localhost:8080")).unwrap();
        assert_eq!(format!("{}{host}", &*prefix), "http://localhost:8080");
        assert!(for_host(Some("evil.com/\"x")).is_none());
        assert!(for_host(None).is_none());
        assert_eq!(current(), "http://localhost");
    }
}
