-- An event id is unique within its game, not across games. With the id alone as the key, an
-- event of one game whose client-chosen id another game (or a buggy SDK) had used first was
-- dropped as a duplicate: one game could erase another's events. The id stays first, so a lookup
-- by id alone still uses the index.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (event_id, game_id);
