//! Every request is authenticated strictly, permissions follow Graph's matrix, and tenants are
//! isolated from each other.
mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

const ALICE: &str = "aaaaaaaa-0000-0000-0000-00000000000a";
const BOB: &str = "bbbbbbbb-0000-0000-0000-00000000000b";
const OTHER_TENANT: &str = "22222222-2222-2222-2222-222222222222";

#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "tid": TENANT, "oid": ALICE, "appid": "forger", "scp": "Presence.Read.All Presence.ReadWrite",
        "aud": "https://graph.microsoft.com", "iss": "presenced", "iat": now(), "nbf": now() - 10, "exp": now() + 600,
    })
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn secret(server: &Server) -> Vec<u8> {
    presenced::auth::load_or_create_secret(&server.data_dir).unwrap()
}

async fn status_with(server: &Server, authorization: Option<&str>) -> Reply {
    let mut request = client().get(server.url("/v1.0/me/presence"));
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    reply(request.send().await.unwrap()).await
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_graph_error() {
    let server = Server::start(&[]);
    let secret = secret(&server);
    let good = hs256(&secret, &claims());
    assert_eq!(
        status_with(&server, Some(&format!("Bearer {good}"))).await.status,
        200,
        "control: a good token works"
    );

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        hs256(&secret, &c)
    };
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims(),
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let mut tampered_parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged_claims = claims();
    forged_claims["tid"] = json!(OTHER_TENANT);
    tampered_parts[1] = b64(forged_claims.to_string().as_bytes());
    let tampered = tampered_parts.join(".");
    let cases: Vec<(String, Option<String>)> = vec![
        ("missing header".into(), None),
        ("basic scheme".into(), Some("Basic YWxpY2U6cGFzcw==".into())),
        ("empty bearer".into(), Some("Bearer ".into())),
        ("garbage".into(), Some("Bearer not.a.jwt".into())),
        ("alg none".into(), Some(format!("Bearer {none_token}"))),
        ("HS384".into(), Some(format!("Bearer {hs384}"))),
        (
            "wrong secret".into(),
            Some(format!(
                "Bearer {}",
                hs256(b"another-secret-another-secret-32", &claims())
            )),
        ),
        ("tampered payload".into(), Some(format!("Bearer {tampered}"))),
        (
            "expired".into(),
            Some(format!("Bearer {}", with(&|c| c["exp"] = json!(now() - 3600)))),
        ),
        (
            "no exp".into(),
            Some(format!(
                "Bearer {}",
                with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))
            )),
        ),
        (
            "not yet valid".into(),
            Some(format!("Bearer {}", with(&|c| c["nbf"] = json!(now() + 3600)))),
        ),
        (
            "wrong audience".into(),
            Some(format!("Bearer {}", with(&|c| c["aud"] = json!("api://someone-else")))),
        ),
        (
            "wrong issuer".into(),
            Some(format!(
                "Bearer {}",
                with(&|c| c["iss"] = json!("https://evil.example"))
            )),
        ),
        (
            "no tenant".into(),
            Some(format!(
                "Bearer {}",
                with(&|c| drop(c.as_object_mut().unwrap().remove("tid")))
            )),
        ),
        (
            "bad tenant".into(),
            Some(format!("Bearer {}", with(&|c| c["tid"] = json!("../etc")))),
        ),
        (
            "delegated without oid".into(),
            Some(format!(
                "Bearer {}",
                with(&|c| drop(c.as_object_mut().unwrap().remove("oid")))
            )),
        ),
        ("huge token".into(), Some(format!("Bearer {}", "a".repeat(9000)))),
    ];
    for (why, header) in cases {
        let r = status_with(&server, header.as_deref()).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        r.assert_error(401, "InvalidAuthenticationToken");
        assert!(r.headers.get("www-authenticate").is_some(), "{why}");
    }
}

#[tokio::test]
async fn rs256_tokens_from_a_jwks_and_algorithm_confusion() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::KeyPair as _;
    let temp = tempfile::tempdir().unwrap();
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    );
    let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!("idp-key-1");
    let jwks_path = temp.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({ "keys": [jwk] }).to_string()).unwrap();
    let issuer = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
    let server = Server::start(&["--jwks-file", jwks_path.to_str().unwrap(), "--jwt-issuer", &issuer]);

    let mut c = claims();
    c["iss"] = json!(issuer);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("idp-key-1".into());
    let rs = jsonwebtoken::encode(&header, &c, &encoding).unwrap();
    assert_eq!(status_with(&server, Some(&format!("Bearer {rs}"))).await.status, 200);

    // The RSA public key used as an HMAC secret must not verify (alg confusion).
    let public_der = pair.public_key().as_der().unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(public_der.as_ref()),
    )
    .unwrap();
    status_with(&server, Some(&format!("Bearer {confused}")))
        .await
        .assert_error(401, "InvalidAuthenticationToken");
    // The default issuer is no longer accepted once issuers are configured.
    let local = hs256(&secret(&server), &claims());
    status_with(&server, Some(&format!("Bearer {local}")))
        .await
        .assert_error(401, "InvalidAuthenticationToken");
}

