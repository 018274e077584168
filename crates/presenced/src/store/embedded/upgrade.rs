//! Reading records that older builds wrote, for the start-up upgrade of their files.
use crate::store::{LifecycleEvent, LifecycleNotice, NewLifecycle};
use jiff::Timestamp;
use presence_core::TenantId;
use serde::Deserialize;

/// A schema-2 delivery record: one notification owed, change or lifecycle.
#[derive(Deserialize)]
struct Delivery {
    url: String,
    subscription_id: String,
    created_at: Timestamp,
    kind: Kind,
}

#[derive(Deserialize)]
enum Kind {
    Change(serde::de::IgnoredAny),
    Lifecycle {
        event: LifecycleEvent,
        tenant: TenantId,
        client_state: Option<String>,
        subscription_expiration: Timestamp,
    },
}

/// The lifecycle notice a schema-2 delivery record becomes (encoded), or `None` for a change
/// notification (those are re-derived from the change log) or a record that does not decode.
pub fn legacy_lifecycle_notice(id: u64, bytes: &[u8]) -> Option<Vec<u8>> {
    let old: Delivery = serde_json::from_slice(bytes).ok()?;
    let Kind::Lifecycle {
        event,
        tenant,
        client_state,
        subscription_expiration,
    } = old.kind
    else {
        return None;
    };
    let notice = LifecycleNotice {
        id,
        notice: NewLifecycle {
            subscription_id: old.subscription_id,
            url: old.url,
            event,
            tenant,
            client_state,
            subscription_expiration,
            created_at: old.created_at,
        },
    };
    serde_json::to_vec(&notice).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_deliveries_become_notices_and_change_deliveries_go() {
        let lifecycle = br#"{"id":7,"url":"https://h/l","subscription_id":"s1","created_at":"2026-11-27T09:00:00Z","kind":{"Lifecycle":{"event":"SubscriptionRemoved","tenant":"t","client_state":"cs","subscription_expiration":"2026-11-27T10:00:00Z"}}}"#;
        let notice: LifecycleNotice = serde_json::from_slice(&legacy_lifecycle_notice(7, lifecycle).unwrap()).unwrap();
        assert_eq!(notice.id, 7);
        assert_eq!(notice.notice.subscription_id, "s1");
        assert_eq!(notice.notice.event, LifecycleEvent::SubscriptionRemoved);
        assert_eq!(notice.notice.client_state.as_deref(), Some("cs"));
        let change = br#"{"id":8,"url":"https://h/n","subscription_id":"s1","created_at":"2026-11-27T09:00:00Z","kind":{"Change":{"user":"u","availability":"Busy","activity":"InACall","sequence":5}}}"#;
        assert_eq!(legacy_lifecycle_notice(8, change), None);
        assert_eq!(legacy_lifecycle_notice(9, b"not json"), None);
    }
}
