DROP INDEX idx_leaderboards_board_rank;
DROP TABLE consumer_offsets;
