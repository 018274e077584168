//! The identifier rule for tenant, user and app ids taken from token claims.
//!
//! Same rule as the presence core's ids: 1..=128 characters of `[A-Za-z0-9._@-]`, GUIDs lower-cased.
//! Applying it to the claims means a token can never name a tenant or user that the store could not
//! key (no `/`, no whitespace, no unbounded length), and `ABC…` and `abc…` are one Entra ID object.

/// Longest accepted identifier: a GUID is 36, realistic UPNs fit, storage keys stay small.
pub const MAX_ID_LEN: usize = 128;

/// Validates `raw` as an identifier and returns its canonical form (GUIDs lower-cased, anything else
/// unchanged), or `None` if it breaks the rule.
pub fn normalize_id(raw: &str) -> Option<String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-');
    // The alphabet is ASCII, so byte length equals character count here.
    if raw.is_empty() || raw.len() > MAX_ID_LEN || !raw.bytes().all(allowed) {
        return None;
    }
    if looks_like_guid(raw) {
        Some(raw.to_ascii_lowercase())
    } else {
        Some(raw.to_owned())
    }
}

fn looks_like_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_lower_cased_other_ids_kept() {
        assert_eq!(
            normalize_id("FA8BF3DC-ECA7-46B7-BAD1-DB199B62AFC3").as_deref(),
            Some("fa8bf3dc-eca7-46b7-bad1-db199b62afc3")
        );
        assert_eq!(
            normalize_id("Alice.Smith@Contoso.com").as_deref(),
            Some("Alice.Smith@Contoso.com")
        );
        // Not a GUID shape (no hyphens): a plain id, kept as is.
        assert_eq!(
            normalize_id("FA8BF3DCECA746B7BAD1DB199B62AFC3").as_deref(),
            Some("FA8BF3DCECA746B7BAD1DB199B62AFC3")
        );
    }

    #[test]
    fn rejects_empty_long_and_odd_characters() {
        assert_eq!(normalize_id(""), None);
        assert_eq!(normalize_id(&"a".repeat(129)), None);
        assert!(normalize_id(&"a".repeat(128)).is_some());
        for bad in ["a/b", "a b", "é", "a'b", "a\0", "a\n", "{guid}", "a:b"] {
            assert_eq!(normalize_id(bad), None, "{bad:?}");
        }
    }
}
