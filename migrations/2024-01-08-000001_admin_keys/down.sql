DELETE FROM api_keys WHERE is_admin;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_admin_or_one_game;
ALTER TABLE api_keys ALTER COLUMN game_id SET NOT NULL;
ALTER TABLE api_keys DROP COLUMN is_admin;
