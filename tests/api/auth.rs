//! Per-game API keys on ingestion, with keys created and revoked in the real PostgreSQL.

use crate::helpers::*;
use gamemetrics::auth;
use serde_json::{json, Value};

/// Sends a request, with `Authorization: Bearer <key>` when a key is given.
async fn send_with(req: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::Response {
    match key {
        Some(k) => req.header("Authorization", format!("Bearer {k}")),
        None => req,
    }
    .send()
    .await
    .unwrap()
}

async fn post_with(app: &TestApp, key: Option<&str>, body: &Value) -> reqwest::Response {
    let req = app
        .client
        .post(format!("{}/api/v1/events", app.address))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    send_with(req, key).await
}

#[tokio::test]
async fn ingestion_requires_a_key_for_the_events_game() {
    let mut config = test_config();
    isolated_database(&mut config).await;
    let pg = gamemetrics::db::pg_pool(&config.database);
    let key = auth::create_key(&pg, Some("game-a"), None).await.unwrap();
    let limited = auth::create_key(&pg, Some("game-a"), Some(1)).await.unwrap();
    let revoked = auth::create_key(&pg, Some("game-a"), None).await.unwrap();
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    assert!(auth::revoke_key(&pg, &revoked_id).await.unwrap());
    let app = spawn_app_with(|c| {
        *c = config.clone();
        c.http.auth_required = Some(true);
    })
    .await;
    let ev = |game: &str| json!({"event_type":"a","player_id":"p","game_id":game});

    let res = post_with(&app, None, &ev("game-a")).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong_secret = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(
        post_with(&app, Some(&wrong_secret), &ev("game-a")).await.status(),
        401
    );
    assert_eq!(
        post_with(&app, Some("gmk_nosuchkey_abc"), &ev("game-a"))
            .await
            .status(),
        401
    );
    assert_eq!(post_with(&app, Some(&revoked), &ev("game-a")).await.status(), 401);
    let res = post_with(&app, Some(&key), &ev("game-b")).await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "forbidden");

    assert_eq!(post_with(&app, Some(&key), &ev("game-a")).await.status(), 200);
    // A key's own limit (1/s, burst 1) holds even though the instance has room.
    assert_eq!(post_with(&app, Some(&limited), &ev("game-a")).await.status(), 200);
    assert_eq!(post_with(&app, Some(&limited), &ev("game-a")).await.status(), 429);
    assert_eq!(
        topic_message_count(&app.config),
        2,
        "only the two accepted events were produced"
    );

    let metrics = app.get("/metrics").await.text().await.unwrap();
    for reason in ["missing", "invalid", "wrong_game"] {
        assert!(
            metrics.contains(&format!(
                r#"gamemetrics_auth_failures_total{{reason="{reason}"}}"#
            )),
            "{reason}"
        );
    }
    assert!(!metrics.contains(&key), "the key never appears in metrics");
}

async fn get_with(app: &TestApp, key: Option<&str>, path: &str) -> reqwest::Response {
    send_with(app.client.get(format!("{}{path}", app.address)), key).await
}

#[tokio::test]
async fn keyed_reads_see_only_the_keys_game() {
    use diesel_async::RunQueryDsl;
    let mut config = test_config();
    isolated_database(&mut config).await;
    let pg = gamemetrics::db::pg_pool(&config.database);
    let key = auth::create_key(&pg, Some("game-a"), None).await.unwrap();
    let (mine, theirs) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    diesel::sql_query(format!(
        "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at) VALUES \
         ('{mine}', 'a', 'p', 'game-a', now(), now()), ('{theirs}', 'a', 'p', 'game-b', now(), now())"
    ))
    .execute(&mut pg_conn(&config).await)
    .await
    .unwrap();
    let app = spawn_app_with(|c| {
        *c = config.clone();
        c.http.query_auth_required = true;
    })
    .await;

    for path in ["/games/game-a/leaderboard", "/player/p/stats", "/player/p/events"] {
        let res = get_with(&app, None, path).await;
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "unauthorized"
        );
    }
    assert_eq!(
        get_with(&app, Some(&key), "/games/game-a/leaderboard")
            .await
            .status(),
        200
    );
    let res = get_with(&app, Some(&key), "/games/game-b/leaderboard").await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "forbidden");
    assert_eq!(
        get_with(&app, Some(&key), "/games/game-b/leaderboard/players/p")
            .await
            .status(),
        403
    );
    // Another game's event doesn't exist for this key; its own does.
    assert_eq!(
        get_with(&app, Some(&key), &format!("/events/{theirs}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        get_with(&app, Some(&key), &format!("/events/{mine}"))
            .await
            .status(),
        200
    );
    let page: Value = get_with(&app, Some(&key), "/player/p/events")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.to_string()]);
    // Ingestion keeps its own switch: off here, so no key is needed to write.
    let ev = json!({"event_type":"a","player_id":"p","game_id":"game-b"});
    assert_eq!(post_with(&app, None, &ev).await.status(), 200);
}

