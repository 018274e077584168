//! Parsing a subscription's `resource`: one user (`/communications/presences/{id}`) or up to 650
//! (`/communications/presences?$filter=id in ('a','b')`).
//!
//! Graph rejects unquoted ids with "invalid filter clause"; we do the same, and say exactly what
//! was wrong and where, because this is the error users of Graph keep asking about.
use presence_core::UserId;

/// Graph's limit for one presence subscription.
pub const MAX_SUBSCRIBED_USERS: usize = 650;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("resource must be /communications/presences/{{id}} or /communications/presences?$filter=id in ('id1','id2',...)")]
    UnsupportedResource,
    #[error("invalid filter clause: {0}")]
    Filter(String),
    #[error("invalid user id in resource: {0}")]
    BadId(String),
    #[error("a presence subscription covers 1 to {MAX_SUBSCRIBED_USERS} users (got {0})")]
    TooMany(usize),
}

/// The users a resource names, de-duplicated, in the order given.
pub fn parse_resource(resource: &str) -> Result<Vec<UserId>, FilterError> {
    let trimmed = resource.trim();
    let rest = trimmed.strip_prefix('/').unwrap_or(trimmed);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let users = match (segments.as_slice(), query) {
        ([comms, presences, id], None) if is(comms, "communications") && is(presences, "presences") => {
            let decoded = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
            vec![UserId::parse(&decoded).map_err(|e| FilterError::BadId(e.to_string()))?]
        }
        ([comms, presences], Some(query)) if is(comms, "communications") && is(presences, "presences") => {
            parse_filter(&filter_option(query)?)?
        }
        _ => return Err(FilterError::UnsupportedResource),
    };
    let mut unique: Vec<UserId> = Vec::with_capacity(users.len());
    for u in users {
        if !unique.contains(&u) {
            unique.push(u);
        }
    }
    if unique.is_empty() || unique.len() > MAX_SUBSCRIBED_USERS {
        return Err(FilterError::TooMany(unique.len()));
    }
    Ok(unique)
}

/// The value of `$filter` in a query string (percent-decoded, `+` left alone as Graph does).
fn filter_option(query: &str) -> Result<String, FilterError> {
    let mut found = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        if name.eq_ignore_ascii_case("$filter") {
            if found.is_some() {
                return Err(FilterError::Filter("$filter is given twice".into()));
            }
            found = Some(
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        } else {
            return Err(FilterError::Filter(format!(
                "unsupported query option '{}'",
                truncate(&name)
            )));
        }
    }
    found.ok_or_else(|| FilterError::Filter("missing $filter".into()))
}

/// `id in ('a', 'b')`: the only filter Graph supports on presences. Quotes are required; a quote
/// inside an id is written twice (OData), though no valid user id can contain one.
pub fn parse_filter(filter: &str) -> Result<Vec<UserId>, FilterError> {
    let err = |m: &str| FilterError::Filter(m.to_owned());
    let text = filter.trim();
    let after_id = strip_keyword(text, "id").ok_or_else(|| err("expected `id in (...)`"))?;
    let after_in = strip_keyword(after_id.trim_start(), "in").ok_or_else(|| err("expected `in` after `id`"))?;
    let list = after_in.trim_start();
    let inner = list
        .strip_prefix('(')
        .and_then(|l| l.trim_end().strip_suffix(')'))
        .ok_or_else(|| err("expected a parenthesised list: id in ('id1','id2')"))?;
    let mut ids = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some('\'') => {}
            Some(c) => {
                return Err(FilterError::Filter(format!(
                    "ids must be quoted, as in ('id'); found '{c}'"
                )))
            }
            None if ids.is_empty() => return Err(err("the id list is empty")),
            None => return Err(err("trailing comma in the id list")),
        }
        let mut id = String::new();
        loop {
            match chars.next() {
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    id.push('\'');
                }
                Some('\'') => break,
                Some(c) => id.push(c),
                None => return Err(err("unterminated quoted id")),
            }
            if id.len() > 1024 {
                return Err(err("an id in the filter is too long"));
            }
        }
        ids.push(UserId::parse(&id).map_err(|e| FilterError::BadId(format!("'{}': {e}", truncate(&id))))?);
        if ids.len() > MAX_SUBSCRIBED_USERS {
            return Err(FilterError::TooMany(ids.len()));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(c) => return Err(FilterError::Filter(format!("expected ',' between ids, found '{c}'"))),
        }
    }
    Ok(ids)
}

