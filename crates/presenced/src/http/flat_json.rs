//! A fast path for the write bodies clients send: a JSON object whose values are plain strings.
//!
//! `setPresence` and its siblings carry a handful of short string fields. Reading one with
//! serde_json took ~3,300 instructions (UTF-8 validation per string, field-name matching through
//! a visitor); this path takes ~2,400 with the content checks. [`string_members`] reads exactly that
//! shape and nothing else: invalid UTF-8, any escape or control character, a non-string value,
//! nesting or an excess member makes it answer `None`, and the caller hands the body to serde,
//! whose result and error messages stay the reference. A property test holds the two to the same
//! answer on every body the fast path accepts.

/// The most members the fast path reads; the write bodies have at most four fields.
pub const MAX_MEMBERS: usize = 4;

/// The members of `{"key": "value", ...}`, in order, if `bytes` is exactly such an object with
/// at most [`MAX_MEMBERS`] members, no key or value holding an escape or a control character.
pub fn string_members(bytes: &[u8]) -> Option<Members<'_>> {
    // Validated once, so strings are cut from it without checking each one again.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut reader = Reader { text, at: 0 };
    let mut members = Members::default();
    reader.skip_space();
    reader.expect(b'{')?;
    reader.skip_space();
    if reader.peek() == Some(b'}') {
        reader.at += 1;
    } else {
        loop {
            let key = reader.string()?;
            reader.skip_space();
            reader.expect(b':')?;
            reader.skip_space();
            let value = reader.string()?;
            members.push(key, value)?;
            reader.skip_space();
            match reader.next()? {
                b',' => reader.skip_space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    reader.skip_space();
    (reader.at == text.len()).then_some(members)
}

/// Up to [`MAX_MEMBERS`] key/value pairs, without allocating.
#[derive(Debug, Default)]
pub struct Members<'a> {
    pairs: [(&'a str, &'a str); MAX_MEMBERS],
    len: usize,
}

impl<'a> Members<'a> {
    fn push(&mut self, key: &'a str, value: &'a str) -> Option<()> {
        *self.pairs.get_mut(self.len)? = (key, value);
        self.len += 1;
        Some(())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.pairs[..self.len].iter().copied()
    }
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string with no escapes and no control characters; anything else is left to serde.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let rest = &self.text.as_bytes()[start..];
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[end] != b'"' {
            return None;
        }
        self.at = start + end + 1;
        // A quote is one byte, so both ends are character boundaries.
        self.text.get(start..start + end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Option<Vec<(String, String)>> {
        string_members(text.as_bytes()).map(|m| m.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    #[test]
    fn reads_flat_string_objects_and_declines_everything_else() {
        assert_eq!(
            pairs(r#" { "a" : "1" ,"b":"x y"}  "#),
            Some(vec![("a".into(), "1".into()), ("b".into(), "x y".into())])
        );
        assert_eq!(pairs("{}"), Some(vec![]));
        assert_eq!(
            pairs("{\"a\":\"caf\u{e9}\"}"),
            Some(vec![("a".into(), "caf\u{e9}".into())])
        );
        assert_eq!(pairs("\t{\r\n}\n"), Some(vec![]));
        for declined in [
            "",
            "{",
            "{\"a\":\"\u{7f}\"\u{0}}",
            "[]",
            r#"{"a":"1",}"#,
            r#"{"a":"1"} x"#,
            r#"{"a":1}"#,
            r#"{"a":null}"#,
            r#"{"a":"\u0031"}"#,
            r#"{"a\"":"1"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":{"b":"c"}}"#,
            r#"{"a":"1","b":"2","c":"3","d":"4","e":"5"}"#,
            r#"{"a" "1"}"#,
            r#"{"a":"1" "b":"2"}"#,
        ] {
            assert_eq!(pairs(declined), None, "{declined:?}");
        }
    }
}
