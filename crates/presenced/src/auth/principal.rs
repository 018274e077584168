//! Who is calling: the tenant, the signed-in user (delegated tokens) or only an application
//! (application tokens), and the permissions the token carries.

/// An authenticated caller, built only by the verifier from a token that passed every check.
///
/// `tenant` and `user` are already normalised (see `normalize_id`), so they can be used as store
/// keys directly. `roles` is kept as the token states it even for delegated tokens (where Entra ID
/// puts the *user's* app roles), but only application tokens are ever granted anything from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `tid`: the isolation boundary; every read and write is confined to it.
    pub tenant: String,
    /// `oid` of the signed-in user; always `Some` for delegated tokens, always `None` for
    /// application tokens (whose `oid`, if any, is the app's service principal, not a user).
    pub user: Option<String>,
    /// `appid`, or else `azp`: the calling application.
    pub app: Option<String>,
    /// `scp`, split on whitespace: delegated permissions.
    pub scopes: Vec<String>,
    /// `roles`: application permissions.
    pub roles: Vec<String>,
    /// `exp`, in seconds since the epoch: long-lived streams end when the token does.
    pub expires_at: Option<i64>,
}

impl Principal {
    /// A token with at least one scope acts for a signed-in user; anything else is an application.
    /// This is the same test Graph applies: delegated tokens carry `scp`, app-only tokens do not.
    pub fn is_delegated(&self) -> bool {
        !self.scopes.is_empty()
    }
}
