-- The top-N flush rewrites ranks and scores of most rows of a board whenever a score moves in
-- its top 100. With an index on rank or score every such row is a new tuple plus an entry in
-- every index; with only the primary key (whose columns never change) and free room on each
-- page, PostgreSQL writes the new version on the same page and touches no index (a HOT
-- update): ~4x less work per flush, measured (docs/performance.md, "The top-N flush and the
-- Redis thread"). The table is bounded (top 100 x 3 periods per game), so the primary key's
-- leading game_id serves every read of a board, and a query across games scans 300 rows a game.
DROP INDEX IF EXISTS idx_leaderboards_rank;
DROP INDEX IF EXISTS idx_leaderboards_score;
DROP INDEX IF EXISTS idx_leaderboards_board_rank;
ALTER TABLE leaderboards SET (fillfactor = 50);
