//! Graph's notification payloads (`changeNotificationCollection` items), basic, rich and lifecycle.
use super::crypto::{self, EncryptionCertificate};
use crate::store::LifecycleEvent;
use crate::subscription::Subscription;
use jiff::Timestamp;
use presence_core::{Activity, Availability, SequenceNumber, TenantId, UserId};
use serde_json::{json, Value};

/// Graph writes 7 fractional digits; any RFC 3339 parser reads ours.
fn timestamp(t: Timestamp) -> String {
    crate::graph_time::format(t)
}

/// The presence a change notification reports.
pub struct ChangedPresence<'a> {
    pub user: &'a UserId,
    pub availability: Availability,
    pub activity: Activity,
    pub sequence: SequenceNumber,
}

/// One change notification. Resource data travels encrypted (rich notifications) because Graph
/// requires presence data to be; the basic form carries only the id and, as a presenced
/// extension, the `sequenceNumber` so receivers can drop duplicates without a read.
pub fn change_item(
    item_id: &str,
    subscription: &Subscription,
    presence: &ChangedPresence<'_>,
    certificate: Option<&EncryptionCertificate>,
) -> Result<Value, crypto::CryptoError> {
    let user = presence.user;
    let resource_data = json!({
        "@odata.id": format!("users/{user}/presence"),
        "@odata.type": "#microsoft.graph.presence",
        "id": user.as_str(),
        "sequenceNumber": presence.sequence.to_string(),
    });
    let mut item = json!({
        "id": item_id,
        "subscriptionId": subscription.id,
        "clientState": subscription.client_state,
        "changeType": "updated",
        "tenantId": subscription.tenant.as_str(),
        "organizationId": subscription.tenant.as_str(),
        "resource": format!("communications/presences/{user}"),
        "subscriptionExpirationDateTime": timestamp(subscription.expiration),
        "resourceData": resource_data,
    });
    if let (true, Some(certificate), Some(id)) = (
        subscription.include_resource_data,
        certificate,
        subscription.encryption_certificate_id.as_deref(),
    ) {
        let data = json!({
            "@odata.id": format!("users/{user}/presence"),
            "@odata.type": "#microsoft.graph.presence",
            "id": user.as_str(),
            "availability": presence.availability.as_str(),
            "activity": presence.activity.as_str(),
            "sequenceNumber": presence.sequence.to_string(),
        });
        let encrypted = crypto::encrypt(certificate, id, data.to_string().as_bytes())?;
        item["encryptedContent"] = serde_json::to_value(encrypted).unwrap_or(Value::Null);
    }
    Ok(item)
}

pub fn lifecycle_item(
    subscription_id: &str,
    event: LifecycleEvent,
    tenant: &TenantId,
    client_state: Option<&str>,
    expiration: Timestamp,
) -> Value {
    json!({
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": timestamp(expiration),
        "tenantId": tenant.as_str(),
        "organizationId": tenant.as_str(),
        "clientState": client_state,
        "lifecycleEvent": event.as_str(),
    })
}

/// The POST body: one collection, possibly several items when they queued up.
pub fn collection(items: Vec<Value>) -> Value {
    json!({ "value": items })
}

/// [`collection`] with Graph's `validationTokens` (one per application and tenant among the
/// items that carry resource data), when there are any.
pub fn collection_with_tokens(items: Vec<Value>, tokens: Vec<String>) -> Value {
    if tokens.is_empty() {
        return collection(items);
    }
    json!({ "validationTokens": tokens, "value": items })
}
