DROP INDEX idx_events_player_recent;
