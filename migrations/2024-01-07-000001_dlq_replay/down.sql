ALTER TABLE dlq DROP COLUMN replay_count;
ALTER TABLE dlq DROP COLUMN replayed_at;
