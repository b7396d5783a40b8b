-- Forgetting a player (GDPR article 17): one tombstone per forgotten player id, kept for good.
-- The consumers drop every later record of the id (on the topic for up to its retention, in
-- flight, replayed from the DLQ); each role fills in what it removed once its stores hold
-- nothing of the player. A forgotten id is never counted again (there is no "unforget").
CREATE TABLE forgotten_players (
    player_id                VARCHAR(100) PRIMARY KEY,
    forgotten_at             TIMESTAMPTZ  NOT NULL DEFAULT now(),
    -- The key id of the admin key, or `cli:<user>` for `gamemetrics players forget`.
    requested_by             VARCHAR(120) NOT NULL,
    events_removed           BIGINT,
    dlq_removed              BIGINT,
    logger_done_at           TIMESTAMPTZ,
    statistics_removed       BIGINT,
    stats_done_at            TIMESTAMPTZ,
    leaderboard_rows_removed BIGINT,
    leaderboard_done_at      TIMESTAMPTZ
);

-- Every request to forget, the repeats too: who asked, when, and how.
CREATE TABLE player_forget_requests (
    id           BIGSERIAL    PRIMARY KEY,
    player_id    VARCHAR(100) NOT NULL,
    requested_by VARCHAR(120) NOT NULL,
    requested_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    via          VARCHAR(10)  NOT NULL
);
CREATE INDEX idx_player_forget_requests_player ON player_forget_requests (player_id);
