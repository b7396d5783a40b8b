-- Exactly-once effects: each consumer stores the next Kafka offset it has applied, per
-- partition, in the same transaction as the rows it wrote. After a crash or a rebalance, records
-- below this offset are skipped, so nothing is counted twice even though Kafka redelivers them.
CREATE TABLE consumer_offsets (
    consumer_service VARCHAR(100) NOT NULL,
    topic            VARCHAR(249) NOT NULL,
    kafka_partition  INTEGER      NOT NULL,
    next_offset      BIGINT       NOT NULL,
    updated_at       TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_service, topic, kafka_partition)
);

-- The read API and the top-100 flush look boards up by (game, period) in rank order.
CREATE INDEX idx_leaderboards_board_rank ON leaderboards (game_id, period, rank);