#[tokio::test]
async fn a_deployment_can_serve_only_ingestion_or_only_queries() {
    use gamemetrics::config::HttpApi;
    let ev = json!({"event_type":"a","player_id":"p","game_id":"g"});
    let ingest = spawn_app_with(|c| c.http.http_api = HttpApi::Ingest).await;
    assert_eq!(post_with(&ingest, None, &ev).await.status(), 200);
    let res = ingest.get("/games/g/leaderboard").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "not_found");

    // A query-only process needs no broker: ready, and it never produces.
    let query = spawn_app_with(|c| {
        c.http.http_api = HttpApi::Query;
        c.kafka.kafka_brokers = Some(UNREACHABLE_BROKER.into());
    })
    .await;
    assert_eq!(post_with(&query, None, &ev).await.status(), 404);
    assert_eq!(query.get("/readyz").await.status(), 200);
    assert_eq!(query.get("/games/g/leaderboard").await.status(), 200);
    let doc: Value = query.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["paths"].get("/games/{game_id}/leaderboard").is_some());
    assert!(
        doc["paths"].get("/api/v1/events").is_none(),
        "the contract lists only what is served"
    );
}

#[tokio::test]
async fn an_unknown_key_id_costs_one_lookup_per_cache_period() {
    use diesel_async::RunQueryDsl;
    let mut config = test_config();
    isolated_database(&mut config).await;
    let store = auth::KeyStore::new(gamemetrics::db::pg_pool(&config.database), 0);
    let bogus = Some("Bearer gmk_nosuchkey_abc");
    assert!(matches!(
        store.authenticate(bogus).await,
        Err(auth::AuthError::Invalid)
    ));
    // With the table gone, another lookup could only fail as the store's error: none is made.
    diesel::sql_query("DROP TABLE api_keys")
        .execute(&mut pg_conn(&config).await)
        .await
        .unwrap();
    assert!(matches!(
        store.authenticate(bogus).await,
        Err(auth::AuthError::Invalid)
    ));
    // A different unknown id is looked up, and so meets the missing table.
    assert!(matches!(
        store.authenticate(Some("Bearer gmk_otherkey_abc")).await,
        Err(auth::AuthError::Store(_))
    ));
}

#[tokio::test]
async fn an_admin_key_reads_every_game_and_writes_no_events() {
    use diesel_async::RunQueryDsl;
    let mut config = test_config();
    isolated_database(&mut config).await;
    let pg = gamemetrics::db::pg_pool(&config.database);
    let admin = auth::create_key(&pg, None, None).await.unwrap();
    let game_key = auth::create_key(&pg, Some("game-a"), None).await.unwrap();
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    diesel::sql_query(format!(
        "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at) VALUES \
         ('{a}', 'a', 'p', 'game-a', now(), now()), ('{b}', 'a', 'p', 'game-b', now(), now())"
    ))
    .execute(&mut pg_conn(&config).await)
    .await
    .unwrap();
    let app = spawn_app_with(|c| {
        *c = config.clone();
        c.http.query_auth_required = true;
        c.http.auth_required = Some(true);
    })
    .await;

    for game in ["game-a", "game-b"] {
        let path = format!("/games/{game}/leaderboard");
        assert_eq!(get_with(&app, Some(&admin), &path).await.status(), 200, "{path}");
    }
    for id in [a, b] {
        let res = get_with(&app, Some(&admin), &format!("/events/{id}")).await;
        assert_eq!(res.status(), 200, "the admin key reads {id}");
    }
    let page: Value = get_with(&app, Some(&admin), "/player/p/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);

    // It writes no events, single or batched; the game's key still does.
    let ev = json!({"event_type":"a","player_id":"p","game_id":"game-a"});
    let res = send_with(
        app.client
            .post(format!("{}/api/v1/events", app.address))
            .json(&ev),
        Some(&admin),
    )
    .await;
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("admin key"),
        "{body}"
    );
    let res = send_with(
        app.client
            .post(format!("{}/api/v1/events/batch", app.address))
            .json(&json!([ev])),
        Some(&admin),
    )
    .await;
    let body: Value = res.json().await.unwrap();
    assert!(body.to_string().contains("forbidden_game"), "{body}");
    let res = send_with(
        app.client
            .post(format!("{}/api/v1/events", app.address))
            .json(&ev),
        Some(&game_key),
    )
    .await;
    assert_eq!(res.status(), 200);

    // `keys list` says which is which.
    let keys = auth::list_keys(&pg).await.unwrap();
    let admins: Vec<&Value> = keys.iter().filter(|k| k["admin"] == json!(true)).collect();
    assert_eq!(admins.len(), 1);
    assert!(admins[0]["game_id"].is_null());
}
