//! `GameEvent`: one player event, as accepted over HTTP and written to Kafka.

use super::{EventType, GameId, PlayerId, ValidationError};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
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
        let invalid_json = |e: serde_json::Error| {
            ValidationError::body("invalid_json", format!("body is not valid JSON: {e}"))
        };
        let members = Members::read(body).map_err(|e| {
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                // JSON, but not an object.
                Ok(_) if e.is_data() => ValidationError::body("invalid_body", "body must be a JSON object"),
                Ok(_) => invalid_json(e),
                Err(syntax) => invalid_json(syntax),
            }
        })?;
        if let Some(unknown) = &members.unknown {
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

        let event_type =
            EventType::parse(visible(members.required_string(Field::EventType)?, "event_type")?)?;
        let player_id = PlayerId::parse(visible(members.required_string(Field::PlayerId)?, "player_id")?)?;
        let game_id = GameId::parse(visible(members.required_string(Field::GameId)?, "game_id")?)?;
        let event_id = match members.get(Field::EventId) {
            None => Uuid::now_v7(),
            Some(v) => parse_event_id(v)?,
        };
        let timestamp = match members.get(Field::Timestamp) {
            None => now,
            Some(v) => parse_timestamp(v, now, limits)?,
        };
        let data = match members.get(Field::Data) {
            None => Map::new(),
            Some(v) if Kind::of(v) == Kind::Object => {
                if let Some(literal) = oversized_integer(v.get().as_bytes()) {
                    return Err(ValidationError::field(
                        "data",
                        "invalid_field",
                        format!(
                            "the integer {literal} does not fit in 64 bits and would be stored \
                             rounded; send it as a string"
                        ),
                    ));
                }
                check_data(serde_json::from_str(v.get()).map_err(invalid_json)?, limits)?
            }
            Some(other) => {
                return Err(ValidationError::field(
                    "data",
                    "invalid_field",
                    format!("data must be a JSON object, got {}", Kind::of(other)),
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

/// An event's fields, in [`ALLOWED_FIELDS`]' order.
#[derive(Debug, Clone, Copy)]
enum Field {
    EventId,
    EventType,
    PlayerId,
    GameId,
    Timestamp,
    Data,
}

impl Field {
    fn name(self) -> &'static str {
        ALLOWED_FIELDS[self as usize]
    }
}

/// The members of an ingest body, each still the text it was sent as: the body is read once,
/// without building a tree of it, and each field is decoded from its own text.
#[derive(Default)]
struct Members<'a> {
    /// Indexed by [`Field`]. As in any JSON object read, a repeated member's last value counts.
    fields: [Option<&'a RawValue>; ALLOWED_FIELDS.len()],
    /// The first member, in the order sent, that no event has.
    unknown: Option<String>,
}

impl<'a> Members<'a> {
    /// Fails with a data error when the body is JSON but not an object, and a syntax error when
    /// it is not JSON (including anything after the object).
    fn read(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        use serde::de::{Deserializer as _, MapAccess, Visitor};
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Members::default();
                while let Some(MemberName(name)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    match name {
                        Ok(index) => members.fields[index] = Some(value),
                        Err(unknown) => {
                            members.unknown.get_or_insert(unknown);
                        }
                    }
                }
                Ok(members)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let members = (&mut de).deserialize_map(MembersVisitor)?;
        de.end()?;
        Ok(members)
    }

    /// The field's text, unless absent or `null` (which mean the same).
    fn get(&self, field: Field) -> Option<&'a RawValue> {
        self.fields[field as usize].filter(|v| v.get() != "null")
    }

    fn required_string(&self, field: Field) -> Result<String, ValidationError> {
        let name = field.name();
        match self.get(field) {
            None => Err(ValidationError::field(
                name,
                "missing_field",
                format!("{name} is required"),
            )),
            Some(v) => json_string(v, name),
        }
    }
}

/// A member's name: the index of an event field, or the unknown name.
struct MemberName(Result<usize, String>);

impl<'de> Deserialize<'de> for MemberName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl serde::de::Visitor<'_> for NameVisitor {
            type Value = MemberName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<MemberName, E> {
                Ok(MemberName(
                    ALLOWED_FIELDS
                        .iter()
                        .position(|f| *f == name)
                        .ok_or_else(|| name.to_owned()),
                ))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

/// What kind of JSON value a member's text is (the text is valid JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    String,
    Array,
    Object,
    Number,
}

impl Kind {
    fn of(v: &RawValue) -> Kind {
        match v.get().as_bytes().first() {
            Some(b'n') => Kind::Null,
            Some(b't' | b'f') => Kind::Boolean,
            Some(b'"') => Kind::String,
            Some(b'[') => Kind::Array,
            Some(b'{') => Kind::Object,
            _ => Kind::Number,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Null => "null",
            Kind::Boolean => "a boolean",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
            Kind::Number => "a number",
        })
    }
}

/// A member that must be a string, decoded (escapes resolved).
fn json_string(v: &RawValue, field: &str) -> Result<String, ValidationError> {
    if Kind::of(v) != Kind::String {
        return Err(ValidationError::field(
            field,
            "invalid_field",
            format!("{field} must be a string, got {}", Kind::of(v)),
        ));
    }
    serde_json::from_str(v.get())
        .map_err(|e| ValidationError::field(field, "invalid_field", format!("{field}: {e}")))
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
    // Every such character is outside ASCII, which most ids are.
    if value.is_ascii() {
        return Ok(value);
    }
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

fn parse_event_id(v: &RawValue) -> Result<Uuid, ValidationError> {
    let invalid = |why: String| {
        ValidationError::field(
            "event_id",
            "invalid_field",
            format!("event_id must be a UUID{why}"),
        )
    };
    if Kind::of(v) != Kind::String {
        return Err(invalid(format!(", got {}", Kind::of(v))));
    }
    let s = json_string(v, "event_id")?;
    let id = Uuid::parse_str(&s).map_err(|e| invalid(format!(": {e}")))?;
    if id.is_nil() {
        return Err(invalid(", not the nil UUID".into()));
    }
    Ok(id)
}

fn parse_timestamp(
    v: &RawValue,
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
    if Kind::of(v) != Kind::String {
        return Err(invalid(format!(", got {}", Kind::of(v))));
    }
    let s = json_string(v, "timestamp")?;
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
    let size = serialized_len(&map);
    if size > limits.max_data_bytes {
        return Err(ValidationError::field(
            "data",
            "too_large",
            format!(
                "data is {} bytes serialized; the limit is {}",
                size, limits.max_data_bytes
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

/// How long `value`'s compact JSON is, counted as it is written rather than built.
fn serialized_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a map of JSON values into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
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
        IngestRequest::parse(v.to_string().as_bytes(), &limits(), now())
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
    fn the_body_is_read_as_text_member_by_member() {
        let raw = |body: &str| IngestRequest::parse(body.as_bytes(), &limits(), now());
        // Escapes are decoded, whitespace is ignored, and a repeated member's last value counts.
        let ev = raw(
            r#" { "event_type" : "a\u0062", "player_id":"x", "player_id":"p", "game_id":"g",
                        "event_id": null, "data": { "k" : [1, {"n": null}] } } "#,
        )
        .unwrap();
        assert_eq!((ev.event_type.as_str(), ev.player_id.as_str()), ("ab", "p"));
        assert_eq!(ev.data["k"], json!([1, {"n": null}]));
        // The first unknown member in the order sent is the one named.
        let err = raw(r#"{"zeta":1,"alpha":2,"event_type":"a","player_id":"p","game_id":"g"}"#).unwrap_err();
        assert_eq!((err.field.as_deref(), err.code), (Some("zeta"), "unknown_field"));
        // Not JSON wins over not an object; JSON that is not an object is named so.
        assert_eq!(raw("[1,").unwrap_err().code, "invalid_json");
        assert_eq!(raw(r#"{"event_type":"a"} x"#).unwrap_err().code, "invalid_json");
        assert_eq!(raw("\"text\"").unwrap_err().code, "invalid_body");
        // An integer past 64 bits is refused in `data`; elsewhere it is just not a string.
        let err =
            raw(r#"{"event_type":"a","player_id":"p","game_id":"g","data":{"n":[18446744073709551616]}}"#)
                .unwrap_err();
        assert_eq!((err.field.as_deref(), err.code), (Some("data"), "invalid_field"));
        assert!(err.message.contains("18446744073709551616"), "{}", err.message);
        let err = raw(r#"{"event_type":18446744073709551616,"player_id":"p","game_id":"g"}"#).unwrap_err();
        assert_eq!(
            (err.field.as_deref(), err.message.as_str()),
            (Some("event_type"), "event_type must be a string, got a number")
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
