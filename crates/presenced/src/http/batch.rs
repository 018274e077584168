//! JSON batching: `POST /v1.0/$batch` and `/beta/$batch`, up to 20 requests in one, as Graph
//! documents it (`{"requests":[{"id","method","url","headers"?,"body"?,"dependsOn"?}]}`, answered
//! `{"responses":[{"id","status","headers","body"?}]}`).
//!
//! Each step is served by [`request_context::step`](super::request_context::step), the same path a
//! request of its own takes: routing, the outer request's `Authorization` (as Graph applies it to
//! every step), permission checks, the rate limit, metrics, a request id and Graph's error body.
//! A step never reaches the fixed routes, and a `$batch` inside a batch is refused.
//!
//! What the SDKs send, all accepted:
//! - step URLs relative to the version (`/users/…`, `users/…`), with the version (`/v1.0/users/…`,
//!   the JavaScript graph-client), or absolute (`http://host/v1.0/users/…`, Python's msgraph-core
//!   unless `set_url` is called; the authority is ignored, the step is always served here);
//! - bodies as a JSON value, or base64 text (Kiota's helpers; JavaScript's sends no
//!   `Content-Type` with it): a body without a content type is read as JSON when it is one;
//! - `dependsOn`, and `depends_on` as Python's msgraph-core spells it.
//!
//! Steps run one after another, dependencies first and otherwise in the order given; a step
//! whose dependency did not succeed (a non-2xx status) is not run and answers `424`.
use super::body;
use super::error::ApiError;
use super::request_context;
use super::routes::ApiVersion;
use super::AppState;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use http_body_util::BodyExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;

/// Graph's documented limit.
pub const MAX_REQUESTS: usize = 20;
/// A batch's whole body: twenty steps of the largest single body (a 650-id bulk read is ~90 KB,
/// base64 makes it ~120 KB) fit with room to spare; more is refused before it is read.
pub const MAX_BATCH_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Step ids are the caller's correlation values (Kiota uses GUIDs); long ones are not ids.
const MAX_ID_CHARS: usize = 128;
/// HTTP methods are short words; a long one is no method this server has.
const MAX_METHOD_CHARS: usize = 16;
/// A step URL names a presence path and a short query.
const MAX_URL_CHARS: usize = 2048;
/// Per step; a request of its own is held to far fewer by the HTTP server anyway.
const MAX_STEP_HEADERS: usize = 32;

/// The batch body, as read before it is checked. Every field optional, so that a missing one
/// gets a message naming it rather than serde's.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct BatchBody {
    pub requests: Option<Vec<StepBody>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepBody {
    pub id: Option<String>,
    pub method: Option<String>,
    pub url: Option<String>,
    pub headers: Option<Map<String, Value>>,
    /// A JSON value, or base64 text.
    pub body: Option<Value>,
    #[serde(alias = "depends_on")]
    pub depends_on: Option<Vec<String>>,
}

/// One step, checked: what `request_context::step` is handed, less the body.
struct Step {
    id: String,
    method: Method,
    /// `/{version}/…?…`, ready to route.
    path_and_query: String,
    headers: HeaderMap,
    body: StepPayload,
    depends_on: Vec<usize>,
}

enum StepPayload {
    None,
    Bytes(Bytes),
    /// Decoded fine as a batch but is no request of its own (bad base64): answered without running.
    Refused(ApiError),
}

