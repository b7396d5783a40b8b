//! Property tests of what the outside world can hand us: a request body (`IngestRequest::parse`)
//! and a Kafka record value (`source::parse`). Any bytes give a typed error or a valid event,
//! never a panic; what the API accepted and wrote to the topic parses back to the same event.

use chrono::{DateTime, Duration, TimeZone, Utc};
use gamemetrics::actors::messages::Payload;
use gamemetrics::actors::source::parse;
use gamemetrics::domain::{EventLimits, IngestRequest};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn limits() -> EventLimits {
    EventLimits {
        max_data_bytes: 16 * 1024,
        max_future_skew: Duration::seconds(300),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 12, 0, 0)
        .single()
        .expect("a time")
}

/// Names as clients send them: mostly plain, sometimes anything at all (control characters,
/// invisible ones, empty, too long), so both the accepted and the refused paths run.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9_-]{0,20}",
        1 => any::<String>(),
        1 => "\\PC{95,105}",
    ]
}

/// JSON values of a few levels, with integers at the edges of 64 bits, floats, and strings from
/// `strings`.
fn json_value(strings: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        strings.prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// An event body, valid or not in every field.
fn body() -> impl Strategy<Value = Value> {
    (
        name(),
        name(),
        name(),
        prop_oneof![
            Just(None),
            (0i64..4_000_000_000).prop_map(|s| Some(json!(Utc
                .timestamp_opt(s, 123_456_000)
                .single()
                .map(|t| t.to_rfc3339())))),
            any::<String>().prop_map(|s| Some(json!(s))),
        ],
        prop_oneof![
            Just(None),
            any::<u128>().prop_map(|u| Some(json!(uuid::Uuid::from_u128(u))))
        ],
        json_value(any::<String>().boxed()),
    )
        .prop_map(|(ty, player, game, ts, id, data)| {
            let mut b = json!({"event_type": ty, "player_id": player, "game_id": game, "data": data});
            if let Some(ts) = ts {
                b["timestamp"] = ts;
            }
            if let Some(id) = id {
                b["event_id"] = id;
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_bytes_are_a_typed_answer_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = IngestRequest::parse(&bytes, &limits(), now());
        match parse(Some(&bytes)) {
            Payload::Event(_) | Payload::Poison { .. } => {}
            other => prop_assert!(false, "a record value parses to an event or poison, got {other:?}"),
        }
    }

    #[test]
    fn any_json_body_is_accepted_or_refused_with_a_field_and_code(body in body()) {
        let bytes = serde_json::to_vec(&body).expect("json");
        match IngestRequest::parse(&bytes, &limits(), now()) {
            Ok(event) => {
                // What the API accepts, the consumers read back as the same event.
                match parse(Some(&event.to_wire())) {
                    Payload::Event(read) => prop_assert_eq!(read, event),
                    other => prop_assert!(false, "an accepted event came back as {other:?}"),
                }
            }
            Err(e) => prop_assert!(!e.code.is_empty() && !e.to_string().is_empty()),
        }
    }

    #[test]
    fn a_valid_event_survives_the_wire_unchanged(
        ty in "[a-z][a-z_]{0,20}",
        player in "[a-zA-Z0-9_.:-]{1,40}",
        game in "[a-z0-9-]{1,20}",
        secs in 0i64..1_705_320_000,
        micros in 0u32..1_000_000,
        // Printable text: a NUL or control character is refused, by design (the other tests
        // send those).
        data in prop::collection::btree_map("[a-z]{1,8}", json_value("[ -~]{0,20}".boxed()), 0..6),
    ) {
        let ts = Utc.timestamp_opt(secs, micros * 1_000).single().expect("a time");
        let body = json!({"event_type": ty, "player_id": player, "game_id": game,
                          "timestamp": ts.to_rfc3339(), "data": data});
        let event = IngestRequest::parse(&serde_json::to_vec(&body).expect("json"), &limits(), now());
        let event = event.expect("a plain event is accepted");
        prop_assert_eq!(event.timestamp, ts);
        match parse(Some(&event.to_wire())) {
            Payload::Event(read) => prop_assert_eq!(read, event),
            other => prop_assert!(false, "came back as {other:?}"),
        }
    }
}
