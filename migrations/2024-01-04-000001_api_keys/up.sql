-- Per-game API keys. Only a SHA-256 of the secret part is stored; the key itself is shown once,
-- when it is created. `key_id` is the public part of the key, used to find the row.
CREATE TABLE api_keys (
    key_id        VARCHAR(16)  PRIMARY KEY,
    game_id       VARCHAR(100) NOT NULL,
    secret_sha256 VARCHAR(64)  NOT NULL,
    rate_limit_rps INTEGER,
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    revoked_at    TIMESTAMPTZ
);
CREATE INDEX idx_api_keys_game_id ON api_keys (game_id);