/// The `$batch` handler. Boxed behind `dyn` rather than `async fn`: a step is served by the
/// request path this handler is itself on, and the explicit type keeps that cycle out of the
/// futures' types.
pub fn handle<'a>(
    state: &'a AppState,
    version: ApiVersion,
    outer: &'a HeaderMap,
    body: Body,
) -> Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send + 'a>> {
    Box::pin(async move {
        let bytes = body::read_at_most(outer, body, MAX_BATCH_BODY_BYTES).await?;
        // Read as a JSON value first: that checks the whole document (text, numbers, nesting),
        // including members the batch does not use, before any step runs. Then as the batch,
        // which also refuses a member given twice (a value keeps the last one silently).
        let _: Value = body::required(body::json(outer, &bytes)?)?;
        let batch: BatchBody = body::required(body::json(outer, &bytes)?)?;
        let steps = parse(version, batch)?;
        let order = order(&steps)?;
        let mut answers: Vec<Option<Answer>> = (0..steps.len()).map(|_| None).collect();
        for index in order {
            let step = &steps[index];
            let failed_dependency = step
                .depends_on
                .iter()
                .find(|&&d| answers[d].as_ref().is_none_or(|a| !a.status.is_success()));
            let answer = match (failed_dependency, &step.body) {
                (Some(&d), _) => Answer::error(
                    &ApiError::new(
                        StatusCode::FAILED_DEPENDENCY,
                        "FailedDependency",
                        format!("The request it depends on ('{}') did not succeed.", steps[d].id),
                    ),
                    &step.id,
                ),
                (None, StepPayload::Refused(e)) => Answer::error(e, &step.id),
                (None, payload) => {
                    let request = request(step, payload, outer)?;
                    // Boxed: see `handle`.
                    let served: Pin<Box<dyn Future<Output = Response> + Send + '_>> =
                        Box::pin(request_context::step(state, request));
                    Answer::from_response(&step.id, served.await).await
                }
            };
            answers[index] = Some(answer);
        }
        let responses: Vec<Value> = answers.into_iter().flatten().map(Answer::into_json).collect();
        let document = serde_json::json!({ "responses": responses });
        Ok(super::json_response(StatusCode::OK, &document, 4096))
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// Check the batch as a whole: counts, ids, methods, URLs, headers, dependencies.
fn parse(version: ApiVersion, batch: BatchBody) -> Result<Vec<Step>, ApiError> {
    let requests = batch
        .requests
        .ok_or_else(|| invalid("The batch has no 'requests' array."))?;
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(invalid(format!(
            "A batch holds 1 to {MAX_REQUESTS} requests (got {}).",
            requests.len()
        )));
    }
    let mut ids: Vec<String> = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let id =
            r.id.as_deref()
                .filter(|id| !id.trim().is_empty())
                .ok_or_else(|| invalid(format!("Request {i} of the batch has no id.")))?;
        if id.chars().count() > MAX_ID_CHARS || id.chars().any(char::is_control) {
            return Err(invalid(format!(
                "Request {i} of the batch has an id that is not 1 to {MAX_ID_CHARS} printable characters."
            )));
        }
        // Graph: ids are case-insensitive and must be unique within the batch.
        if ids.iter().any(|seen| seen.eq_ignore_ascii_case(id)) {
            return Err(invalid(format!(
                "The batch has more than one request with the id '{id}'."
            )));
        }
        ids.push(id.to_owned());
    }
    let index_of = |id: &str| ids.iter().position(|seen| seen.eq_ignore_ascii_case(id));
    let mut steps = Vec::with_capacity(requests.len());
    for (r, id) in requests.into_iter().zip(&ids) {
        let context = |what: &str| format!("Request '{id}' of the batch {what}");
        let method = r.method.as_deref().ok_or_else(|| invalid(context("has no method.")))?;
        let method = Some(method)
            .filter(|m| m.len() <= MAX_METHOD_CHARS)
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .ok_or_else(|| invalid(context("has a method that is not an HTTP method.")))?;
        let url = r.url.as_deref().ok_or_else(|| invalid(context("has no url.")))?;
        let path_and_query = path_and_query(version, url).map_err(|why| invalid(context(&why)))?;
        let headers = headers(r.headers.unwrap_or_default()).map_err(|why| invalid(context(&why)))?;
        let depends_on = r
            .depends_on
            .unwrap_or_default()
            .iter()
            .map(|d| {
                index_of(d).ok_or_else(|| invalid(context(&format!("depends on '{d}', which is not in the batch."))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let body = payload(r.body);
        steps.push(Step {
            id: id.clone(),
            method,
            path_and_query,
            headers,
            body,
            depends_on,
        });
    }
    Ok(steps)
}

/// The step's URL as a path under a version, with its query. Nested batches are refused.
fn path_and_query(version: ApiVersion, url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.is_empty() || url.chars().count() > MAX_URL_CHARS || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "has a url that is not 1 to {MAX_URL_CHARS} characters without spaces."
        ));
    }
    // Absolute: keep what follows the authority.
    let lower = url.to_ascii_lowercase();
    let relative = match ["https://", "http://"].iter().find(|s| lower.starts_with(*s)) {
        Some(scheme) => {
            let rest = &url[scheme.len()..];
            rest.find('/').map_or("/", |at| &rest[at..])
        }
        None => url,
    };
    let relative = relative.strip_prefix('/').unwrap_or(relative);
    let (path, query) = relative.split_once('?').map_or((relative, None), |(p, q)| (p, Some(q)));
    let path = path.split('#').next().unwrap_or(path);
    let first = path.split('/').next().unwrap_or("");
    let (version, rest) = if first.eq_ignore_ascii_case("v1.0") || first.eq_ignore_ascii_case("beta") {
        (first.to_ascii_lowercase(), path[first.len()..].trim_start_matches('/'))
    } else {
        (version.as_str().to_owned(), path)
    };
    let nested = rest
        .split('/')
        .any(|segment| segment.eq_ignore_ascii_case("$batch") || segment.eq_ignore_ascii_case("%24batch"));
    if nested {
        return Err("is a $batch; batches cannot be nested.".into());
    }
    // A watch stream never ends, so it has no response to put in a batch.
    let stream = rest
        .split('/')
        .any(|segment| segment.eq_ignore_ascii_case("$stream") || segment.eq_ignore_ascii_case("%24stream"));
    if stream {
        return Err("is a watch stream ($stream), which has no single response to batch.".into());
    }
    let mut out = format!("/{version}/{rest}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query.split('#').next().unwrap_or(query));
    }
    Ok(out)
}

/// Headers that describe the step's own message or connection, or that the batch decides
/// (authorization), are not taken from the step.
fn ignored_header(name: &HeaderName) -> bool {
    [
        header::AUTHORIZATION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::UPGRADE,
        header::EXPECT,
    ]
    .contains(name)
}

fn headers(given: Map<String, Value>) -> Result<HeaderMap, String> {
    if given.len() > MAX_STEP_HEADERS {
        return Err(format!("has more than {MAX_STEP_HEADERS} headers."));
    }
    let mut headers = HeaderMap::with_capacity(given.len());
    for (name, value) in given {
        let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            format!(
                "has a header name that is not valid: {:?}.",
                name.chars().take(64).collect::<String>()
            )
        })?;
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(format!("has a header '{parsed}' whose value is not text.")),
        };
        let value =
            HeaderValue::from_str(&text).map_err(|_| format!("has a header '{parsed}' whose value is not valid."))?;
        if !ignored_header(&parsed) {
            headers.append(parsed, value);
        }
    }
    Ok(headers)
}