#[tokio::test]
async fn permission_matrix() {
    let server = Server::start(&[]);
    let own = server.url(&format!("/v1.0/users/{ALICE}/presence"));
    let other = server.url(&format!("/v1.0/users/{BOB}/presence"));
    let set = json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall" });
    let bulk = server.url("/v1.0/communications/getPresencesByUserId");
    let ids = json!({ "ids": [ALICE, BOB] });
    // (token, GET own, GET other, GET /me, write other, bulk)
    let read = server.user_token(ALICE, &["Presence.Read"]);
    let read_all = server.user_token(ALICE, &["Presence.Read.All"]);
    let read_write = server.user_token(ALICE, &["Presence.ReadWrite"]);
    let app_read = server.app_token(&["Presence.Read.All"]);
    let app_write = server.app_token(&["Presence.ReadWrite.All"]);
    let nothing = server.user_token(ALICE, &["User.Read"]);
    let scope_as_role = server.app_token(&["Presence.ReadWrite"]);
    let rows: Vec<(&str, &String, [u16; 5])> = vec![
        ("delegated Presence.Read", &read, [200, 403, 200, 403, 403]),
        ("delegated Presence.Read.All", &read_all, [200, 200, 200, 403, 200]),
        ("delegated Presence.ReadWrite", &read_write, [200, 403, 200, 403, 403]),
        ("application Presence.Read.All", &app_read, [200, 200, 400, 403, 200]),
        (
            "application Presence.ReadWrite.All",
            &app_write,
            [200, 200, 400, 200, 200],
        ),
        ("no presence permission", &nothing, [403, 403, 403, 403, 403]),
        ("delegated name as a role", &scope_as_role, [403, 403, 400, 403, 403]),
    ];
    for (who, token, expected) in rows {
        let got = [
            get(&own, token).await.status.as_u16(),
            get(&other, token).await.status.as_u16(),
            get(&server.url("/v1.0/me/presence"), token).await.status.as_u16(),
            post(&format!("{other}/setPresence"), token, set.clone())
                .await
                .status
                .as_u16(),
            post(&bulk, token, ids.clone()).await.status.as_u16(),
        ];
        assert_eq!(got, expected, "{who}: [GET own, GET other, GET /me, write other, bulk]");
    }
    let denied = post(&format!("{other}/setPresence"), &read, set.clone()).await;
    denied.assert_error(403, "Forbidden");
    // A delegated token writes its own user's presence, and others' only where the operator
    // allows it.
    let own_write = post(&format!("{own}/setPresence"), &read_write, set.clone()).await;
    assert_eq!(own_write.status, 200);
    let refused = post(&format!("{other}/setPresence"), &read_write, set.clone()).await;
    refused.assert_error(403, "Forbidden");
    assert!(refused.text.contains("Presence.ReadWrite.All"), "{}", refused.text);
    let lenient = Server::start(&["--allow-delegated-writes-to-others"]);
    let token = lenient.user_token(ALICE, &["Presence.ReadWrite"]);
    let other = lenient.url(&format!("/v1.0/users/{BOB}/presence/setPresence"));
    assert_eq!(post(&other, &token, set).await.status, 200);
}

#[tokio::test]
async fn tenants_are_isolated() {
    let server = Server::start(&[]);
    let a = server.token_for(TENANT, None, &[], &["Presence.ReadWrite.All"]);
    let b = server.token_for(OTHER_TENANT, None, &[], &["Presence.ReadWrite.All"]);
    let url = |action: &str| server.url(&format!("/v1.0/users/{ALICE}/presence/{action}"));
    post(
        &url("setPresence"),
        &a,
        json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall" }),
    )
    .await;
    post(
        &url("setStatusMessage"),
        &a,
        json!({ "statusMessage": { "message": { "content": "tenant A only" } } }),
    )
    .await;

    assert_eq!(presence_of(&server, &a, ALICE).await, pair("Busy", "InACall"));
    let seen_by_b = get(&server.url(&format!("/v1.0/users/{ALICE}/presence")), &b)
        .await
        .json();
    assert_eq!(seen_by_b["availability"], "Offline");
    assert!(seen_by_b["statusMessage"].is_null());
    let bulk = post(
        &server.url("/v1.0/communications/getPresencesByUserId"),
        &b,
        json!({ "ids": [ALICE] }),
    )
    .await
    .json();
    assert_eq!(bulk["value"][0]["availability"], "Offline");
    // Tenant B can neither clear nor overwrite tenant A's session.
    post(&url("clearPresence"), &b, json!({ "sessionId": "s" }))
        .await
        .assert_error(404, "NotFound");
    post(
        &url("setPresence"),
        &b,
        json!({ "sessionId": "s", "availability": "Away", "activity": "Away" }),
    )
    .await;
    assert_eq!(presence_of(&server, &a, ALICE).await, pair("Busy", "InACall"));
    assert_eq!(presence_of(&server, &b, ALICE).await, pair("Away", "Away"));
    let _ = call(Method::GET, &server.url("/healthz"), None, None).await;
}
