-- Admin keys (`gamemetrics keys create --admin`): tied to no game; they read every game and
-- administer (forgetting players), and write no events.
ALTER TABLE api_keys ADD COLUMN is_admin BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE api_keys ALTER COLUMN game_id DROP NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_admin_or_one_game
    CHECK ((is_admin AND game_id IS NULL) OR (NOT is_admin AND game_id IS NOT NULL));
