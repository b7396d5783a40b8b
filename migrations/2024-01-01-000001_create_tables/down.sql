DROP TABLE dlq;
DROP TABLE leaderboards;
DROP TABLE player_statistics;
DROP TABLE events;
