-- The four tables of the design (seed section 4). Column names, types and primary keys follow
-- the seed; every timestamp is TIMESTAMPTZ so a server's time zone can never shift an event.

-- Raw events, one row per accepted event, written by the logger consumer.
CREATE TABLE events (
    event_id        UUID PRIMARY KEY,
    event_type      VARCHAR(100) NOT NULL,
    player_id       VARCHAR(100) NOT NULL,
    game_id         VARCHAR(100) NOT NULL,
    event_timestamp TIMESTAMPTZ  NOT NULL,
    ingested_at     TIMESTAMPTZ  NOT NULL,
    data            JSONB        NOT NULL DEFAULT '{}'::jsonb,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX idx_events_event_type ON events (event_type);
CREATE INDEX idx_events_player_id ON events (player_id);
CREATE INDEX idx_events_game_id ON events (game_id);
CREATE INDEX idx_events_event_timestamp ON events (event_timestamp DESC);

-- Per-player aggregates, upserted in batches by the stats aggregator.
CREATE TABLE player_statistics (
    player_id       VARCHAR(100) PRIMARY KEY,
    total_events    INTEGER      NOT NULL DEFAULT 0,
    event_breakdown JSONB        NOT NULL DEFAULT '{}'::jsonb,
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);

-- The top 100 of each game and period, flushed periodically by the leaderboard manager.
CREATE TABLE leaderboards (
    game_id    VARCHAR(100) NOT NULL,
    player_id  VARCHAR(100) NOT NULL,
    period     VARCHAR(50)  NOT NULL,
    rank       INTEGER      NOT NULL,
    score      BIGINT       NOT NULL,
    updated_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    created_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (game_id, player_id, period)
);
CREATE INDEX idx_leaderboards_rank ON leaderboards (rank);
CREATE INDEX idx_leaderboards_score ON leaderboards (score DESC);

-- Messages a consumer can never apply, with the reason.
CREATE TABLE dlq (
    id               SERIAL PRIMARY KEY,
    original_event   JSONB        NOT NULL,
    error_message    TEXT         NOT NULL,
    consumer_service VARCHAR(100) NOT NULL,
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    -- Not in the seed: where the message sits on the topic, so an operator can find and
    -- replay it, and so a message re-read after a consumer crash is dead-lettered only once.
    kafka_topic      VARCHAR(249),
    kafka_partition  INTEGER,
    kafka_offset     BIGINT
);
CREATE UNIQUE INDEX idx_dlq_source_position
    ON dlq (consumer_service, kafka_topic, kafka_partition, kafka_offset);
