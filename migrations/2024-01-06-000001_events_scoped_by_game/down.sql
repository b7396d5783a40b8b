-- The id alone can key only one row per id: the first ingested of each is kept.
DELETE FROM events a USING events b
 WHERE a.event_id = b.event_id AND (a.ingested_at, a.game_id) > (b.ingested_at, b.game_id);
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (event_id);
