//! The Graph presence permission matrix (spec §6): which delegated scopes and application roles
//! allow which action, on whose presence.
//!
//! Decisions where the spec is silent:
//! - Delegated `Presence.ReadWrite` reads the caller's own presence (it implies read of what it may
//!   write) but not other users' presence, and does not allow the bulk read or subscriptions.
//! - Delegated `Presence.ReadWrite` writes any user in the tenant, as Graph's setStatusMessage
//!   "set status message of another user" example does.
//! - Application tokens cannot subscribe unless the operator opts in (`can_subscribe(true)`),
//!   because Graph refuses app-only presence subscriptions.
//! - Work location (`setManualLocation` and the other three) is delegated `Presence.ReadWrite`
//!   only, as Graph documents, and only for the signed-in user's own presence (Graph's
//!   documented path is `/me`; its sibling `setCurrentLocation` says a `/users/{id}` id "must be
//!   your own user ID").
//!
//! Delegated tokens are judged only by `scp` and application tokens only by `roles`, so a role
//! smuggled into `scp` (or a user's app role in a delegated token's `roles`) grants nothing.
//! Every target is a user of the caller's own tenant: callers resolve users inside `tid` only.

use super::principal::Principal;

const READ: &str = "Presence.Read";
const READ_ALL: &str = "Presence.Read.All";
const READ_WRITE: &str = "Presence.ReadWrite";
const READ_WRITE_ALL: &str = "Presence.ReadWrite.All";
const DELEGATED_READERS: &str = "Presence.Read, Presence.ReadWrite or Presence.Read.All";
const APP_READERS: &str = "Presence.Read.All or Presence.ReadWrite.All";
const DELEGATED: &str = "delegated";
const APPLICATION: &str = "application";

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// GET one user's presence (`/me`, `/users/{id}`, `/communications/presences/{id}`).
    ReadPresence,
    /// POST `/communications/getPresencesByUserId`.
    ReadPresenceBulk,
    /// setPresence, clearPresence, set/clearUserPreferredPresence, setStatusMessage.
    WritePresence,
    /// setManualLocation, setAutomaticLocation, clearAutomaticLocation, clearLocation.
    WriteWorkLocation,
    /// Create, renew or reauthorize a presence subscription.
    Subscribe,
}

/// Why an authenticated caller may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The request needs a signed-in user but the token is application-only: `/me` paths (Graph
    /// answers 400 there) and delegated-only operations such as subscriptions (403).
    #[error("this request is only valid with a delegated (signed-in user) token")]
    NeedsUser,
    /// The token lacks the permission; the message names the permission that would allow it (403).
    #[error("{0}")]
    Forbidden(String),
}

impl Principal {
    /// Whether this caller may perform `action` on `target_user`.
    ///
    /// `target_user` is the normalised id of the user whose presence is read or written, or `None`
    /// for the caller's own presence (`/me`). It is ignored for the bulk read and for subscriptions,
    /// which are checked per request rather than per user.
    pub fn can(&self, action: Action, target_user: Option<&str>) -> Result<(), Denied> {
        if action == Action::Subscribe {
            return self.can_subscribe(false);
        }
        if action == Action::WritePresence {
            return self.can_write(target_user, false);
        }
        if self.is_delegated() {
            self.delegated_can(action, target_user)
        } else {
            self.application_can(action, target_user)
        }
    }

    /// Whether this caller may create or renew a presence subscription. `allow_app_tokens` is the
    /// operator's switch for app-only subscriptions, which Graph itself does not offer.
    pub fn can_subscribe(&self, allow_app_tokens: bool) -> Result<(), Denied> {
        const DOING: &str = "subscribing to presence";
        if self.is_delegated() {
            return check(self.has_scope(READ_ALL), DOING, DELEGATED, READ_ALL);
        }
        if !allow_app_tokens {
            return Err(Denied::NeedsUser);
        }
        check(self.is_app_reader(), DOING, APPLICATION, APP_READERS)
    }

    /// Whether this caller may change `target_user`'s presence. A delegated token acts for its
    /// own user only (`Presence.ReadWrite` is a permission users consent to themselves); changing
    /// a colleague's presence is what the application permission is for, unless the operator
    /// allows delegated writes to others (`allow_delegated_others`, off by default).
    pub fn can_write(&self, target_user: Option<&str>, allow_delegated_others: bool) -> Result<(), Denied> {
        if !self.is_delegated() {
            return self.application_can(Action::WritePresence, target_user);
        }
        check(self.has_scope(READ_WRITE), "changing presence", DELEGATED, READ_WRITE)?;
        if self.is_own(target_user) || allow_delegated_others {
            Ok(())
        } else {
            Err(Denied::Forbidden(
                "changing another user's presence requires the application permission Presence.ReadWrite.All; a delegated token changes its own user's presence only".into(),
            ))
        }
    }