/// Strip a case-insensitive keyword that must be followed by whitespace or `(`.
fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    let boundary = rest.chars().next().is_none_or(|c| c.is_whitespace() || c == '(');
    (head.eq_ignore_ascii_case(keyword) && boundary).then_some(rest)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(v: &[UserId]) -> Vec<&str> {
        v.iter().map(UserId::as_str).collect()
    }

    #[test]
    fn single_user_and_filter_forms() {
        assert_eq!(ids(&parse_resource("/communications/presences/u1").unwrap()), ["u1"]);
        assert_eq!(
            ids(&parse_resource("communications/presences/U%40x.com").unwrap()),
            ["U@x.com"]
        );
        let r = parse_resource("/communications/presences?$filter=id in ('a', 'b','a' , 'C')").unwrap();
        assert_eq!(ids(&r), ["a", "b", "C"]);
        let encoded = parse_resource("/communications/presences?%24filter=id%20in%20('a')").unwrap();
        assert_eq!(ids(&encoded), ["a"]);
        let guid =
            parse_resource("/communications/presences?$filter=ID IN ('FA8BF3DC-ECA7-46B7-BAD1-DB199B62AFC3')").unwrap();
        assert_eq!(ids(&guid), ["fa8bf3dc-eca7-46b7-bad1-db199b62afc3"]);
    }

    #[test]
    fn malformed_filters_say_why() {
        let cases = [
            ("/communications/presences?$filter=id in (a,b)", "must be quoted"),
            ("/communications/presences?$filter=id in ('a',)", "trailing comma"),
            ("/communications/presences?$filter=id in ()", "empty"),
            ("/communications/presences?$filter=id in ('a' 'b')", "expected ','"),
            ("/communications/presences?$filter=id eq 'a'", "expected `in`"),
            ("/communications/presences?$filter=name in ('a')", "expected `id in"),
            ("/communications/presences?$filter=id in 'a'", "parenthesised"),
            ("/communications/presences?$filter=id in ('a", "parenthesised"),
            ("/communications/presences?$top=5", "unsupported query option"),
            ("/communications/presences", "resource must be"),
            ("/users/a/presence", "resource must be"),
            ("/communications/presences/a/b", "resource must be"),
            ("/communications/presences?$filter=id in ('a b')", "invalid user id"),
        ];
        for (resource, expected) in cases {
            let message = parse_resource(resource).unwrap_err().to_string();
            assert!(message.contains(expected), "{resource}: {message}");
        }
    }

    #[test]
    fn at_most_650_users() {
        let list = |n: usize| (0..n).map(|i| format!("'u{i}'")).collect::<Vec<_>>().join(",");
        let ok = format!("/communications/presences?$filter=id in ({})", list(650));
        assert_eq!(parse_resource(&ok).unwrap().len(), 650);
        let too_many = format!("/communications/presences?$filter=id in ({})", list(651));
        assert!(matches!(parse_resource(&too_many), Err(FilterError::TooMany(_))));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = parse_resource(&s);
            let _ = parse_filter(&s);
        }

        #[test]
        fn roundtrips_generated_lists(users in prop::collection::vec("[a-z0-9]{1,12}", 1..20)) {
            let list = users.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(", ");
            let parsed = parse_filter(&format!("id in ({list})")).unwrap();
            prop_assert_eq!(ids(&parsed), users.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
