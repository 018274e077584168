//! The identifier rule for tenant, user and app ids taken from token claims.
//!
//! Same rule as the presence core's ids: 1..=128 characters of `[A-Za-z0-9._@-]`, GUIDs lower-cased.
//! Applying it to the claims means a token can never name a tenant or user that the store could not
//! key (no `/`, no whitespace, no unbounded length), and `ABC…` and `abc…` are one Entra ID object.

/// Validates `raw` as an identifier and returns its canonical form (GUIDs lower-cased, anything else
/// unchanged), or `None` if it breaks the rule. The rule itself lives in the core (`UserId`), so
/// claims and stored keys can never disagree about what an id is.
pub fn normalize_id(raw: &str) -> Option<String> {
    presence_core::UserId::parse(raw).ok().map(String::from)
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
