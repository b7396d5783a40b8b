//! The embedded migrations on the real PostgreSQL, in a schema of the test's own.

use crate::helpers::{new_schema, test_config};
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use gamemetrics::db::run_migrations;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test]
async fn migrations_create_the_seed_tables_and_run_twice() {
    let config = test_config();
    let (schema, url) = new_schema(&config).await;
    let db = gamemetrics::config::DatabaseConfig {
        database_url: url.parse().unwrap(),
        ..config.database.clone()
    };
    let mut admin = AsyncPgConnection::establish(config.database.database_url.expose())
        .await
        .expect("PostgreSQL reachable");
    let first = run_migrations(&db).await.expect("first run");
    let on_disk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations/")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().join("up.sql").exists()))
        .count();
    assert_eq!(first.len(), on_disk, "every migration applied: {first:?}");
    let second = run_migrations(&db).await.expect("second run is a no-op");
    assert!(second.is_empty());

    let tables: Vec<Name> = diesel::sql_query(format!(
        "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = '{schema}' \
         AND table_name NOT LIKE '\\_\\_%' ORDER BY 1"
    ))
    .load(&mut admin)
    .await
    .unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "api_keys",
            "consumer_offsets",
            "dlq",
            "events",
            "forgotten_players",
            "leaderboards",
            "player_forget_requests",
            "player_statistics"
        ]
    );

    let indexes: Vec<Name> = diesel::sql_query(format!(
        "SELECT indexdef::text AS name FROM pg_indexes WHERE schemaname = '{schema}' ORDER BY 1"
    ))
    .load(&mut admin)
    .await
    .unwrap();
    let defs: Vec<String> = indexes
        .iter()
        .map(|i| i.name.replace(&format!("{schema}."), ""))
        .collect();
    for expected in [
        "ON events USING btree (event_type)",
        "ON events USING btree (player_id)",
        "ON events USING btree (game_id)",
        "ON events USING btree (event_timestamp DESC)",
        "ON leaderboards USING btree (game_id, player_id, period)",
    ] {
        assert!(
            defs.iter().any(|d| d.contains(expected)),
            "no index {expected} in {defs:#?}"
        );
    }
    // The seed's rank and score indexes are dropped on purpose (docs/decisions.md): with only
    // the primary key and room on each page, the top-N flush's rank moves are HOT updates.
    let on_boards: Vec<&String> = defs.iter().filter(|d| d.contains(" ON leaderboards ")).collect();
    assert_eq!(
        on_boards.len(),
        1,
        "only the primary key on leaderboards: {on_boards:#?}"
    );
    let options: Vec<Name> = diesel::sql_query(format!(
        "SELECT array_to_string(c.reloptions, ',') AS name FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relname = 'leaderboards'"
    ))
    .load(&mut admin)
    .await
    .unwrap();
    assert_eq!(options[0].name, "fillfactor=50");
    let tz: Vec<Count> = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM information_schema.columns WHERE table_schema = '{schema}' \
         AND table_name <> '__diesel_schema_migrations' AND data_type = 'timestamp without time zone'"
    ))
    .load(&mut admin)
    .await
    .unwrap();
    assert_eq!(tz[0].n, 0, "every timestamp is TIMESTAMPTZ");
    diesel::sql_query(format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
}
