"""The seed's consumers as drawn, for `scripts/bench` to compare against: one straightforward
Python process per role (confluent-kafka, psycopg, redis-py), writing as the seed's diagrams show.

- logger: an INSERT per event, committed per event;
- stats: a buffer of 100 events (or 30 s) folded per player, then per player an upsert of
  `player_statistics` and HINCRBY/HSET of `player_stats:{player}`;
- leaderboard: per scoring event ZINCRBY on the game's daily, weekly and alltime boards, and
  every 50 scoring events the top 100 of the touched boards upserted into `leaderboards`.

No retry dedup, no exactly-once, no DLQ: the seed's design has none of them, which is part of
what the comparison shows. Kafka offsets are committed after each write, as the seed says, and
without waiting for the broker: a synchronous commit per event held the logger and the
leaderboard to ~100 events/s, which would compare against a strawman.

    python seed_consumers.py ROLE TOPIC GROUP EVENTS DATABASE_URL REDIS_URL PREFIX BROKERS

Exits when EVENTS records were consumed; prints `events_per_second` from the first record read
to the last write.
"""

import json
import sys
import time

import psycopg
import redis
from confluent_kafka import Consumer, TopicPartition

SCORING = {"player_score", "quest_completed", "achievement_unlocked", "boss_defeated"}


def consumer(topic, group, brokers):
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    return c


def records(c, total):
    """Yields (message, event) until `total` records were read."""
    seen = 0
    while seen < total:
        msg = c.poll(1.0)
        if msg is None or msg.error():
            continue
        seen += 1
        yield msg, json.loads(msg.value())


def logger(c, pg, r, prefix, total):
    with pg.cursor() as cur:
        for msg, e in records(c, total):
            cur.execute(
                "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (e["event_id"], e["event_type"], e["player_id"], e["game_id"], e["timestamp"],
                 e["ingested_at"], json.dumps(e.get("data", {}))),
            )
            pg.commit()
            c.commit(msg, asynchronous=True)


def stats(c, pg, r, prefix, total):
    buffer, last_flush, last_msg = {}, time.monotonic(), None

    def flush():
        with pg.cursor() as cur:
            for player, (n, breakdown, last_event) in buffer.items():
                cur.execute(
                    "INSERT INTO player_statistics (player_id, total_events, event_breakdown) VALUES (%s, %s, %s) "
                    "ON CONFLICT (player_id) DO UPDATE SET total_events = player_statistics.total_events + EXCLUDED.total_events, "
                    "event_breakdown = player_statistics.event_breakdown || (SELECT jsonb_object_agg(key, "
                    "COALESCE((player_statistics.event_breakdown ->> key)::bigint, 0) + value::bigint) "
                    "FROM jsonb_each_text(EXCLUDED.event_breakdown)), updated_at = now()",
                    (player, n, json.dumps(breakdown)),
                )
                key = f"{prefix}player_stats:{player}"
                pipe = r.pipeline(transaction=False)
                pipe.hincrby(key, "total_events", n)
                for t, k in breakdown.items():
                    pipe.hincrby(key, f"event_{t}", k)
                pipe.hset(key, "last_event", last_event)
                pipe.execute()
        pg.commit()
        c.commit(last_msg, asynchronous=True)
        buffer.clear()

    count = 0
    for msg, e in records(c, total):
        n, breakdown, _ = buffer.get(e["player_id"], (0, {}, ""))
        breakdown[e["event_type"]] = breakdown.get(e["event_type"], 0) + 1
        buffer[e["player_id"]] = (n + 1, breakdown, e["timestamp"])
        count += 1
        last_msg = msg
        if count % 100 == 0 or time.monotonic() - last_flush > 30:
            flush()
            last_flush = time.monotonic()
    if buffer:
        flush()


def leaderboard(c, pg, r, prefix, total):
    touched, scored = set(), 0
    for msg, e in records(c, total):
        if e["event_type"] not in SCORING:
            continue
        score = int(e.get("data", {}).get("score", 0))
        for period in ("daily", "weekly", "alltime"):
            board = f"{prefix}leaderboard:{e['game_id']}:{period}"
            r.zincrby(board, score, e["player_id"])
            touched.add((e["game_id"], period, board))
        c.commit(msg, asynchronous=True)
        scored += 1
        if scored % 50 == 0:
            with pg.cursor() as cur:
                for game, period, board in touched:
                    top = r.zrevrange(board, 0, 99, withscores=True)
                    for rank, (player, s) in enumerate(top, 1):
                        cur.execute(
                            "INSERT INTO leaderboards (game_id, player_id, period, rank, score, updated_at) "
                            "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (game_id, player_id, period) "
                            "DO UPDATE SET rank = EXCLUDED.rank, score = EXCLUDED.score, updated_at = now()",
                            (game, player.decode(), period, rank, int(s)),
                        )
            pg.commit()
            touched.clear()


def main():
    role, topic, group, total, db_url, redis_url, prefix, brokers = sys.argv[1:9]
    total = int(total)
    c = consumer(topic, group, brokers)
    pg = psycopg.connect(db_url)
    db = 1 if role == "leaderboard" else 0
    r = redis.Redis.from_url(f"{redis_url.rstrip('/')}/{db}")
    # The clock starts at the first record, as the Rust drains' do (group join excluded).
    first = c.poll(60.0)
    while first is None or first.error():
        first = c.poll(1.0)
    started = time.monotonic()
    # Rewind to the first record: it is part of the work.
    c.seek(TopicPartition(first.topic(), first.partition(), first.offset()))
    {"logger": logger, "stats": stats, "leaderboard": leaderboard}[role](c, pg, r, prefix, total)
    print(f"{total / (time.monotonic() - started):.1f}")
    c.close()


if __name__ == "__main__":
    main()
