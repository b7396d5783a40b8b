// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (key_id) {
        #[max_length = 16]
        key_id -> Varchar,
        #[max_length = 100]
        game_id -> Nullable<Varchar>,
        #[max_length = 64]
        secret_sha256 -> Varchar,
        rate_limit_rps -> Nullable<Int4>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        is_admin -> Bool,
    }
}

diesel::table! {
    consumer_offsets (consumer_service, topic, kafka_partition, topic_id) {
        #[max_length = 100]
        consumer_service -> Varchar,
        #[max_length = 249]
        topic -> Varchar,
        kafka_partition -> Int4,
        next_offset -> Int8,
        updated_at -> Timestamptz,
        #[max_length = 32]
        topic_id -> Varchar,
    }
}

diesel::table! {
    dlq (id) {
        id -> Int4,
        original_event -> Jsonb,
        error_message -> Text,
        #[max_length = 100]
        consumer_service -> Varchar,
        created_at -> Timestamptz,
        #[max_length = 249]
        kafka_topic -> Nullable<Varchar>,
        kafka_partition -> Nullable<Int4>,
        kafka_offset -> Nullable<Int8>,
        #[max_length = 32]
        kafka_topic_id -> Varchar,
        replayed_at -> Nullable<Timestamptz>,
        replay_count -> Int4,
    }
}

diesel::table! {
    events (event_id, game_id) {
        event_id -> Uuid,
        #[max_length = 100]
        event_type -> Varchar,
        #[max_length = 100]
        player_id -> Varchar,
        #[max_length = 100]
        game_id -> Varchar,
        event_timestamp -> Timestamptz,
        ingested_at -> Timestamptz,
        data -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    forgotten_players (player_id) {
        #[max_length = 100]
        player_id -> Varchar,
        forgotten_at -> Timestamptz,
        #[max_length = 120]
        requested_by -> Varchar,
        events_removed -> Nullable<Int8>,
        dlq_removed -> Nullable<Int8>,
        logger_done_at -> Nullable<Timestamptz>,
        statistics_removed -> Nullable<Int8>,
        stats_done_at -> Nullable<Timestamptz>,
        leaderboard_rows_removed -> Nullable<Int8>,
        leaderboard_done_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    leaderboards (game_id, player_id, period) {
        #[max_length = 100]
        game_id -> Varchar,
        #[max_length = 100]
        player_id -> Varchar,
        #[max_length = 50]
        period -> Varchar,
        rank -> Int4,
        score -> Int8,
        updated_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    player_forget_requests (id) {
        id -> Int8,
        #[max_length = 100]
        player_id -> Varchar,
        #[max_length = 120]
        requested_by -> Varchar,
        requested_at -> Timestamptz,
        #[max_length = 10]
        via -> Varchar,
    }
}

diesel::table! {
    player_statistics (player_id) {
        #[max_length = 100]
        player_id -> Varchar,
        total_events -> Int4,
        event_breakdown -> Jsonb,
        updated_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    consumer_offsets,
    dlq,
    events,
    forgotten_players,
    leaderboards,
    player_forget_requests,
    player_statistics,
);
