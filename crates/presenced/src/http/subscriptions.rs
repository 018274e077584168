//! `/subscriptions`: Graph change-notification subscriptions for presence resources.
//!
//! Each handler checks that the caller may subscribe at all (every operation needs the
//! permission), turns the request into the subscription service's inputs (checking the fields'
//! form) and renders its answer; the rules (ownership, limits, handshake, lifecycle) are the
//! service's (`service::subscriptions`).
use super::body;
use super::error::ApiError;
use super::presence::{denied, store_error};
use super::routes::ApiVersion;
use super::AppState;
use crate::auth::Principal;
use crate::notify::crypto::EncryptionCertificate;
use crate::service::subscriptions::{NewSubscription, SubscriptionChange};
use crate::service::{Owner, SubscriptionError};
use crate::subscription::filter::parse_resource;
use crate::subscription::{Subscription, MAX_CERTIFICATE_ID_CHARS, MAX_CLIENT_STATE_CHARS};
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

/// The caller as a subscription owner: subscriptions need a token that names its application.
fn owner(principal: &Principal) -> Result<Owner, ApiError> {
    let application_id = principal
        .app
        .clone()
        .ok_or_else(|| ApiError::forbidden("The token names no application (appid or azp claim)."))?;
    Ok(Owner {
        tenant: tenant(principal)?,
        application_id,
        user: principal.user.clone().filter(|_| principal.is_delegated()),
    })
}

fn can_subscribe(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let allow_app_tokens = state.subscriptions.policy().allow_app_tokens;
    principal.can_subscribe(allow_app_tokens).map_err(|d| match d {
        crate::auth::Denied::NeedsUser => ApiError::forbidden(
            "Presence subscriptions need a delegated token with Presence.Read.All (start the server with --subscriptions-allow-app-tokens to allow application tokens).",
        ),
        other => denied(other),
    })
}

fn subscription_error(e: SubscriptionError) -> ApiError {
    match e {
        SubscriptionError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFound", e.to_string()),
        SubscriptionError::LimitReached(_) => ApiError::forbidden(e.to_string()),
        SubscriptionError::Expiration(_) | SubscriptionError::Handshake(_) => ApiError::bad_request(e.to_string()),
        SubscriptionError::Url(field, reason) => ApiError::bad_request(reason.for_field(field).to_string()),
        SubscriptionError::Busy => ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
        SubscriptionError::Store(e) => store_error(e),
    }
}

pub async fn create(
    state: &AppState,
    principal: &Principal,
    version: ApiVersion,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    can_subscribe(state, principal)?;
    let owner = owner(principal)?;
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
    if b.expiration_date_time.is_none() {
        return Err(ApiError::bad_request("expirationDateTime is required"));
    }
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
    let request = NewSubscription {
        resource,
        users,
        notification_url,
        lifecycle_notification_url: b.lifecycle_notification_url,
        expiration: b.expiration_date_time,
        client_state: b.client_state,
        include_resource_data,
        encryption_certificate: b.encryption_certificate,
        encryption_certificate_id: b.encryption_certificate_id,
        latest_supported_tls_version: tls,
    };
    let subscription = state
        .subscriptions
        .create(&owner, request)
        .await
        .map_err(subscription_error)?;
    Ok((StatusCode::CREATED, Json(render(&subscription, Some(version)))).into_response())
}

/// The caller's subscriptions, a page at a time: `@odata.nextLink` carries a `$skiptoken` (the
/// last id of the page) while more follow, as Graph pages collections.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    version: ApiVersion,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    can_subscribe(state, principal)?;
    let owner = owner(principal)?;
    let after = skip_token(query)?;
    let (page, more) = state
        .subscriptions
        .list(&owner, after.as_deref())
        .await
        .map_err(subscription_error)?;
    let value: Vec<Value> = page.iter().map(|s| render(s, None)).collect();
    let context = format!(
        "{}/{}/$metadata#subscriptions",
        super::base_url::current(),
        version.as_str()
    );
    let mut body = json!({ "@odata.context": context, "value": value });
    if let (true, Some(last)) = (more, page.last()) {
        let token: String =
            percent_encoding::utf8_percent_encode(&last.id, percent_encoding::NON_ALPHANUMERIC).collect();
        body["@odata.nextLink"] = Value::String(format!(
            "{}/{}/subscriptions?$skiptoken={token}",
            super::base_url::current(),
            version.as_str()
        ));
    }
    Ok(Json(body).into_response())
}

/// The `$skiptoken` of a list request, if any; other query options are refused.
fn skip_token(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let mut token = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        if name.eq_ignore_ascii_case("$skiptoken") {
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            if value.is_empty() || value.len() > 128 {
                return Err(ApiError::bad_request("$skiptoken is not one this server issued."));
            }
            token = Some(value.into_owned());
        } else {
            return Err(ApiError::bad_request(format!(
                "The query option '{name}' is not supported on /subscriptions."
            )));
        }
    }
    Ok(token)
}

pub async fn get(state: &AppState, principal: &Principal, version: ApiVersion, id: &str) -> Result<Response, ApiError> {
    can_subscribe(state, principal)?;
    let subscription = state
        .subscriptions
        .get(&owner(principal)?, id)
        .await
        .map_err(subscription_error)?;
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
    can_subscribe(state, principal)?;
    let owner = owner(principal)?;
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
    let change = SubscriptionChange {
        expiration: b.expiration_date_time,
        notification_url: b.notification_url,
    };
    let subscription = state
        .subscriptions
        .update(&owner, id, change)
        .await
        .map_err(subscription_error)?;
    Ok(Json(render(&subscription, Some(version))).into_response())
}

pub async fn delete(state: &AppState, principal: &Principal, id: &str) -> Result<Response, ApiError> {
    can_subscribe(state, principal)?;
    state
        .subscriptions
        .delete(&owner(principal)?, id)
        .await
        .map_err(subscription_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn reauthorize(state: &AppState, principal: &Principal, id: &str) -> Result<Response, ApiError> {
    can_subscribe(state, principal)?;
    let owner = owner(principal)?;
    state
        .subscriptions
        .reauthorize(&owner, id)
        .await
        .map_err(subscription_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
                "{}/{}/$metadata#subscriptions/$entity",
                super::base_url::current(),
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
        expiration_date_time: crate::graph_time::format(s.expiration),
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
