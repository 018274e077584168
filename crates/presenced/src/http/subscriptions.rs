//! `/subscriptions`: Graph change-notification subscriptions for presence resources.
//!
//! A subscription belongs to the tenant and application whose token created it; any other caller
//! gets `404`, so ids of other applications' subscriptions cannot even be probed.
use super::body;
use super::error::ApiError;
use super::presence::{denied, store_error};
use super::routes::ApiVersion;
use super::AppState;
use crate::auth::Principal;
use crate::notify::crypto::EncryptionCertificate;
use crate::notify::filter::parse_resource;
use crate::notify::subscription::{
    Subscription, MAX_CERTIFICATE_ID_CHARS, MAX_CLIENT_STATE_CHARS, MAX_SUBSCRIPTIONS_PER_APP,
};
use crate::store::PresenceStore;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use presence_core::TenantId;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    change_type: Option<String>,
    notification_url: Option<String>,
    lifecycle_notification_url: Option<String>,
    resource: Option<String>,
    expiration_date_time: Option<String>,
    client_state: Option<String>,
    include_resource_data: Option<bool>,
    encryption_certificate: Option<String>,
    encryption_certificate_id: Option<String>,
    latest_supported_tls_version: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateBody {
    expiration_date_time: Option<String>,
    notification_url: Option<String>,
    lifecycle_notification_url: Option<String>,
}

const TLS_VERSIONS: [&str; 4] = ["v1_0", "v1_1", "v1_2", "v1_3"];

fn tenant(principal: &Principal) -> Result<TenantId, ApiError> {
    TenantId::parse(&principal.tenant)
        .map_err(|e| ApiError::unauthorized(format!("The token's tenant is invalid: {e}.")))
}

/// The owning application: subscriptions need a token that names its app (`appid`/`azp`).
fn application(principal: &Principal) -> Result<String, ApiError> {
    principal
        .app
        .clone()
        .ok_or_else(|| ApiError::forbidden("The token names no application (appid or azp claim)."))
}

fn can_subscribe(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    principal.can_subscribe(state.subscriptions.policy.allow_app_tokens).map_err(|d| match d {
        crate::auth::Denied::NeedsUser => ApiError::forbidden(
            "Presence subscriptions need a delegated token with Presence.Read.All (start the server with --subscriptions-allow-app-tokens to allow application tokens).",
        ),
        other => denied(other),
    })
}

async fn owned(state: &AppState, principal: &Principal, id: &str) -> Result<Subscription, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!("The subscription '{id}' does not exist."),
        )
    };
    let subscription = state
        .service
        .store()
        .subscription(id)
        .await
        .map_err(store_error)?
        .ok_or_else(not_found)?;
    let mine =
        subscription.tenant == tenant(principal)? && Some(&subscription.application_id) == principal.app.as_ref();
    if mine {
        Ok(subscription)
    } else {
        Err(not_found())
    }
}

fn url_error(field: &str, e: crate::notify::endpoint::EndpointError) -> ApiError {
    ApiError::bad_request(e.for_field(field).to_string())
}

/// Graph's validation handshake on a URL; a failure fails the request with 400.
async fn validate(state: &AppState, field: &str, raw: &str) -> Result<String, ApiError> {
    let url = state
        .subscriptions
        .endpoints
        .check_url(raw)
        .map_err(|e| url_error(field, e))?;
    state.subscriptions.client.validate(&url).await.map_err(|e| {
        ApiError::bad_request(format!(
            "Subscription validation request failed for {field}: {e}. The endpoint must answer the validation request within 10 seconds with 200 OK, Content-Type text/plain and the decoded validationToken as the body."
        ))
    })?;
    Ok(url.to_string())
}

