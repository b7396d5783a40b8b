-- Offsets only mean something within one log. A topic deleted and created again, the same topic
-- name on another cluster, or the embedded broker all start at offset 0 again, and a guard keyed
-- by the topic's name alone skipped every new record as "already applied". Kafka gives each
-- topic a permanent id (KIP-516); the guards and the DLQ's dedup key now include it.
-- Rows written before this migration have topic_id '' until a consumer adopts them (the first
-- consumer that finds a legacy row whose offset the current log has reached takes it over).
ALTER TABLE consumer_offsets ADD COLUMN topic_id VARCHAR(32) NOT NULL DEFAULT '';
ALTER TABLE consumer_offsets DROP CONSTRAINT consumer_offsets_pkey;
ALTER TABLE consumer_offsets ADD PRIMARY KEY (consumer_service, topic, kafka_partition, topic_id);

ALTER TABLE dlq ADD COLUMN kafka_topic_id VARCHAR(32) NOT NULL DEFAULT '';
DROP INDEX idx_dlq_source_position;
CREATE UNIQUE INDEX idx_dlq_source_position
    ON dlq (consumer_service, kafka_topic, kafka_topic_id, kafka_partition, kafka_offset);
