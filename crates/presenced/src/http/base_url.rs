//! The base of every absolute URL the server writes (`@odata.context`, `@odata.nextLink`): the
//! scheme and host the client used.
//!
//! `--public-url` wins (a server behind a proxy cannot see what the client typed); else the
//! scheme is the listener's (`https` with `--tls-cert`) and the host is the request's `Host`
//! header, or the address the client connected to when it sent none. A `Host` that is not a
//! plain host name or address with an optional port is not echoed.
//!
//! The connection comes from [`ConnHandle::current`]; the request's `Host` is set by the
//! connection layer around each call of the service ([`with_request_host`]), so handlers that
//! are not given the headers can still ask.
use crate::net::ConnHandle;
use axum::http::HeaderValue;
use std::cell::RefCell;
use std::ops::Deref;
use std::sync::Arc;

thread_local! {
    /// The `Host` of the request being polled on this thread.
    static REQUEST_HOST: RefCell<Option<HeaderValue>> = const { RefCell::new(None) };
}

/// Run `poll` with `host` as the current request's `Host`; it is handed back afterwards (even
/// if `poll` panics), so a request's future can carry it across polls.
pub fn with_request_host<R>(host: &mut Option<HeaderValue>, poll: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a mut Option<HeaderValue>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            REQUEST_HOST.with(|h| std::mem::swap(&mut *h.borrow_mut(), self.0));
        }
    }
    REQUEST_HOST.with(|h| std::mem::swap(&mut *h.borrow_mut(), host));
    let _restore = Restore(host);
    poll()
}

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
    let (tls, public) = connection();
    if let Some(public) = public {
        return public.to_string();
    }
    let host = REQUEST_HOST.with(|h| {
        h.borrow()
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|h| is_plain_host(h))
            .map(str::to_owned)
    });
    let host = host.unwrap_or_else(|| match ConnHandle::current() {
        Some(c) => c.local().to_string(),
        None => "localhost".to_owned(),
    });
    format!("{}{host}", &*scheme(tls))
}

fn scheme(tls: bool) -> Prefix {
    Prefix::Scheme(if tls { "https://" } else { "http://" })
}

/// Whether the connection is TLS, and the public URL, if any.
fn connection() -> (bool, Option<Arc<str>>) {
    ConnHandle::with_current(|c| match c {
        Some(c) => (c.is_tls(), c.0.listener.public_url.clone()),
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
        let mut host = Some(HeaderValue::from_static("[::1]:9"));
        assert_eq!(with_request_host(&mut host, current), "http://[::1]:9");
        assert!(host.is_some(), "handed back");
        assert_eq!(current(), "http://localhost");
    }
}