    fn delegated_can(&self, action: Action, target_user: Option<&str>) -> Result<(), Denied> {
        match action {
            Action::ReadPresence => {
                let own_only = self.has_scope(READ) || self.has_scope(READ_WRITE);
                if own_only && !self.is_own(target_user) {
                    let doing = "reading another user's presence";
                    return check(self.has_scope(READ_ALL), doing, DELEGATED, READ_ALL);
                }
                let granted = own_only || self.has_scope(READ_ALL);
                check(granted, "reading presence", DELEGATED, DELEGATED_READERS)
            }
            Action::ReadPresenceBulk => {
                let doing = "reading presence of several users";
                check(self.has_scope(READ_ALL), doing, DELEGATED, READ_ALL)
            }
            Action::WritePresence => self.can_write(target_user, false),
            Action::WriteWorkLocation => {
                check(
                    self.has_scope(READ_WRITE),
                    "changing a work location",
                    DELEGATED,
                    READ_WRITE,
                )?;
                if self.is_own(target_user) {
                    Ok(())
                } else {
                    Err(Denied::Forbidden(format!(
                        "{READ_WRITE} lets the signed-in user change only their own work location (use /me)"
                    )))
                }
            }
            Action::Subscribe => self.can_subscribe(false),
        }
    }

    fn application_can(&self, action: Action, target_user: Option<&str>) -> Result<(), Denied> {
        // An application has no "own" presence: `/me` means nothing without a signed-in user.
        let per_user = matches!(
            action,
            Action::ReadPresence | Action::WritePresence | Action::WriteWorkLocation
        );
        if per_user && target_user.is_none() {
            return Err(Denied::NeedsUser);
        }
        match action {
            Action::ReadPresence | Action::ReadPresenceBulk => {
                check(self.is_app_reader(), "reading presence", APPLICATION, APP_READERS)
            }
            Action::WritePresence => {
                let granted = self.has_role(READ_WRITE_ALL);
                check(granted, "changing presence", APPLICATION, READ_WRITE_ALL)
            }
            // Graph: "Application: Not supported".
            Action::WriteWorkLocation => Err(Denied::Forbidden(format!(
                "changing a work location is not supported with application permissions; it requires the delegated permission {READ_WRITE}"
            ))),
            Action::Subscribe => self.can_subscribe(false),
        }
    }

    fn is_app_reader(&self) -> bool {
        self.has_role(READ_ALL) || self.has_role(READ_WRITE_ALL)
    }

    fn is_own(&self, target_user: Option<&str>) -> bool {
        match (target_user, self.user.as_deref()) {
            (None, Some(_)) => true,
            (Some(target), Some(own)) => target == own,
            (_, None) => false,
        }
    }

    // Permission names are case-insensitive in Entra ID; only exact names count, never prefixes.
    fn has_scope(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.eq_ignore_ascii_case(name))
    }

    fn has_role(&self, name: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(name))
    }
}

