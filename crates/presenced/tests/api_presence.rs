//! Every Graph presence endpoint, through every addressing and both API versions.
mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

const ALICE: &str = "aaaaaaaa-0000-0000-0000-00000000000a";
const BOB: &str = "bbbbbbbb-0000-0000-0000-00000000000b";

fn set_body(session: &str, availability: &str, activity: &str) -> serde_json::Value {
    json!({ "sessionId": session, "availability": availability, "activity": activity, "expirationDuration": "PT1H" })
}

#[tokio::test]
async fn every_addressing_and_version_reaches_the_same_presence() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite", "Presence.Read.All"]);
    let prefixes = [
        format!("/v1.0/users/{ALICE}/presence"),
        format!("/beta/users/{ALICE}/presence"),
        format!("/v1.0/communications/presences/{ALICE}"),
        format!("/beta/communications/presences/{ALICE}"),
    ];
    for (i, prefix) in prefixes.iter().enumerate() {
        let (availability, activity) = [
            ("Busy", "InACall"),
            ("Away", "Away"),
            ("DoNotDisturb", "Presenting"),
            ("Busy", "InAConferenceCall"),
        ][i];
        let r = post(
            &server.url(&format!("{prefix}/setPresence")),
            &app,
            set_body("app-1", availability, activity),
        )
        .await;
        assert_eq!(r.status, 200, "{prefix}: {}", r.text);
        assert!(r.text.is_empty(), "actions answer 200 with an empty body");
        for read in &prefixes {
            let v = get(&server.url(read), &app).await.json();
            assert_eq!(
                (v["availability"].as_str().unwrap(), v["activity"].as_str().unwrap()),
                (availability, activity),
                "{read}"
            );
            assert_eq!(v["id"], ALICE);
        }
        for me in ["/v1.0/me/presence", "/beta/me/presence"] {
            let v = get(&server.url(me), &alice).await.json();
            assert_eq!(v["availability"], availability);
        }
    }
    // Actions through /me too.
    let r = post(
        &server.url("/v1.0/me/presence/setPresence"),
        &alice,
        set_body("app-1", "Available", "Available"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Available", "Available"));
    let r = post(
        &server.url("/beta/me/presence/clearPresence"),
        &alice,
        json!({ "sessionId": "app-1" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Offline", "Offline"));
}

#[tokio::test]
async fn get_presence_shape_and_headers() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let r = common::reply(
        client()
            .get(server.url(&format!("/v1.0/users/{BOB}/presence")))
            .bearer_auth(&app)
            .header("client-request-id", "my-correlation-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["client-request-id"], "my-correlation-1");
    assert!(r.headers.get("request-id").is_some());
    let v = r.json();
    assert_eq!(v["id"], BOB);
    assert_eq!(
        v["availability"], "Offline",
        "a user with no state reads Offline/Offline"
    );
    assert_eq!(v["activity"], "Offline");
    assert_eq!(
        v["outOfOfficeSettings"],
        json!({ "message": null, "isOutOfOffice": false })
    );
    assert!(v["statusMessage"].is_null());
    let seq = v["sequenceNumber"].as_str().unwrap();
    assert_eq!(seq.len(), 20);
    assert!(v["@odata.context"].as_str().unwrap().ends_with("/presence/$entity"));
}

#[tokio::test]
async fn guid_ids_are_case_insensitive() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let upper = ALICE.to_uppercase();
    let r = post(
        &server.url(&format!("/v1.0/users/{upper}/presence/setPresence")),
        &app,
        set_body("s", "Busy", "InACall"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Busy", "InACall"));
}

#[tokio::test]
async fn folding_preferred_presence_and_clear() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let base = format!("/v1.0/users/{ALICE}/presence");
    let url = |a: &str| server.url(&format!("{base}/{a}"));

    // Preferred presence with no session: stored, but the user reads Offline.
    let r = post(
        &url("setUserPreferredPresence"),
        &app,
        json!({ "availability": "DoNotDisturb", "activity": "DoNotDisturb", "expirationDuration": "PT8H" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Offline", "Offline"));

    post(&url("setPresence"), &app, set_body("teams-desktop", "Away", "Away")).await;
    assert_eq!(
        presence_of(&server, &app, ALICE).await,
        pair("DoNotDisturb", "DoNotDisturb"),
        "preferred overrides sessions"
    );

    let r = call(Method::POST, &url("clearUserPreferredPresence"), Some(&app), None).await;
    assert_eq!(r.status, 200, "no body is accepted: {}", r.text);
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Away", "Away"));
    let r = post(&url("clearUserPreferredPresence"), &app, json!({})).await;
    assert_eq!(r.status, 200, "a second clear is still 200");

    post(
        &url("setPresence"),
        &app,
        set_body("teams-mobile", "Available", "Available"),
    )
    .await;
    assert_eq!(
        presence_of(&server, &app, ALICE).await,
        pair("Available", "Available"),
        "Available > Away"
    );
    post(&url("setPresence"), &app, set_body("calls-app", "Busy", "InACall")).await;
    assert_eq!(
        presence_of(&server, &app, ALICE).await,
        pair("Busy", "InACall"),
        "Busy > Available"
    );
    post(
        &url("setPresence"),
        &app,
        set_body("slides-app", "DoNotDisturb", "Presenting"),
    )
    .await;
    assert_eq!(
        presence_of(&server, &app, ALICE).await,
        pair("DoNotDisturb", "Presenting"),
        "DND > Busy"
    );

    // Appear offline.
    post(
        &url("setUserPreferredPresence"),
        &app,
        json!({ "availability": "Offline", "activity": "OffWork" }),
    )
    .await;
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Offline", "OffWork"));
    post(&url("clearUserPreferredPresence"), &app, json!({})).await;

    for s in ["slides-app", "calls-app", "teams-mobile"] {
        let r = post(&url("clearPresence"), &app, json!({ "sessionId": s })).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Away", "Away"));
    post(&url("clearPresence"), &app, json!({ "sessionId": "teams-desktop" })).await;
    assert_eq!(presence_of(&server, &app, ALICE).await, pair("Offline", "Offline"));

    let r = post(&url("clearPresence"), &app, json!({ "sessionId": "teams-desktop" })).await;
    r.assert_error(404, "NotFound");
}

/// `2026-12-04T21:53:51.6977450Z`: seven fractional digits and `Z`, as Graph writes date-times.
fn assert_graph_date_time(text: &str) {
    let b = text.as_bytes();
    let shape_ok = b.len() == 28
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            27 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape_ok, "not a Graph date-time: {text}");
}

#[tokio::test]
async fn an_expiry_with_z_or_an_offset_is_that_instant_shown_in_the_given_zone() {
    let server = Server::start(&[]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite"]);
    // What `new Date(...).toISOString()` gives, with a Windows zone; then Python's isoformat().
    for (date_time, zone, echoed) in [
        (
            "2099-12-04T21:53:51.697Z",
            "Pacific Standard Time",
            "2099-12-04T13:53:51.6970000",
        ),
        (
            "2099-12-04T21:53:51+00:00",
            "Europe/Berlin",
            "2099-12-04T22:53:51.0000000",
        ),
        ("2099-12-04T21:53:51.5", "Europe/Berlin", "2099-12-04T21:53:51.5000000"),
    ] {
        let body = json!({ "statusMessage": { "message": { "content": "Back soon" },
            "expiryDateTime": { "dateTime": date_time, "timeZone": zone } } });
        let r = post(&server.url("/v1.0/me/presence/setStatusMessage"), &alice, body).await;
        assert_eq!(r.status, 200, "{date_time}: {}", r.text);
        let own = get(&server.url("/v1.0/me/presence"), &alice).await.json();
        assert_eq!(
            own["statusMessage"]["expiryDateTime"],
            json!({ "dateTime": echoed, "timeZone": zone }),
            "{date_time}"
        );
    }
}

#[tokio::test]
async fn status_message_dates_are_hidden_from_other_readers() {
    let server = Server::start(&[]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite", "Presence.Read.All"]);
    let bob = server.user_token(BOB, &["Presence.Read.All"]);
    let app = server.app_token(&["Presence.Read.All"]);
    let body = json!({ "statusMessage": {
        "message": { "content": "Hey I'm currently in a meeting.", "contentType": "text" },
        "expiryDateTime": { "dateTime": "2099-10-18T17:05:33.2079781", "timeZone": "Pacific Standard Time" }
    }});
    let r = post(&server.url("/v1.0/me/presence/setStatusMessage"), &alice, body).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let own = get(&server.url("/v1.0/me/presence"), &alice).await.json();
    let message = &own["statusMessage"];
    assert_eq!(
        message["message"],
        json!({ "content": "Hey I'm currently in a meeting.", "contentType": "text" })
    );
    assert_eq!(
        message["expiryDateTime"],
        json!({ "dateTime": "2099-10-18T17:05:33.2079781", "timeZone": "Pacific Standard Time" })
    );
    assert_graph_date_time(message["publishedDateTime"].as_str().unwrap());

    for reader in [&bob, &app] {
        let other = get(&server.url(&format!("/v1.0/users/{ALICE}/presence")), reader)
            .await
            .json();
        assert_eq!(
            other["statusMessage"]["message"]["content"],
            "Hey I'm currently in a meeting."
        );
        assert!(other["statusMessage"].get("expiryDateTime").is_none());
        assert!(other["statusMessage"].get("publishedDateTime").is_none());
    }

    // IANA zone names work too; an empty message clears.
    let iana = json!({ "statusMessage": { "message": { "content": "WFH" },
        "expiryDateTime": { "dateTime": "2099-01-01T09:00:00", "timeZone": "Europe/Berlin" } } });
    assert_eq!(
        post(&server.url("/v1.0/me/presence/setStatusMessage"), &alice, iana)
            .await
            .status,
        200
    );
    assert_eq!(
        get(&server.url("/v1.0/me/presence"), &alice).await.json()["statusMessage"]["message"]["content"],
        "WFH"
    );
    let clear = json!({ "statusMessage": { "message": { "content": "", "contentType": "text" } } });
    assert_eq!(
        post(&server.url("/v1.0/me/presence/setStatusMessage"), &alice, clear)
            .await
            .status,
        200
    );
    assert!(get(&server.url("/v1.0/me/presence"), &alice).await.json()["statusMessage"].is_null());
}

#[tokio::test]
async fn out_of_office_settings_extension() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = server.url(&format!("/v1.0/users/{ALICE}/presence/setOutOfOfficeSettings"));
    let r = post(
        &url,
        &app,
        json!({ "outOfOfficeSettings": { "isOutOfOffice": true, "message": "Back Monday" } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = get(&server.url(&format!("/v1.0/users/{ALICE}/presence")), &app)
        .await
        .json();
    assert_eq!(
        v["outOfOfficeSettings"],
        json!({ "message": "Back Monday", "isOutOfOffice": true })
    );
}

#[tokio::test]
async fn sequence_number_grows_with_every_change_and_sorts_as_text() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = |a: &str| server.url(&format!("/v1.0/users/{ALICE}/presence/{a}"));
    let seq = || async {
        get(&server.url(&format!("/v1.0/users/{ALICE}/presence")), &app)
            .await
            .json()["sequenceNumber"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut seen = vec![seq().await];
    for (av, ac) in [
        ("Busy", "InACall"),
        ("Away", "Away"),
        ("Available", "Available"),
        ("Busy", "InAConferenceCall"),
    ] {
        assert_eq!(post(&url("setPresence"), &app, set_body("s", av, ac)).await.status, 200);
        seen.push(seq().await);
    }
    post(
        &url("setStatusMessage"),
        &app,
        json!({ "statusMessage": { "message": { "content": "hi" } } }),
    )
    .await;
    seen.push(seq().await);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "strictly increasing as plain strings");
    // A keep-alive that changes nothing visible does not bump it.
    post(&url("setPresence"), &app, set_body("s", "Busy", "InAConferenceCall")).await;
    assert_eq!(&seq().await, seen.last().unwrap());
}

#[tokio::test]
async fn get_presences_by_user_id_bulk() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    post(
        &server.url(&format!("/v1.0/users/{ALICE}/presence/setPresence")),
        &app,
        set_body("s", "Busy", "InACall"),
    )
    .await;
    for version in ["v1.0", "beta"] {
        let url = server.url(&format!("/{version}/communications/getPresencesByUserId"));
        let r = post(
            &url,
            &app,
            json!({ "ids": [BOB, ALICE, "carol@contoso.com", ALICE.to_uppercase()] }),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let value = r.json()["value"].as_array().unwrap().clone();
        let ids: Vec<&str> = value.iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            vec![BOB, ALICE, "carol@contoso.com"],
            "request order, duplicates once"
        );
        assert_eq!(value[0]["availability"], "Offline");
        assert_eq!(value[1]["availability"], "Busy");
        assert_eq!(value[1]["activity"], "InACall");
    }
    let url = server.url("/v1.0/communications/getPresencesByUserId");
    let max: Vec<String> = (0..650).map(|i| format!("user-{i}")).collect();
    let r = post(&url, &app, json!({ "ids": max })).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 650);
    let too_many: Vec<String> = (0..651).map(|i| format!("user-{i}")).collect();
    post(&url, &app, json!({ "ids": too_many }))
        .await
        .assert_error(400, "InvalidArgument");
    post(&url, &app, json!({ "ids": [] }))
        .await
        .assert_error(400, "InvalidArgument");
}

#[tokio::test]
async fn health_endpoints_need_no_auth() {
    let server = Server::start(&[]);
    let r = call(Method::GET, &server.url("/healthz"), None, None).await;
    assert_eq!(r.status, 200);
    let r = call(Method::GET, &server.url("/readyz"), None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let mut server = Server::start(&[]);
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn odata_context_follows_the_addressing_and_select_projects() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite", "Presence.Read.All"]);
    let host = server.base.trim_start_matches("http://").to_owned();
    let context = |path: &str, app_token: bool| {
        let url = server.url(path);
        let token = if app_token { app.clone() } else { alice.clone() };
        async move { get(&url, &token).await.json()["@odata.context"].clone() }
    };
    assert_eq!(
        context(&format!("/v1.0/users/{ALICE}/presence"), true).await,
        format!("http://{host}/v1.0/$metadata#users('{ALICE}')/presence/$entity")
    );
    assert_eq!(
        context("/beta/me/presence", false).await,
        format!("http://{host}/beta/$metadata#users('{ALICE}')/presence/$entity")
    );
    assert_eq!(
        context(&format!("/v1.0/communications/presences/{ALICE}"), true).await,
        format!("http://{host}/v1.0/$metadata#communications/presences/$entity")
    );

    // $select: the named properties plus id, in any case, encoded or not.
    for query in ["$select=availability,activity", "%24select=Availability%2CACTIVITY"] {
        let v = get(&server.url(&format!("/v1.0/users/{ALICE}/presence?{query}")), &app)
            .await
            .json();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, ["@odata.context", "activity", "availability", "id"], "{query}");
        assert_eq!(v["id"], ALICE);
        assert_eq!(
            v["@odata.context"],
            format!("http://{host}/v1.0/$metadata#users('{ALICE}')/presence(availability,activity)/$entity")
        );
    }
    let v = get(
        &server.url(&format!("/beta/communications/presences/{ALICE}?$select=workLocation")),
        &app,
    )
    .await
    .json();
    assert_eq!(
        v["@odata.context"],
        format!("http://{host}/beta/$metadata#communications/presences(workLocation)/$entity")
    );
    assert_eq!(v["workLocation"]["source"], "none");
    assert!(v.get("availability").is_none());

    // getPresencesByUserId: a collection context, and $select per item.
    let url = server.url("/v1.0/communications/getPresencesByUserId");
    let body = json!({ "ids": [ALICE, BOB] });
    let v = post(&url, &app, body.clone()).await.json();
    assert_eq!(
        v["@odata.context"],
        format!("http://{host}/v1.0/$metadata#Collection(microsoft.graph.presence)")
    );
    let v = post(&format!("{url}?$select=activity"), &app, body.clone())
        .await
        .json();
    for item in v["value"].as_array().unwrap() {
        let mut keys: Vec<&str> = item.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["activity", "id"]);
    }

    // Unknown properties are Graph's 400.
    let r = get(
        &server.url(&format!("/v1.0/users/{ALICE}/presence?$select=availability,mood")),
        &app,
    )
    .await;
    r.assert_error(400, "BadRequest");
    assert_eq!(
        r.json()["error"]["message"],
        "Parsing OData Select and Expand failed: Could not find a property named 'mood' on type 'microsoft.graph.presence'."
    );
    post(&format!("{url}?$select=ids"), &app, body)
        .await
        .assert_error(400, "BadRequest");
}
