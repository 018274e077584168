//! The OpenAPI document of the whole API, built from the same types the handlers (de)serialise.
//!
//! Request and response schemas come from the DTOs via `schemars`, and every operation names the
//! route it must reach; `tests::every_documented_operation_reaches_its_route` checks that against
//! the real router, and `tests::committed_document_is_current` keeps `docs/openapi.json` in step
//! (regenerate with `presenced openapi > docs/openapi.json`).
use super::batch::BatchBody;
use super::dto::{
    ClearPresenceBody, GetPresencesBody, PresenceDto, SetOutOfOfficeBody, SetPreferredBody, SetPresenceBody,
    SetStatusMessageBody,
};
use super::error::ErrorBody;
use super::explain::ExplanationDto;
use super::stream::WatchRequest;
use super::subscriptions::{CreateBody, SubscriptionDto, UpdateBody};
use super::work_location::SetLocationBody;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{json, Map, Value};

type SchemaFn = fn(&mut SchemaGenerator) -> schemars::Schema;

/// One documented operation.
struct Operation {
    method: &'static str,
    /// Relative to the versioned base (`/v1.0` or `/beta`), unless `root` is set.
    path: &'static str,
    /// The name `routes::route_name` gives the request: ties the document to the router.
    route: &'static str,
    summary: &'static str,
    request: Option<SchemaFn>,
    /// (status, description, body schema)
    success: (u16, &'static str, Option<SchemaFn>),
    root: bool,
}

fn schema<T: schemars::JsonSchema>(g: &mut SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

fn presence_list(g: &mut SchemaGenerator) -> schemars::Schema {
    let item = g.subschema_for::<PresenceDto>();
    schemars::json_schema!({ "type": "object", "properties": { "value": { "type": "array", "items": item } } })
}

fn subscription_list(g: &mut SchemaGenerator) -> schemars::Schema {
    let item = g.subschema_for::<SubscriptionDto>();
    schemars::json_schema!({ "type": "object", "properties": { "value": { "type": "array", "items": item } } })
}

const PREFIXES: [(&str, &str); 3] = [
    ("/me/presence", "me"),
    ("/users/{id}/presence", "user"),
    ("/communications/presences/{id}", "presence"),
];

const ACTIONS: [(&str, &str, Option<SchemaFn>); 10] = [
    (
        "setPresence",
        "Create or keep alive the caller's presence session",
        Some(schema::<SetPresenceBody>),
    ),
    (
        "clearPresence",
        "Remove a presence session (404 if it does not exist)",
        Some(schema::<ClearPresenceBody>),
    ),
    (
        "setUserPreferredPresence",
        "Set the user's preferred presence",
        Some(schema::<SetPreferredBody>),
    ),
    (
        "clearUserPreferredPresence",
        "Clear the user's preferred presence (no body, or {})",
        None,
    ),
    (
        "setStatusMessage",
        "Set or clear (empty content) the status message",
        Some(schema::<SetStatusMessageBody>),
    ),
    (
        "setOutOfOfficeSettings",
        "presenced extension: set out-of-office settings",
        Some(schema::<SetOutOfOfficeBody>),
    ),
    (
        "setManualLocation",
        "Set the signed-in user's manual work location until midnight (Prefer: outlook.timezone, else the server's zone)",
        Some(schema::<SetLocationBody>),
    ),
    (
        "setAutomaticLocation",
        "Set the signed-in user's automatic work location until midnight (hidden by a manual one)",
        Some(schema::<SetLocationBody>),
    ),
    (
        "clearAutomaticLocation",
        "Clear the automatic work location (no body)",
        None,
    ),
    (
        "clearLocation",
        "Clear the manual and automatic work locations (no body)",
        None,
    ),
];

fn operations() -> Vec<Operation> {
    let mut ops = Vec::new();
    for (prefix, _) in PREFIXES {
        ops.push(Operation {
            method: "get",
            path: prefix,
            route: "get_presence",
            summary: "Get a user's presence",
            request: None,
            success: (200, "The presence", Some(schema::<PresenceDto>)),
            root: false,
        });
    }
    for (prefix, _) in PREFIXES {
        ops.push(Operation {
            method: "get",
            path: leak(format!("{prefix}/explain")),
            route: "explain",
            summary: "presenced extension: why the user shows what they show (every live session, the preference, the deciding rule); read permission as for the presence",
            request: None,
            success: (200, "The explanation", Some(schema::<ExplanationDto>)),
            root: false,
        });
    }
    for (prefix, _) in PREFIXES {
        for (action, summary, request) in ACTIONS {
            ops.push(Operation {
                method: "post",
                path: leak(format!("{prefix}/{action}")),
                route: action,
                summary,
                request,
                success: (200, "Done (empty body); the change is durable", None),
                root: false,
            });
        }
    }
    let subscription = |method, path, route, summary, request, success| Operation {
        method,
        path,
        route,
        summary,
        request,
        success,
        root: false,
    };
    ops.extend([
        Operation {
            method: "post",
            path: "/communications/getPresencesByUserId",
            route: "getPresencesByUserId",
            summary: "Get the presence of 1 to 650 users, in request order",
            request: Some(schema::<GetPresencesBody>),
            success: (200, "The presences", Some(presence_list)),
            root: false,
        },
        Operation {
            method: "post",
            path: "/communications/presences/$stream",
            route: "stream",
            summary: "presenced extension: a watch stream (Server-Sent Events) of up to 650 users ({\"ids\":[...]}) or a tenant ({\"scope\":\"tenant\"}): a snapshot, then every change; resume with Last-Event-ID (docs/streams.md)",
            request: Some(schema::<WatchRequest>),
            success: (200, "text/event-stream: snapshot, presence and end events", None),
            root: false,
        },
        Operation {
            method: "get",
            path: "/communications/presences/$stream",
            route: "stream",
            summary: "presenced extension: the same stream with ?ids=a,b or ?scope=tenant; with Upgrade: websocket, the first message names the users (and may carry the token) (docs/streams.md)",
            request: None,
            success: (200, "text/event-stream, or 101 Switching Protocols for a WebSocket", None),
            root: false,
        },
        Operation {
            method: "get",
            path: "/me/presence/$session",
            route: "client_session",
            summary: "presenced extension: a connection-bound client session over WebSocket (hello, set, activity, bye; the session ends a grace after the socket) (docs/client-sessions.md)",
            request: None,
            success: (101, "Switching Protocols: the WebSocket", None),
            root: false,
        },
        Operation {
            method: "post",
            path: "/$batch",
            route: "batch",
            summary: "JSON batching: 1 to 20 requests, each authorised and rate-limited as if sent alone",
            request: Some(schema::<BatchBody>),
            success: (200, "One response per request: id, status, headers, body", None),
            root: false,
        },
        subscription(
            "post",
            "/subscriptions",
            "subscriptions",
            "Create a presence subscription (runs the validation handshake)",
            Some(schema::<CreateBody> as SchemaFn),
            (201, "The subscription", Some(schema::<SubscriptionDto> as SchemaFn)),
        ),
        subscription(
            "get",
            "/subscriptions",
            "subscriptions",
            "List the caller application's subscriptions",
            None,
            (200, "The subscriptions", Some(subscription_list)),
        ),
        subscription(
            "get",
            "/subscriptions/{subscription-id}",
            "subscription",
            "Get a subscription",
            None,
            (200, "The subscription", Some(schema::<SubscriptionDto>)),
        ),
        subscription(
            "patch",
            "/subscriptions/{subscription-id}",
            "subscription",
            "Renew (expirationDateTime) or move (notificationUrl) a subscription",
            Some(schema::<UpdateBody>),
            (200, "The subscription", Some(schema::<SubscriptionDto>)),
        ),
        subscription(
            "delete",
            "/subscriptions/{subscription-id}",
            "subscription",
            "Delete a subscription",
            None,
            (204, "Deleted", None),
        ),
        subscription(
            "post",
            "/subscriptions/{subscription-id}/reauthorize",
            "reauthorize",
            "Reauthorize a subscription",
            None,
            (204, "Reauthorized", None),
        ),
    ]);
    for (path, route, summary) in [
        ("/healthz", "healthz", "Liveness (no authentication)"),
        (
            "/readyz",
            "readyz",
            "Readiness: the store accepts writes (no authentication)",
        ),
        (
            "/metrics",
            "metrics",
            "Prometheus metrics (no authentication; no ids as labels)",
        ),
        ("/openapi.json", "openapi", "This document (no authentication)"),
        (
            "/common/discovery/v2.0/keys",
            "validation_keys",
            "JWKS of the rich-notification validationTokens (no authentication; also /{tenant}/discovery/keys and /v2.0/)",
        ),
        (
            "/common/.well-known/openid-configuration",
            "openid_configuration",
            "OpenID metadata naming the validationTokens' jwks_uri and issuer (no authentication; also per tenant and /v2.0/)",
        ),
    ] {
        ops.push(Operation {
            method: "get",
            path,
            route,
            summary,
            request: None,
            success: (200, "OK", None),
            root: true,
        });
    }
    ops
}

/// Paths built at start-up live for the process; the document is built a handful of times.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Unique per (method, path), as OpenAPI requires: `post_users_id_presence_setPresence`.
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    format!("{method}_{}", words.join("_"))
}

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let error = generator.subschema_for::<ErrorBody>().to_value();
    let mut paths = Map::new();
    for op in operations() {
        let mut operation = json!({
            "operationId": operation_id(op.method, op.path),
            "summary": op.summary,
            // The metrics `route` label of this operation, so dashboards can be read against the API.
            "x-presenced-route": op.route,
            "responses": {},
        });
        if !op.root {
            operation["security"] = json!([{ "bearer": [] }]);
        }
        let mut params = Vec::new();
        if op.path.contains("{id}") {
            params.push(json!({ "name": "id", "in": "path", "required": true, "description": "User id (GUID or UPN; 1-128 of [A-Za-z0-9._@-])", "schema": { "type": "string" } }));
        }
        if op.path.contains("{subscription-id}") {
            params.push(
                json!({ "name": "subscription-id", "in": "path", "required": true, "schema": { "type": "string" } }),
            );
        }
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        if let Some(request) = op.request {
            let body = request(&mut generator).to_value();
            operation["requestBody"] =
                json!({ "required": true, "content": { "application/json": { "schema": body } } });
        }
        let (status, description, body) = op.success;
        let mut success = json!({ "description": description });
        if let Some(body) = body {
            success["content"] = json!({ "application/json": { "schema": body(&mut generator).to_value() } });
        }
        operation["responses"][status.to_string()] = success;
        if !op.root {
            operation["responses"]["default"] = json!({
                "description": "A Graph error (4xx for the caller's mistakes, 429 when throttled, 503 when the store is unavailable)",
                "content": { "application/json": { "schema": error.clone() } },
            });
        }
        let path = if op.root {
            op.path.to_owned()
        } else {
            format!("/{{version}}{}", op.path)
        };
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[op.method] = operation;
        if !op.root {
            entry["parameters"] = json!([{ "name": "version", "in": "path", "required": true, "schema": { "type": "string", "enum": ["v1.0", "beta"] } }]);
        }
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "presenced",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A Microsoft Graph-compatible presence server. Paths under /{version} are Graph's (v1.0 or beta).",
        },
        "servers": [{ "url": "http://127.0.0.1:8080" }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
        },
    })
}

