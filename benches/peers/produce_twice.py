"""Produces the same N events twice for scripts/bench-connect: as gamemetrics' consumers read
them (the API's wire JSON) to one topic, and in Kafka Connect's JSON-with-schema envelope (what
a JDBC sink needs to know the columns) to another. Events spread over 20,000 players and 50
games, like scripts/bench's.

    python produce_twice.py BROKERS PLAIN_TOPIC ENVELOPE_TOPIC N
"""

import json
import sys
import uuid
from datetime import datetime, timezone

from confluent_kafka import Producer

TYPES = ["player_score", "quest_completed", "achievement_unlocked", "boss_defeated",
         "player_level_up", "session_start"]

# Debezium's semantic types tell its JDBC sink to bind uuid, timestamptz and jsonb columns.
SCHEMA = {
    "type": "struct", "name": "gamemetrics.event", "optional": False,
    "fields": [
        {"field": "event_id", "type": "string", "name": "io.debezium.data.Uuid", "optional": False},
        {"field": "event_type", "type": "string", "optional": False},
        {"field": "player_id", "type": "string", "optional": False},
        {"field": "game_id", "type": "string", "optional": False},
        {"field": "event_timestamp", "type": "string", "name": "io.debezium.time.ZonedTimestamp", "optional": False},
        {"field": "ingested_at", "type": "string", "name": "io.debezium.time.ZonedTimestamp", "optional": False},
        {"field": "data", "type": "string", "name": "io.debezium.data.Json", "optional": False},
    ],
}


def main():
    brokers, plain, envelope, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    p = Producer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": 5})
    for i in range(n):
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        event = {
            "event_id": str(uuid.uuid4()),
            "event_type": TYPES[i % 6],
            "player_id": f"player-{i % 20000}",
            "game_id": f"game-{(i // 7) % 50}",
            "timestamp": now,
            "ingested_at": now,
            "data": {"score": i % 500},
        }
        key = event["player_id"].encode()
        p.produce(plain, key=key, value=json.dumps(event).encode())
        row = dict(event, event_timestamp=event["timestamp"], data=json.dumps(event["data"]))
        del row["timestamp"]
        p.produce(envelope, key=key, value=json.dumps({"schema": SCHEMA, "payload": row}).encode())
        if i % 10000 == 0:
            p.flush()
    p.flush()


if __name__ == "__main__":
    main()
