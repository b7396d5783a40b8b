//! `GameEvent`: one player event, as accepted over HTTP and written to Kafka.

use super::{EventType, GameId, PlayerId, ValidationError};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A valid player event. Its JSON form is the Kafka message value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GameEvent {
    /// Client-supplied (for idempotent retries) or generated at ingest.
    pub event_id: Uuid,
    pub event_type: EventType,
    pub player_id: PlayerId,
    pub game_id: GameId,
    /// When it happened, by the client's clock (UTC, microseconds).
    #[serde(serialize_with = "rfc3339_micros")]
    pub timestamp: DateTime<Utc>,
    /// When the ingestion API accepted it (UTC, microseconds).
    #[serde(serialize_with = "rfc3339_micros")]
    pub ingested_at: DateTime<Utc>,
    /// Free-form, game-defined payload; always a JSON object.
    pub data: Map<String, Value>,
}

/// Timestamps are written with exactly microsecond precision, PostgreSQL's, so the value on the
/// topic, the row in `events` and the API's answers agree to the digit.
fn rfc3339_micros<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

impl GameEvent {
    /// The JSON bytes written as the Kafka message value.
    pub fn to_wire(&self) -> Vec<u8> {
        // Serializing a struct of strings, timestamps and a JSON map cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The event's id scoped to its game: what retry claims are keyed by. Ids are unique per game
    /// (`events` is keyed by id and game), so one game reusing another's id is a different
    /// event, not a retry. A name-based UUID (v5) keeps the claim key short and fixed in size.
    pub fn scoped_id(&self) -> Uuid {
        Uuid::new_v5(&self.event_id, self.game_id.as_str().as_bytes())
    }

    /// Parses a Kafka message value back into an event.
    pub fn from_wire(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The limits an incoming event is checked against; from `HttpConfig`.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Largest `data` object, serialized, in bytes.
    pub max_data_bytes: usize,
    /// How far past the server's clock a `timestamp` may be.
    pub max_future_skew: chrono::Duration,
}

/// The fields a client may send; anything else is refused so typos don't pass silently.
pub const ALLOWED_FIELDS: [&str; 6] = [
    "event_id",
    "event_type",
    "player_id",
    "game_id",
    "timestamp",
    "data",
];

/// The body of `POST /api/v1/events`, parsed field by field so each error names its field.
pub struct IngestRequest;

impl IngestRequest {
    /// Parses and validates one event from a request body, stamping `ingested_at = now`.
    pub fn parse(
        body: &[u8],
        limits: &EventLimits,
        now: DateTime<Utc>,
    ) -> Result<GameEvent, ValidationError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ValidationError::body("invalid_json", format!("body is not valid JSON: {e}")))?;
        if let Some(literal) = oversized_integer(body) {
            return Err(ValidationError::field(
                "data",
                "invalid_field",
                format!(
                    "the integer {literal} does not fit in 64 bits and would be stored rounded; \
                     send it as a string"
                ),
            ));
        }
        Self::from_value(value, limits, now)
    }