/// Pretty JSON with a trailing newline, exactly as committed in `docs/openapi.json`.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::routes::{route_name, PresenceAction};
    use axum::http::Method;

    #[test]
    fn every_documented_operation_reaches_its_route() {
        for op in operations() {
            let concrete = op.path.replace("{id}", "u1").replace("{subscription-id}", "abc-123");
            let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
            let targets: Vec<String> = if op.root {
                vec![concrete]
            } else {
                ["/v1.0", "/beta"].iter().map(|v| format!("{v}{concrete}")).collect()
            };
            for target in targets {
                assert_eq!(route_name(&method, &target), op.route, "{} {target}", op.method);
            }
        }
    }

    #[test]
    fn every_route_is_documented() {
        let documented: Vec<&str> = operations().iter().map(|o| o.route).collect();
        let mut routes = vec![
            "get_presence",
            "getPresencesByUserId",
            "subscriptions",
            "subscription",
            "reauthorize",
            "batch",
            "explain",
            "stream",
            "client_session",
        ];
        routes.extend(PresenceAction::all().iter().map(|a| a.name()));
        for route in routes {
            assert!(
                documented.contains(&route),
                "route {route} is missing from the OpenAPI document"
            );
        }
        for prefix in PREFIXES {
            for action in PresenceAction::all() {
                let path = format!("{}/{}", prefix.0, action.name());
                assert!(operations().iter().any(|o| o.path == path), "{path} is not documented");
            }
        }
    }

    #[test]
    fn committed_document_is_current() {
        let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json"))
            .unwrap_or_default();
        assert!(
            committed == document_text(),
            "docs/openapi.json is out of date: regenerate it with `cargo run -p presenced -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn request_schemas_name_the_wire_fields() {
        let doc = document();
        let set = &doc["components"]["schemas"]["SetPresenceBody"]["properties"];
        for field in ["sessionId", "availability", "activity", "expirationDuration"] {
            assert!(set.get(field).is_some(), "SetPresenceBody lacks {field}: {set}");
        }
        let sub = &doc["components"]["schemas"]["CreateBody"]["properties"];
        for field in [
            "changeType",
            "notificationUrl",
            "resource",
            "expirationDateTime",
            "clientState",
            "encryptionCertificate",
        ] {
            assert!(sub.get(field).is_some(), "CreateBody lacks {field}");
        }
    }
}
