-- `gamemetrics dlq replay`: when a dead letter was last produced to the topic again, and how
-- many times.
ALTER TABLE dlq ADD COLUMN replayed_at TIMESTAMPTZ;
ALTER TABLE dlq ADD COLUMN replay_count INTEGER NOT NULL DEFAULT 0;
