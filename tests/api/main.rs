//! Integration tests against the real stack: a real Kafka broker (`KAFKA_BROKERS`, default
//! 127.0.0.1:9092), PostgreSQL (`DATABASE_URL`) and Redis. `scripts/test` starts all three.
//! Each test gets its own topic and database schema, so they run in parallel.

mod auth;
mod backlog;
mod board_writes;
mod consumers;
mod contract;
mod crash;
mod dashboard;
mod dlq;
mod forget;
mod helpers;
mod hostile;
mod ingest;
mod migrations;
mod model;
mod monitoring;
mod ops;
mod postgres_tls;
mod proxy;
mod queries;
mod read_replica;
mod readiness;
mod rebuild;
mod redis_cluster;
mod redis_failover;
mod redis_replies;
mod redis_tls;
mod refused;
mod shutdown;
mod start_over;
