-- Keeps, per partition, the most recently updated row of any log: the old key holds only one.
DROP INDEX idx_dlq_source_position;
ALTER TABLE dlq DROP COLUMN kafka_topic_id;
DELETE FROM dlq a USING dlq b
 WHERE a.id > b.id AND a.consumer_service = b.consumer_service AND a.kafka_topic = b.kafka_topic
   AND a.kafka_partition = b.kafka_partition AND a.kafka_offset = b.kafka_offset;
CREATE UNIQUE INDEX idx_dlq_source_position
    ON dlq (consumer_service, kafka_topic, kafka_partition, kafka_offset);

DELETE FROM consumer_offsets a USING consumer_offsets b
 WHERE a.consumer_service = b.consumer_service AND a.topic = b.topic
   AND a.kafka_partition = b.kafka_partition AND a.topic_id <> b.topic_id
   AND (a.updated_at, a.topic_id) < (b.updated_at, b.topic_id);
ALTER TABLE consumer_offsets DROP CONSTRAINT consumer_offsets_pkey;
ALTER TABLE consumer_offsets DROP COLUMN topic_id;
ALTER TABLE consumer_offsets ADD PRIMARY KEY (consumer_service, topic, kafka_partition);