/// A JSON value is sent as its text; a JSON string is base64 (either alphabet, padded or not).
fn payload(body: Option<Value>) -> StepPayload {
    match body {
        None | Some(Value::Null) => StepPayload::None,
        Some(Value::String(text)) => {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            match engines.iter().find_map(|e| e.decode(text.trim()).ok()) {
                Some(bytes) => StepPayload::Bytes(Bytes::from(bytes)),
                None => StepPayload::Refused(ApiError::bad_request(
                    "The request's body is a string that is not base64; send a JSON value or base64 text.",
                )),
            }
        }
        Some(value) => StepPayload::Bytes(Bytes::from(value.to_string())),
    }
}

/// The step as a request of its own: its headers, the outer request's `Authorization` and
/// `Host`, and a JSON content type for a body that is JSON and says nothing else.
fn request(step: &Step, payload: &StepPayload, outer: &HeaderMap) -> Result<Request, ApiError> {
    let mut headers = step.headers.clone();
    for name in [header::AUTHORIZATION, header::HOST] {
        for value in outer.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let bytes = match payload {
        StepPayload::Bytes(bytes) => bytes.clone(),
        _ => Bytes::new(),
    };
    let looks_like_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !headers.contains_key(header::CONTENT_TYPE) && looks_like_json {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let mut request = Request::builder()
        .method(step.method.clone())
        .uri(&step.path_and_query)
        .body(Body::from(bytes))
        .map_err(|_| {
            invalid(format!(
                "Request '{}' of the batch has a url that is not valid.",
                step.id
            ))
        })?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Steps in the order they run: each after everything it depends on, otherwise as given.
/// A cycle (a step that depends on itself, directly or not) makes the batch a 400.
fn order(steps: &[Step]) -> Result<Vec<usize>, ApiError> {
    let mut done = vec![false; steps.len()];
    let mut order = Vec::with_capacity(steps.len());
    while order.len() < steps.len() {
        let next = (0..steps.len()).find(|&i| !done[i] && steps[i].depends_on.iter().all(|&d| done[d]));
        match next {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..steps.len())
                    .filter(|&i| !done[i])
                    .map(|i| steps[i].id.as_str())
                    .collect();
                return Err(invalid(format!(
                    "The batch's dependsOn form a cycle among the requests {}.",
                    stuck.join(", ")
                )));
            }
        }
    }
    Ok(order)
}

/// One step's answer as the batch response carries it.
struct Answer {
    id: String,
    status: StatusCode,
    headers: Map<String, Value>,
    body: Option<Value>,
}

impl Answer {
    async fn from_response(id: &str, response: Response) -> Answer {
        let (parts, body) = response.into_parts();
        // Our own handlers' bodies, already bounded by what they write.
        let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            });
        let body = match (bytes.is_empty(), is_json) {
            (true, _) => None,
            (false, true) => serde_json::from_slice(&bytes).ok(),
            (false, false) => Some(Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))),
        };
        Answer {
            id: id.to_owned(),
            status: parts.status,
            headers: response_headers(&parts.headers),
            body,
        }
    }

    /// An answer for a step that was not run; its error body is Graph's, less the request id.
    fn error(error: &ApiError, id: &str) -> Answer {
        let body = serde_json::json!({
            "error": { "code": error.code, "message": error.message }
        });
        let mut headers = Map::new();
        headers.insert("Content-Type".into(), Value::from("application/json"));
        Answer {
            id: id.to_owned(),
            status: error.status,
            headers,
            body: Some(body),
        }
    }

    fn into_json(self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), Value::from(self.id));
        out.insert("status".into(), Value::from(self.status.as_u16()));
        out.insert("headers".into(), Value::Object(self.headers));
        if let Some(body) = self.body {
            out.insert("body".into(), body);
        }
        Value::Object(out)
    }
}