/// `Ok` if granted, else `Forbidden` naming the permission(s) that would have allowed it.
fn check(granted: bool, doing: &str, kind: &str, names: &str) -> Result<(), Denied> {
    if granted {
        Ok(())
    } else {
        Err(Denied::Forbidden(format!(
            "{doing} requires the {kind} permission {names}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "alice";
    const OTHER: &str = "bob";

    fn delegated(scopes: &[&str]) -> Principal {
        Principal {
            tenant: "t".into(),
            user: Some(ME.into()),
            app: Some("app".into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            roles: vec![],
            expires_at: None,
        }
    }

    fn application(roles: &[&str]) -> Principal {
        Principal {
            tenant: "t".into(),
            user: None,
            app: Some("app".into()),
            scopes: vec![],
            roles: roles.iter().map(|s| s.to_string()).collect(),
            expires_at: None,
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        Allow,
        NeedsUser,
        Forbidden,
    }
    use Want::*;

    fn outcome(r: Result<(), Denied>) -> Want {
        match r {
            Ok(()) => Allow,
            Err(Denied::NeedsUser) => NeedsUser,
            Err(Denied::Forbidden(msg)) => {
                assert!(msg.contains("Presence."), "message must name a permission: {msg}");
                Forbidden
            }
        }
    }

    /// Targets: `None` = /me, `Some(ME)` = own id spelled out, `Some(OTHER)` = another user.
    const TARGETS: [Option<&str>; 3] = [None, Some(ME), Some(OTHER)];

    #[test]
    fn delegated_matrix() {
        use Action::*;
        // (scope, action, [want for /me, own id, other user])
        let table: &[(&str, Action, [Want; 3])] = &[
            (READ, ReadPresence, [Allow, Allow, Forbidden]),
            (READ, ReadPresenceBulk, [Forbidden; 3]),
            (READ, WritePresence, [Forbidden; 3]),
            (READ, Subscribe, [Forbidden; 3]),
            (READ_ALL, ReadPresence, [Allow; 3]),
            (READ_ALL, ReadPresenceBulk, [Allow; 3]),
            (READ_ALL, WritePresence, [Forbidden; 3]),
            (READ_ALL, Subscribe, [Allow; 3]),
            (READ_WRITE, ReadPresence, [Allow, Allow, Forbidden]),
            (READ_WRITE, ReadPresenceBulk, [Forbidden; 3]),
            (READ_WRITE, WritePresence, [Allow, Allow, Forbidden]),
            (READ_WRITE, Subscribe, [Forbidden; 3]),
            (READ, WriteWorkLocation, [Forbidden; 3]),
            (READ_ALL, WriteWorkLocation, [Forbidden; 3]),
            (READ_WRITE, WriteWorkLocation, [Allow, Allow, Forbidden]),
            (READ_WRITE_ALL, WriteWorkLocation, [Forbidden; 3]),
            // Application-only names in `scp` grant nothing.
            (READ_WRITE_ALL, ReadPresence, [Forbidden; 3]),
            (READ_WRITE_ALL, ReadPresenceBulk, [Forbidden; 3]),
            (READ_WRITE_ALL, WritePresence, [Forbidden; 3]),
            (READ_WRITE_ALL, Subscribe, [Forbidden; 3]),
            // Unrelated scopes, and near-misses that must not match by prefix.
            ("User.Read", ReadPresence, [Forbidden; 3]),
            ("User.Read", WritePresence, [Forbidden; 3]),
            ("Presence.Read.AllX", ReadPresenceBulk, [Forbidden; 3]),
            ("Presence", ReadPresence, [Forbidden; 3]),
        ];
        for (scope, action, wants) in table {
            for (target, want) in TARGETS.iter().zip(wants) {
                let got = outcome(delegated(&[scope]).can(*action, *target));
                assert_eq!(got, *want, "delegated {scope} {action:?} target {target:?}");
                // Case-insensitive names: the same cell with a shouted scope.
                let got = outcome(delegated(&[&scope.to_uppercase()]).can(*action, *target));
                assert_eq!(
                    got,
                    *want,
                    "delegated {} {action:?} target {target:?}",
                    scope.to_uppercase()
                );
            }
        }
    }

    #[test]
    fn application_matrix() {
        use Action::*;
        let table: &[(&str, Action, [Want; 3])] = &[
            (READ_ALL, ReadPresence, [NeedsUser, Allow, Allow]),
            (READ_ALL, ReadPresenceBulk, [Allow; 3]),
            (READ_ALL, WritePresence, [NeedsUser, Forbidden, Forbidden]),
            (READ_ALL, Subscribe, [NeedsUser; 3]),
            (READ_WRITE_ALL, ReadPresence, [NeedsUser, Allow, Allow]),
            (READ_WRITE_ALL, ReadPresenceBulk, [Allow; 3]),
            (READ_WRITE_ALL, WritePresence, [NeedsUser, Allow, Allow]),
            (READ_WRITE_ALL, Subscribe, [NeedsUser; 3]),
            (READ_WRITE_ALL, WriteWorkLocation, [NeedsUser, Forbidden, Forbidden]),
            (READ_WRITE, WriteWorkLocation, [NeedsUser, Forbidden, Forbidden]),
            // Delegated-only names in `roles` grant nothing.
            (READ, ReadPresence, [NeedsUser, Forbidden, Forbidden]),
            (READ, ReadPresenceBulk, [Forbidden; 3]),
            (READ_WRITE, ReadPresence, [NeedsUser, Forbidden, Forbidden]),
            (READ_WRITE, WritePresence, [NeedsUser, Forbidden, Forbidden]),
            (READ_WRITE, ReadPresenceBulk, [Forbidden; 3]),
            ("User.Read.All", ReadPresenceBulk, [Forbidden; 3]),
        ];
        for (role, action, wants) in table {
            for (target, want) in TARGETS.iter().zip(wants) {
                let got = outcome(application(&[role]).can(*action, *target));
                assert_eq!(got, *want, "application {role} {action:?} target {target:?}");
                let got = outcome(application(&[&role.to_lowercase()]).can(*action, *target));
                assert_eq!(
                    got,
                    *want,
                    "application {} {action:?} target {target:?}",
                    role.to_lowercase()
                );
            }
        }
    }

    #[test]
    fn the_operator_switch_lets_delegated_tokens_write_others_and_grants_nothing_else() {
        let writer = delegated(&[READ_WRITE]);
        assert_eq!(outcome(writer.can_write(Some(OTHER), false)), Forbidden);
        assert_eq!(outcome(writer.can_write(Some(OTHER), true)), Allow);
        assert_eq!(outcome(writer.can_write(None, false)), Allow);
        assert_eq!(outcome(delegated(&[READ_ALL]).can_write(Some(OTHER), true)), Forbidden);
        assert_eq!(
            outcome(application(&[READ_ALL]).can_write(Some(OTHER), true)),
            Forbidden
        );
        assert_eq!(
            outcome(application(&[READ_WRITE_ALL]).can_write(Some(OTHER), false)),
            Allow
        );
    }

    #[test]
    fn no_permissions_at_all() {
        for action in [
            Action::ReadPresence,
            Action::ReadPresenceBulk,
            Action::WritePresence,
            Action::WriteWorkLocation,
            Action::Subscribe,
        ] {
            for target in TARGETS {
                // A delegated principal needs a scope to be delegated at all, so "none" is an app.
                let want = match (action, target) {
                    (Action::ReadPresence | Action::WritePresence | Action::WriteWorkLocation, None)
                    | (Action::Subscribe, _) => NeedsUser,
                    _ => Forbidden,
                };
                assert_eq!(
                    outcome(application(&[]).can(action, target)),
                    want,
                    "{action:?} {target:?}"
                );
            }
        }
    }

    #[test]
    fn a_delegated_tokens_roles_grant_nothing() {
        // Entra ID puts the user's app roles into `roles` of delegated tokens; they are not
        // application permissions and must not lift a read-only user to writer.
        let mut p = delegated(&[READ]);
        p.roles = vec![READ_WRITE_ALL.into(), READ_ALL.into()];
        assert_eq!(outcome(p.can(Action::WritePresence, Some(ME))), Forbidden);
        assert_eq!(outcome(p.can(Action::ReadPresence, Some(OTHER))), Forbidden);
        assert_eq!(outcome(p.can(Action::ReadPresenceBulk, None)), Forbidden);
        assert_eq!(outcome(p.can_subscribe(true)), Forbidden);
    }

    #[test]
    fn subscribe_switch_for_application_tokens() {
        let cases: &[(&[&str], bool, Want)] = &[
            (&[READ_ALL], false, NeedsUser),
            (&[READ_ALL], true, Allow),
            (&[READ_WRITE_ALL], true, Allow),
            (&[READ_WRITE], true, Forbidden),
            (&[], true, Forbidden),
        ];
        for (roles, allow, want) in cases {
            assert_eq!(
                outcome(application(roles).can_subscribe(*allow)),
                *want,
                "{roles:?} {allow}"
            );
        }
        // The switch never changes delegated outcomes.
        for allow in [false, true] {
            assert_eq!(outcome(delegated(&[READ_ALL]).can_subscribe(allow)), Allow);
            assert_eq!(outcome(delegated(&[READ_WRITE]).can_subscribe(allow)), Forbidden);
        }
    }

    #[test]
    fn several_scopes_combine() {
        let p = delegated(&["User.Read", READ, READ_WRITE]);
        assert_eq!(outcome(p.can(Action::WritePresence, Some(ME))), Allow);
        assert_eq!(outcome(p.can(Action::ReadPresence, Some(OTHER))), Forbidden);
        let p = delegated(&[READ_ALL, READ_WRITE]);
        assert_eq!(outcome(p.can(Action::ReadPresence, Some(OTHER))), Allow);
        // Reading everyone does not make writing others any less an application's job.
        assert_eq!(outcome(p.can(Action::WritePresence, Some(OTHER))), Forbidden);
    }

    #[test]
    fn forbidden_messages_name_the_missing_permission() {
        let Err(Denied::Forbidden(msg)) = delegated(&[READ]).can(Action::ReadPresence, Some(OTHER)) else {
            panic!("expected Forbidden");
        };
        assert!(msg.contains(READ_ALL), "{msg}");
        let Err(Denied::Forbidden(msg)) = application(&[READ_ALL]).can(Action::WritePresence, Some(OTHER)) else {
            panic!("expected Forbidden");
        };
        assert!(msg.contains(READ_WRITE_ALL), "{msg}");
    }
}
