//! `/board`: a live presence board for people, three static files compiled into the binary
//! (`crates/presenced/board/`). Served without authentication, since it holds no data: the person
//! pastes a token, and the page uses it on the same API as any client, the watch stream's
//! WebSocket (token in the first message, never in a URL) and `…/presence/explain`.
//!
//! Every file goes out with a Content-Security-Policy that allows nothing but the server's own
//! scripts, styles and connections: no inline script or style, no other origin, no framing. So
//! a status message or user id that reached the page as markup could still run nothing.
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One file of the board.
#[derive(Debug)]
pub struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const PAGE: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../board/index.html"),
};
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../../board/board.js"),
};
const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("../../board/board.css"),
};

/// The policy of every board response (docs/decisions.md, "The board").
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The board file at `path`, if it is one. Cheap enough for every request's check.
pub fn asset(path: &str) -> Option<&'static Asset> {
    match path {
        "/board" | "/board/" => Some(&PAGE),
        "/board/board.js" => Some(&SCRIPT),
        "/board/board.css" => Some(&STYLE),
        _ => None,
    }
}

/// A board file (`GET` or `HEAD`; the caller checked the method). Browsers revalidate every
/// time (`no-cache`) against an ETag of the content, so a new binary's page is never mixed with
/// an old script, and an unchanged one costs a `304`.
pub fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = format!(
        "\"{:08x}-{:x}\"",
        crc32fast::hash(asset.body.as_bytes()),
        asset.body.len()
    );
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let out = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

const REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Response, name: &str) -> &'a str {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn the_board_paths_and_only_those() {
        for (path, kind) in [
            ("/board", "text/html"),
            ("/board/", "text/html"),
            ("/board/board.js", "text/javascript"),
            ("/board/board.css", "text/css"),
        ] {
            assert!(asset(path).unwrap().content_type.starts_with(kind), "{path}");
        }
        for other in [
            "/board/x.js",
            "/board/index.html",
            "/boards",
            "/board//",
            "/v1.0/board",
            "/BOARD",
        ] {
            assert!(asset(other).is_none(), "{other}");
        }
    }

    #[test]
    fn every_file_carries_the_policy_and_revalidates() {
        for path in ["/board", "/board/board.js", "/board/board.css"] {
            let r = serve(asset(path).unwrap(), &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(header(&r, "content-security-policy"), CONTENT_SECURITY_POLICY);
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            assert_eq!(header(&r, "referrer-policy"), "no-referrer");
            assert_eq!(header(&r, "cache-control"), "no-cache");
            let etag = header(&r, "etag").to_owned();
            let mut again = HeaderMap::new();
            again.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap());
            assert_eq!(serve(asset(path).unwrap(), &again).status(), StatusCode::NOT_MODIFIED);
        }
    }

    /// The policy allows no inline code, so the page must hold none: every script and style is
    /// a file of ours, and no element carries a handler or a style attribute.
    #[test]
    fn the_page_holds_nothing_the_policy_would_refuse() {
        let page = PAGE.body.to_ascii_lowercase();
        for (i, _) in page.match_indices("<script") {
            let tag = &page[i..i + page[i..].find('>').unwrap()];
            let src = tag.split("src=\"").nth(1).and_then(|s| s.split('"').next());
            assert!(
                src.is_some_and(|s| asset(s).is_some()),
                "inline or foreign script: {tag}"
            );
        }
        for (i, _) in page.match_indices("<link") {
            let tag = &page[i..i + page[i..].find('>').unwrap()];
            let href = tag.split("href=\"").nth(1).and_then(|s| s.split('"').next()).unwrap();
            assert!(
                asset(href).is_some() || href.starts_with("data:"),
                "foreign link: {tag}"
            );
        }
        assert!(!page.contains("<style"), "inline style element");
        assert!(!page.contains(" style="), "style attribute");
        assert!(
            !page
                .split(|c: char| c.is_whitespace())
                .any(|w| w.starts_with("on") && w.contains('=')),
            "inline event handler"
        );
    }
}
