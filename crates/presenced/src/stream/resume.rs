//! Resume tokens: where a stream was, and for which watch set.
//!
//! Form: `<position>~<fingerprint>`, e.g. `1.4711~5f2c0a9e81d4b377`: the change-log position in
//! its own versioned text form (`2.…` on a partitioned log), and 16 hex digits of SHA-256 over the canonical watch set (the
//! tenant and the sorted user ids, or the tenant alone for a tenant-wide stream). A token given
//! with another watch set, or one this server cannot read, resumes nothing: the stream starts
//! over with a snapshot marked as a reset, never with wrong data. The fingerprint is not a
//! secret and proves nothing; the token only says where to resume.
use super::hub::Scope;
use crate::store::Position;
use aws_lc_rs::digest;
use std::fmt::Write;

/// A watch set's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 8]);

impl Fingerprint {
    pub fn of(scope: &Scope) -> Fingerprint {
        let mut ctx = digest::Context::new(&digest::SHA256);
        match scope {
            Scope::Users(keys) => {
                let mut ids: Vec<(&str, &str)> = keys.iter().map(|k| (k.tenant.as_str(), k.user.as_str())).collect();
                ids.sort_unstable();
                ids.dedup();
                ctx.update(b"users\0");
                for (tenant, user) in ids {
                    ctx.update(tenant.as_bytes());
                    ctx.update(b"/");
                    ctx.update(user.as_bytes());
                    ctx.update(b"\0");
                }
            }
            Scope::Tenant(tenant) => {
                ctx.update(b"tenant\0");
                ctx.update(tenant.as_str().as_bytes());
            }
        }
        let mut out = [0u8; 8];
        out.copy_from_slice(&ctx.finish().as_ref()[..8]);
        Fingerprint(out)
    }
}

/// Where to resume: a position, for one watch set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    pub position: Position,
    pub fingerprint: Fingerprint,
}

impl ResumeToken {
    pub fn to_text(&self) -> String {
        let mut out = self.position.to_text();
        out.push('~');
        for b in self.fingerprint.0 {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// `None` for anything this server did not write (including tokens of older forms).
    pub fn parse(text: &str) -> Option<ResumeToken> {
        let (position, fingerprint) = text.trim().split_once('~')?;
        let position = Position::parse(position).ok()?;
        if fingerprint.len() != 16 {
            return None;
        }
        let mut out = [0u8; 8];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(fingerprint.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ResumeToken {
            position,
            fingerprint: Fingerprint(out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{TenantId, UserId, UserKey};

    fn users(ids: &[&str]) -> Scope {
        let tenant = TenantId::parse("t").unwrap();
        Scope::Users(
            ids.iter()
                .map(|u| UserKey::new(tenant.clone(), UserId::parse(u).unwrap()))
                .collect(),
        )
    }

    #[test]
    fn tokens_round_trip_and_fingerprints_ignore_order_but_not_content() {
        let token = ResumeToken {
            position: Position::from_sequence(4711),
            fingerprint: Fingerprint::of(&users(&["b", "a"])),
        };
        assert_eq!(ResumeToken::parse(&token.to_text()), Some(token.clone()));
        assert!(token.to_text().starts_with("1.4711~"));
        assert_eq!(
            Fingerprint::of(&users(&["a", "b"])),
            Fingerprint::of(&users(&["b", "a", "a"]))
        );
        assert_ne!(
            Fingerprint::of(&users(&["a", "b"])),
            Fingerprint::of(&users(&["a", "c"]))
        );
        assert_ne!(
            Fingerprint::of(&users(&["a"])),
            Fingerprint::of(&Scope::Tenant(TenantId::parse("t").unwrap()))
        );
        for bad in [
            "",
            "1.5",
            "1.5~",
            "1.5~xyz",
            "1.5~0123456789abcdeg",
            "2.5~0123456789abcdef",
            "~0123456789abcdef",
        ] {
            assert_eq!(ResumeToken::parse(bad), None, "{bad:?}");
        }
    }
}