pub async fn create(
    state: &AppState,
    principal: &Principal,
    version: ApiVersion,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    can_subscribe(state, principal)?;
    let tenant = tenant(principal)?;
    let application_id = application(principal)?;
    let b: CreateBody = body::required(body::json(headers, bytes)?)?;
    let change_type = b
        .change_type
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("changeType is required."))?;
    if !change_type.split(',').all(|c| c.trim().eq_ignore_ascii_case("updated")) {
        return Err(ApiError::bad_request(
            "Presence subscriptions support only changeType 'updated'.",
        ));
    }
    let resource = b
        .resource
        .ok_or_else(|| ApiError::bad_request("resource is required."))?;
    let users = parse_resource(&resource).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = state.clock.now();
    let expiration = state
        .subscriptions
        .policy
        .expiration(b.expiration_date_time.as_deref(), now)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if b.client_state
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_CLIENT_STATE_CHARS)
    {
        return Err(ApiError::bad_request(format!(
            "clientState is longer than {MAX_CLIENT_STATE_CHARS} characters."
        )));
    }
    let tls = b.latest_supported_tls_version.unwrap_or_else(|| "v1_2".to_owned());
    if !TLS_VERSIONS.contains(&tls.as_str()) {
        return Err(ApiError::bad_request(
            "latestSupportedTlsVersion must be one of v1_0, v1_1, v1_2, v1_3.",
        ));
    }
    let include_resource_data = b.include_resource_data.unwrap_or(false);
    if include_resource_data {
        let certificate = b.encryption_certificate.as_deref().ok_or_else(|| {
            ApiError::bad_request("encryptionCertificate is required when includeResourceData is true.")
        })?;
        EncryptionCertificate::parse(certificate)
            .map_err(|e| ApiError::bad_request(format!("Invalid encryptionCertificate: {e}")))?;
        let id = b.encryption_certificate_id.as_deref().unwrap_or("");
        if id.is_empty() || id.chars().count() > MAX_CERTIFICATE_ID_CHARS {
            return Err(ApiError::bad_request(format!(
                "encryptionCertificateId is required with includeResourceData and at most {MAX_CERTIFICATE_ID_CHARS} characters."
            )));
        }
    }
    let notification_url = b
        .notification_url
        .ok_or_else(|| ApiError::bad_request("notificationUrl is required."))?;
    // Static URL checks first, so a bad second URL fails before any handshake is sent.
    let policy = &state.subscriptions.endpoints;
    policy
        .check_url(&notification_url)
        .map_err(|e| url_error("notificationUrl", e))?;
    if let Some(l) = &b.lifecycle_notification_url {
        policy
            .check_url(l)
            .map_err(|e| url_error("lifecycleNotificationUrl", e))?;
    }
    let existing = app_subscriptions(state, &tenant, Some(&application_id)).await?;
    if existing.len() >= MAX_SUBSCRIPTIONS_PER_APP {
        return Err(ApiError::forbidden(format!(
            "This application already has {MAX_SUBSCRIPTIONS_PER_APP} subscriptions in this tenant; delete some first."
        )));
    }
    let notification_url = validate(state, "notificationUrl", &notification_url).await?;
    let lifecycle_notification_url = match &b.lifecycle_notification_url {
        Some(l) => Some(validate(state, "lifecycleNotificationUrl", l).await?),
        None => None,
    };
    let subscription = Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        tenant,
        application_id,
        creator_id: principal.user.clone().filter(|_| principal.is_delegated()),
        resource,
        users,
        notification_url,
        lifecycle_notification_url,
        client_state: b.client_state,
        expiration,
        renewed_at: now,
        include_resource_data,
        encryption_certificate: b.encryption_certificate.filter(|_| include_resource_data),
        encryption_certificate_id: b.encryption_certificate_id.filter(|_| include_resource_data),
        latest_supported_tls_version: Some(tls),
        reauthorization_requested: false,
    };
    save(state, &subscription).await?;
    Ok((StatusCode::CREATED, Json(render(&subscription, Some(version)))).into_response())
}

/// The subscriptions one application owns in one tenant (none for a token without an app id).
async fn app_subscriptions(
    state: &AppState,
    tenant: &TenantId,
    app: Option<&String>,
) -> Result<Vec<Subscription>, ApiError> {
    let all = state
        .service
        .store()
        .subscriptions(Some(tenant))
        .await
        .map_err(store_error)?;
    Ok(all.into_iter().filter(|s| Some(&s.application_id) == app).collect())
}

pub async fn list(state: &AppState, principal: &Principal, version: ApiVersion) -> Result<Response, ApiError> {
    let tenant = tenant(principal)?;
    let mine = app_subscriptions(state, &tenant, principal.app.as_ref()).await?;
    let value: Vec<Value> = mine.iter().map(|s| render(s, None)).collect();
    let context = format!(
        "https://graph.microsoft.com/{}/$metadata#subscriptions",
        version.as_str()
    );
    Ok(Json(json!({ "@odata.context": context, "value": value })).into_response())
}

