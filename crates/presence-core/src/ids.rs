//! Identifiers, parsed once at the edge so the rest of the code never re-checks them.
//!
//! Graph addresses users by object-id GUIDs, but deployments also use UPNs, so an id is an opaque
//! string from a conservative alphabet. GUIDs compare case-insensitively in Entra ID, so they are
//! stored lower-case: `ABC…` and `abc…` must land on the same user.
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted identifier. 128 covers GUIDs (36) and realistic UPNs while keeping keys small.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the {kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("the {kind} is longer than {MAX_ID_LEN} characters")]
    TooLong { kind: &'static str },
    #[error("the {kind} may contain only letters, digits and . _ @ - (found {found:?})")]
    BadCharacter { kind: &'static str, found: char },
}

fn normalise(kind: &'static str, raw: &str) -> Result<String, IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    if let Some(found) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        return Err(IdError::BadCharacter { kind, found });
    }
    if looks_like_guid(raw) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Ok(raw.to_owned())
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

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                normalise($kind, raw).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<Self, IdError> {
                Self::parse(&raw)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// The tenant (`tid` claim): the isolation boundary for all data.
    TenantId,
    "tenant id"
);
id_type!(
    /// A user within a tenant (`oid`, or the `{id}` of a path).
    UserId,
    "user id"
);
id_type!(
    /// A presence session of a user; Graph asks apps to use their application id.
    SessionId,
    "session id"
);

/// The key of one user's presence: every stored record and lock is per `UserKey`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserKey {
    pub tenant: TenantId,
    pub user: UserId,
}

impl UserKey {
    pub fn new(tenant: TenantId, user: UserId) -> Self {
        Self { tenant, user }
    }

    /// A flat storage key. `/` cannot occur in either id, so the split is unambiguous.
    pub fn storage_key(&self) -> String {
        // Concatenated rather than `format!`ed: built for every committed write.
        let (tenant, user) = (self.tenant.as_str(), self.user.as_str());
        let mut key = String::with_capacity(tenant.len() + 1 + user.len());
        key.push_str(tenant);
        key.push('/');
        key.push_str(user);
        key
    }

    pub fn from_storage_key(raw: &str) -> Option<Self> {
        let (tenant, user) = raw.split_once('/')?;
        Some(Self::new(TenantId::parse(tenant).ok()?, UserId::parse(user).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_lower_cased_and_upns_kept() {
        let g = UserId::parse("FA8BF3DC-ECA7-46B7-BAD1-DB199B62AFC3").unwrap();
        assert_eq!(g.as_str(), "fa8bf3dc-eca7-46b7-bad1-db199b62afc3");
        let upn = UserId::parse("Alice.Smith@Contoso.com").unwrap();
        assert_eq!(upn.as_str(), "Alice.Smith@Contoso.com");
    }

    #[test]
    fn rejects_empty_long_and_odd_characters() {
        assert_eq!(UserId::parse(""), Err(IdError::Empty { kind: "user id" }));
        assert!(matches!(UserId::parse(&"a".repeat(129)), Err(IdError::TooLong { .. })));
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
        for bad in ["a/b", "a b", "é", "a'b", "a\0"] {
            assert!(matches!(UserId::parse(bad), Err(IdError::BadCharacter { .. })), "{bad}");
        }
    }

    #[test]
    fn storage_key_roundtrips() {
        let k = UserKey::new(TenantId::parse("t1").unwrap(), UserId::parse("u@x").unwrap());
        assert_eq!(UserKey::from_storage_key(&k.storage_key()), Some(k));
    }
}