    /// Validates one already-decoded JSON value (also used for items of a batch).
    pub fn from_value(
        value: Value,
        limits: &EventLimits,
        now: DateTime<Utc>,
    ) -> Result<GameEvent, ValidationError> {
        let Value::Object(mut obj) = value else {
            return Err(ValidationError::body(
                "invalid_body",
                "body must be a JSON object",
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| !ALLOWED_FIELDS.contains(&k.as_str())) {
            return Err(ValidationError::field(
                unknown,
                "unknown_field",
                format!(
                    "unknown field `{unknown}`; allowed fields are {}",
                    ALLOWED_FIELDS.join(", ")
                ),
            ));
        }
        let now = now.trunc_subsecs(6);

        let event_type = EventType::parse(visible(required_string(&mut obj, "event_type")?, "event_type")?)?;
        let player_id = PlayerId::parse(visible(required_string(&mut obj, "player_id")?, "player_id")?)?;
        let game_id = GameId::parse(visible(required_string(&mut obj, "game_id")?, "game_id")?)?;
        let event_id = match obj.remove("event_id") {
            None | Some(Value::Null) => Uuid::now_v7(),
            Some(v) => parse_event_id(v)?,
        };
        let timestamp = match obj.remove("timestamp") {
            None | Some(Value::Null) => now,
            Some(v) => parse_timestamp(v, now, limits)?,
        };
        let data = match obj.remove("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => check_data(map, limits)?,
            Some(other) => {
                return Err(ValidationError::field(
                    "data",
                    "invalid_field",
                    format!("data must be a JSON object, got {}", json_kind(&other)),
                ))
            }
        };
        Ok(GameEvent {
            event_id,
            event_type,
            player_id,
            game_id,
            timestamp,
            ingested_at: now,
            data,
        })
    }
}

/// Refuses names holding characters that render as nothing or reorder the text around them
/// (zero-width spaces and joiners, direction marks and overrides, line and paragraph separators,
/// the byte order mark, tag characters): two ids that look the same must be the same id. Only at
/// ingest: events already on the topic stay readable.
fn visible(value: String, field: &str) -> Result<String, ValidationError> {
    let invisible = |c: char| {
        matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}')
    };
    match value.chars().find(|&c| invisible(c)) {
        Some(c) => Err(ValidationError::field(
            field,
            "invalid_field",
            format!(
                "{field} must not contain invisible or text-direction characters (found U+{:04X})",
                u32::from(c)
            ),
        )),
        None => Ok(value),
    }
}

/// The first integer literal in a JSON text that fits neither i64 nor u64. serde_json (like
/// JavaScript) reads one as a double, so it would be stored rounded without a word.
fn oversized_integer(json: &[u8]) -> Option<String> {
    let mut in_string = false;
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < json.len()
                && (json[i].is_ascii_digit() || matches!(json[i], b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                i += 1;
            }
            let literal = std::str::from_utf8(&json[start..i]).unwrap_or_default();
            let integer = !literal.contains(['.', 'e', 'E']);
            if integer && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                return Some(literal.to_owned());
            }
            continue;
        }
        i += 1;
    }
    None
}

fn required_string(obj: &mut Map<String, Value>, field: &str) -> Result<String, ValidationError> {
    match obj.remove(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ValidationError::field(
            field,
            "missing_field",
            format!("{field} is required"),
        )),
        Some(other) => Err(ValidationError::field(
            field,
            "invalid_field",
            format!("{field} must be a string, got {}", json_kind(&other)),
        )),
    }
}

fn parse_event_id(v: Value) -> Result<Uuid, ValidationError> {
    let invalid = |why: String| {
        ValidationError::field(
            "event_id",
            "invalid_field",
            format!("event_id must be a UUID{why}"),
        )
    };
    let Value::String(s) = v else {
        return Err(invalid(format!(", got {}", json_kind(&v))));
    };
    let id = Uuid::parse_str(&s).map_err(|e| invalid(format!(": {e}")))?;
    if id.is_nil() {
        return Err(invalid(", not the nil UUID".into()));
    }
    Ok(id)
}

fn parse_timestamp(
    v: Value,
    now: DateTime<Utc>,
    limits: &EventLimits,
) -> Result<DateTime<Utc>, ValidationError> {
    let invalid = |why: String| {
        ValidationError::field(
            "timestamp",
            "invalid_field",
            format!("timestamp must be an RFC 3339 date-time such as 2024-01-15T10:30:00Z{why}"),
        )
    };
    let Value::String(s) = v else {
        return Err(invalid(format!(", got {}", json_kind(&v))));
    };
    let ts = DateTime::parse_from_rfc3339(&s)
        .map_err(|e| invalid(format!(": {e}")))?
        .with_timezone(&Utc)
        .trunc_subsecs(6);
    if ts > now + limits.max_future_skew {
        return Err(ValidationError::field(
            "timestamp",
            "timestamp_in_future",
            format!(
                "timestamp {s} is more than {} s ahead of the server clock",
                limits.max_future_skew.num_seconds()
            ),
        ));
    }
    Ok(ts)
}

fn check_data(map: Map<String, Value>, limits: &EventLimits) -> Result<Map<String, Value>, ValidationError> {
    let encoded = serde_json::to_string(&map).unwrap_or_default();
    if encoded.len() > limits.max_data_bytes {
        return Err(ValidationError::field(
            "data",
            "too_large",
            format!(
                "data is {} bytes serialized; the limit is {}",
                encoded.len(),
                limits.max_data_bytes
            ),
        ));
    }
    // JSONB cannot hold U+0000; refusing it here keeps it from becoming a poison message later.
    // The decoded strings are searched, not the text: `"\\u0000"` (a backslash, then `u0000`)
    // is harmless.
    if map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)) {
        return Err(ValidationError::field(
            "data",
            "invalid_field",
            "data must not contain the NUL character (\\u0000), which PostgreSQL cannot store",
        ));
    }
    Ok(map)
}

