ALTER TABLE leaderboards RESET (fillfactor);
CREATE INDEX idx_leaderboards_rank ON leaderboards (rank);
CREATE INDEX idx_leaderboards_score ON leaderboards (score DESC);
CREATE INDEX idx_leaderboards_board_rank ON leaderboards (game_id, period, rank);
