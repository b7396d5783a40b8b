-- GET /player/{player_id}/events pages through a player's events newest first; this index
-- serves each page as one index range scan (the seed's player_id index alone needs a sort).
CREATE INDEX idx_events_player_recent ON events (player_id, event_timestamp DESC, event_id DESC);