/// True when a string or key anywhere in `v` holds U+0000. Recursion is bounded by
/// serde_json's nesting limit (128) on everything parsed.
pub fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> EventLimits {
        EventLimits {
            max_data_bytes: 64,
            max_future_skew: chrono::Duration::seconds(300),
        }
    }

    fn now() -> DateTime<Utc> {
        "2024-01-15T10:30:01.123456789Z".parse().unwrap()
    }

    fn parse(v: Value) -> Result<GameEvent, ValidationError> {
        IngestRequest::from_value(v, &limits(), now())
    }

    fn base() -> Value {
        json!({"event_type":"player_score","player_id":"player-001","game_id":"game-001",
               "timestamp":"2024-01-15T10:30:00Z","data":{"score":1500}})
    }

    #[test]
    fn a_valid_event_round_trips_through_the_wire_format() {
        let ev = parse(base()).unwrap();
        assert_eq!(
            ev.ingested_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "2024-01-15T10:30:01.123456Z"
        );
        let wire: Value = serde_json::from_slice(&ev.to_wire()).unwrap();
        assert_eq!(wire["timestamp"], "2024-01-15T10:30:00.000000Z");
        assert_eq!(wire["data"]["score"], 1500);
        assert_eq!(GameEvent::from_wire(&ev.to_wire()).unwrap(), ev);
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let ev = parse(json!({"event_type":"a","player_id":"p","game_id":"g"})).unwrap();
        assert_eq!(ev.timestamp, ev.ingested_at);
        assert!(ev.data.is_empty());
        // Time-ordered (v7), so the ids the API issues append to the primary-key index.
        assert_eq!(ev.event_id.get_version_num(), 7);
        let later = parse(json!({"event_type":"a","player_id":"p","game_id":"g"})).unwrap();
        assert!(later.event_id > ev.event_id);
    }

    #[test]
    fn a_client_event_id_is_kept() {
        let mut v = base();
        v["event_id"] = json!("550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(
            parse(v).unwrap().event_id.to_string(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"event_type":"a","player_id":"p"}),
                "game_id",
                "missing_field",
            ),
            (
                json!({"event_type":1,"player_id":"p","game_id":"g"}),
                "event_type",
                "invalid_field",
            ),
            (
                json!({"event_type":"a","player_id":"p","game_id":"g","extra":1}),
                "extra",
                "unknown_field",
            ),
            (
                json!({"event_type":"a","player_id":"p","game_id":"g","timestamp":"yesterday"}),
                "timestamp",
                "invalid_field",
            ),
            (
                json!({"event_type":"a","player_id":"p","game_id":"g","timestamp":"2030-01-01T00:00:00Z"}),
                "timestamp",
                "timestamp_in_future",
            ),
            (
                json!({"event_type":"a","player_id":"p","game_id":"g","data":[1]}),
                "data",
                "invalid_field",
            ),
            (
                json!({"event_type":"a","player_id":"p","game_id":"g","data":{"k":"x".repeat(100)}}),
                "data",
                "too_large",
            ),
            (
                json!({"event_type":"a","player_id":"p","game_id":"g","data":{"k":"\u{0}"}}),
                "data",
                "invalid_field",
            ),
            (
                json!({"event_type":"a","player_id":"p","game_id":"g","event_id":"nope"}),
                "event_id",
                "invalid_field",
            ),
        ];
        for (body, field, code) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(
                (err.field.as_deref(), err.code),
                (Some(field), code),
                "{body}: {}",
                err.message
            );
        }
        assert_eq!(parse(json!([1])).unwrap_err().code, "invalid_body");
        assert_eq!(
            IngestRequest::parse(b"{", &limits(), now()).unwrap_err().code,
            "invalid_json"
        );
    }

    #[test]
    fn a_timestamp_within_the_skew_is_accepted_and_normalized_to_utc() {
        let mut v = base();
        v["timestamp"] = json!("2024-01-15T12:34:00+02:00");
        assert_eq!(
            parse(v).unwrap().timestamp.to_rfc3339(),
            "2024-01-15T10:34:00+00:00"
        );
    }
}