/// A step's response headers, named as Graph writes them (`Content-Type`: the JavaScript
/// graph-client looks the body's type up by exactly that key). Length and connection headers
/// describe the outer response, not the step.
fn response_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in headers {
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION].contains(name) {
            continue;
        }
        let Ok(text) = value.to_str() else { continue };
        let key = match name.as_str() {
            "content-type" => "Content-Type".to_owned(),
            "retry-after" => "Retry-After".to_owned(),
            "location" => "Location".to_owned(),
            "www-authenticate" => "WWW-Authenticate".to_owned(),
            other => other.to_owned(),
        };
        out.insert(key, Value::from(text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_urls_in_every_form_the_sdks_send() {
        let v1 = ApiVersion::V1;
        let ok = |url: &str| path_and_query(v1, url).unwrap();
        assert_eq!(ok("/users/u1/presence"), "/v1.0/users/u1/presence");
        assert_eq!(
            ok("users/u1/presence?$select=activity"),
            "/v1.0/users/u1/presence?$select=activity"
        );
        assert_eq!(ok("/v1.0/users/u1/presence"), "/v1.0/users/u1/presence");
        assert_eq!(ok("/beta/me/presence"), "/beta/me/presence");
        assert_eq!(ok("/BETA/me/presence"), "/beta/me/presence");
        assert_eq!(ok("http://127.0.0.1:8080/v1.0/me/presence#x"), "/v1.0/me/presence");
        assert_eq!(
            ok("HTTPS://graph.microsoft.com/beta/me/presence?a=b"),
            "/beta/me/presence?a=b"
        );
        assert_eq!(
            path_and_query(ApiVersion::Beta, "/me/presence").unwrap(),
            "/beta/me/presence"
        );
        for nested in ["/$batch", "/v1.0/$batch", "%24batch", "http://h/beta/$BATCH"] {
            assert!(path_and_query(v1, nested).unwrap_err().contains("nested"), "{nested}");
        }
        for stream in [
            "/communications/presences/$stream",
            "/beta/communications/presences/%24STREAM?x=1",
        ] {
            assert!(path_and_query(v1, stream).unwrap_err().contains("stream"), "{stream}");
        }
        for bad in ["", "  ", "/me presence", "/me\npresence", &"a".repeat(3000)] {
            assert!(path_and_query(v1, bad).is_err(), "{bad:?}");
        }
    }

    fn step(id: &str, depends_on: Vec<usize>) -> Step {
        Step {
            id: id.into(),
            method: Method::GET,
            path_and_query: "/v1.0/me/presence".into(),
            headers: HeaderMap::new(),
            body: StepPayload::None,
            depends_on,
        }
    }

    #[test]
    fn dependencies_run_first_and_cycles_are_refused() {
        let steps = vec![step("a", vec![2]), step("b", vec![]), step("c", vec![1])];
        assert_eq!(order(&steps).unwrap(), vec![1, 2, 0]);
        let cycle = vec![step("a", vec![1]), step("b", vec![0]), step("c", vec![])];
        let err = order(&cycle).unwrap_err();
        assert!(err.message.contains("a, b"), "{}", err.message);
        assert!(order(&[step("self", vec![0])]).is_err());
    }

    #[test]
    fn bodies_are_json_values_or_base64_text() {
        let text = |p: StepPayload| match p {
            StepPayload::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
            StepPayload::None => "<none>".into(),
            StepPayload::Refused(e) => format!("<refused {}>", e.status.as_u16()),
        };
        assert_eq!(text(payload(None)), "<none>");
        assert_eq!(text(payload(Some(serde_json::json!({"a": 1})))), r#"{"a":1}"#);
        // {"workLocationType":"office"} in base64, padded and not, standard and URL-safe.
        assert_eq!(
            text(payload(Some(Value::from("eyJ3b3JrTG9jYXRpb25UeXBlIjoib2ZmaWNlIn0=")))),
            r#"{"workLocationType":"office"}"#
        );
        assert_eq!(
            text(payload(Some(Value::from("eyJ3b3JrTG9jYXRpb25UeXBlIjoib2ZmaWNlIn0")))),
            r#"{"workLocationType":"office"}"#
        );
        assert_eq!(text(payload(Some(Value::from("not base64!")))), "<refused 400>");
    }

    #[test]
    fn batch_shapes_are_checked_before_anything_runs() {
        let batch = |requests: Value| -> Result<usize, String> {
            let body: BatchBody = serde_json::from_value(serde_json::json!({ "requests": requests })).unwrap();
            parse(ApiVersion::V1, body).map(|s| s.len()).map_err(|e| e.message)
        };
        let get = |id: &str| serde_json::json!({ "id": id, "method": "GET", "url": "/me/presence" });
        assert_eq!(
            batch(Value::from((0..20).map(|i| get(&i.to_string())).collect::<Vec<_>>())),
            Ok(20)
        );
        let too_many = batch(Value::from((0..21).map(|i| get(&i.to_string())).collect::<Vec<_>>()));
        assert!(too_many.unwrap_err().contains("1 to 20"));
        assert!(batch(serde_json::json!([])).is_err());
        assert!(batch(serde_json::json!([get("a"), get("A")]))
            .unwrap_err()
            .contains("more than one"));
        assert!(batch(serde_json::json!([{ "method": "GET", "url": "/me/presence" }])).is_err());
        assert!(batch(serde_json::json!([{ "id": "1", "url": "/me/presence" }])).is_err());
        assert!(batch(serde_json::json!([{ "id": "1", "method": "GET" }])).is_err());
        assert!(batch(serde_json::json!([{ "id": "1", "method": "G E T", "url": "/me/presence" }])).is_err());
        let unknown = serde_json::json!([{ "id": "1", "method": "GET", "url": "/me/presence", "dependsOn": ["9"] }]);
        assert!(batch(unknown).unwrap_err().contains("not in the batch"));
        let snake =
            serde_json::json!([get("1"), { "id": "2", "method": "GET", "url": "/me/presence", "depends_on": ["1"] }]);
        assert_eq!(batch(snake), Ok(2));
        let header =
            |h: Value| serde_json::json!([{ "id": "1", "method": "GET", "url": "/me/presence", "headers": h }]);
        assert!(batch(header(serde_json::json!({ "bad name": "x" }))).is_err());
        assert!(batch(header(serde_json::json!({ "x-a": "line\nbreak" }))).is_err());
        assert!(batch(header(serde_json::json!({ "x-a": ["list"] }))).is_err());
        assert_eq!(
            batch(header(
                serde_json::json!({ "Content-Type": "application/json", "x-n": 5 })
            )),
            Ok(1)
        );
    }
}
