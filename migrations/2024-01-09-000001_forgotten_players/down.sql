DROP TABLE player_forget_requests;
DROP TABLE forgotten_players;