pub async fn get(state: &AppState, principal: &Principal, version: ApiVersion, id: &str) -> Result<Response, ApiError> {
    let subscription = owned(state, principal, id).await?;
    Ok(Json(render(&subscription, Some(version))).into_response())
}

pub async fn update(
    state: &AppState,
    principal: &Principal,
    version: ApiVersion,
    id: &str,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    let mut subscription = owned(state, principal, id).await?;
    can_subscribe(state, principal)?;
    let b: UpdateBody = body::required(body::json(headers, bytes)?)?;
    if b.lifecycle_notification_url.is_some() {
        return Err(ApiError::bad_request(
            "lifecycleNotificationUrl can only be set when the subscription is created.",
        ));
    }
    if b.expiration_date_time.is_none() && b.notification_url.is_none() {
        return Err(ApiError::bad_request(
            "Give expirationDateTime and/or notificationUrl to update.",
        ));
    }
    let now = state.clock.now();
    if let Some(raw) = b.expiration_date_time.as_deref() {
        subscription.expiration = state
            .subscriptions
            .policy
            .expiration(Some(raw), now)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        subscription.renewed_at = now;
        subscription.reauthorization_requested = false;
    }
    if let Some(url) = b.notification_url.as_deref() {
        subscription.notification_url = validate(state, "notificationUrl", url).await?;
    }
    save(state, &subscription).await?;
    Ok(Json(render(&subscription, Some(version))).into_response())
}

pub async fn delete(state: &AppState, principal: &Principal, id: &str) -> Result<Response, ApiError> {
    owned(state, principal, id).await?;
    state
        .service
        .store()
        .delete_subscription(id)
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn reauthorize(state: &AppState, principal: &Principal, id: &str) -> Result<Response, ApiError> {
    let mut subscription = owned(state, principal, id).await?;
    can_subscribe(state, principal)?;
    subscription.reauthorization_requested = false;
    subscription.renewed_at = state.clock.now();
    state
        .service
        .store()
        .put_subscription(subscription)
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Store a created or changed subscription durably.
async fn save(state: &AppState, subscription: &Subscription) -> Result<(), ApiError> {
    state
        .service
        .store()
        .put_subscription(subscription.clone())
        .await
        .map_err(store_error)
}

/// The subscription resource as Graph returns it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionDto {
    #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
    odata_context: Option<String>,
    id: String,
    resource: String,
    application_id: String,
    change_type: &'static str,
    client_state: Option<String>,
    notification_url: String,
    notification_query_options: Option<String>,
    lifecycle_notification_url: Option<String>,
    expiration_date_time: String,
    creator_id: Option<String>,
    include_resource_data: bool,
    latest_supported_tls_version: Option<String>,
    encryption_certificate: Option<String>,
    encryption_certificate_id: Option<String>,
    notification_url_app_id: Option<String>,
    notification_content_type: &'static str,
}

fn render(s: &Subscription, context_version: Option<ApiVersion>) -> Value {
    let dto = SubscriptionDto {
        odata_context: context_version.map(|v| {
            format!(
                "https://graph.microsoft.com/{}/$metadata#subscriptions/$entity",
                v.as_str()
            )
        }),
        id: s.id.clone(),
        resource: s.resource.clone(),
        application_id: s.application_id.clone(),
        change_type: "updated",
        client_state: s.client_state.clone(),
        notification_url: s.notification_url.clone(),
        notification_query_options: None,
        lifecycle_notification_url: s.lifecycle_notification_url.clone(),
        expiration_date_time: s.expiration.to_string(),
        creator_id: s.creator_id.clone(),
        include_resource_data: s.include_resource_data,
        latest_supported_tls_version: s.latest_supported_tls_version.clone(),
        encryption_certificate: s.encryption_certificate.clone(),
        encryption_certificate_id: s.encryption_certificate_id.clone(),
        notification_url_app_id: None,
        notification_content_type: "application/json",
    };
    serde_json::to_value(dto).unwrap_or(Value::Null)
}
