//! A topic's permanent id: which log an offset belongs to.
//!
//! Offsets only mean something within one log. A topic deleted and created again under the same
//! name, the same name on another cluster, or the embedded broker after a real one all start at
//! offset 0 again; Kafka (since 2.8, KIP-516) gives each of them a new random topic id, so the
//! consumers key every stored offset by it (see `docs/decisions.md`).
//!
//! rust-rdkafka does not wrap librdkafka's `DescribeTopics` (the admin call that returns the id),
//! so this module calls it through the C API on an existing client handle.

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use std::ffi::{CStr, CString};
use std::time::Duration;

/// A topic id as Kafka's tools print it (22 characters of URL-safe base64, never a `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicId(String);

impl TopicId {
    /// The id as text; never empty.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TopicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a topic's id could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TopicIdError {
    #[error("describing topic {topic} failed: {message}")]
    Kafka { topic: String, message: String },
    #[error("no answer describing topic {topic} within {timeout:?}")]
    Timeout { topic: String, timeout: Duration },
    #[error("the broker gave topic {topic} no id (Kafka older than 2.8?): offsets can't be tied to a log")]
    NoId { topic: String },
    #[error("topic name {0:?} contains a NUL byte")]
    BadName(String),
}

/// Frees a librdkafka object when dropped.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching librdkafka constructor and is freed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// Asks the cluster `client` is connected to for `topic`'s id. Blocks up to `timeout`: call it
/// from a blocking task.
pub fn describe_topic_id<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<TopicId, TopicIdError> {
    let name = CString::new(topic).map_err(|_| TopicIdError::BadName(topic.to_owned()))?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let kafka_err = |message: String| TopicIdError::Kafka {
        topic: topic.to_owned(),
        message,
    };
    // librdkafka sends admin requests to the controller unless told a broker. Metadata (which
    // is what DescribeTopics asks for) any broker answers, and the embedded broker names no
    // controller at all, so the request goes to a broker the cluster's metadata lists.
    let broker = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| kafka_err(format!("metadata: {e}")))?
        .brokers()
        .first()
        .map(|b| b.id())
        .ok_or_else(|| kafka_err("the cluster lists no broker".into()))?;
    let rk = client.native_ptr();
    // SAFETY: `rk` is a live client for the duration of this call (borrowed from `client`); every
    // object created here is owned by an `Owned` guard and freed exactly once, after its last use;
    // pointers read out of the result event are used only while the event is alive.
    unsafe {
        let queue = Owned(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        let mut names = [name.as_ptr()];
        let topics = Owned(
            rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1),
            rd::rd_kafka_TopicCollection_destroy,
        );
        let options = Owned(
            rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let mut errstr = [0 as std::ffi::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if rd::rd_kafka_AdminOptions_set_broker(options.0, broker, errstr.as_mut_ptr(), errstr.len())
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(kafka_err(text(errstr.as_ptr())));
        }
        rd::rd_kafka_DescribeTopics(rk, topics.0, options.0, queue.0);
        // The request timeout bounds the call; the extra second lets its error event arrive.
        let event = Owned(
            rd::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1000)),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return Err(TopicIdError::Timeout {
                topic: topic.to_owned(),
                timeout,
            });
        }
        if rd::rd_kafka_event_error(event.0) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(kafka_err(text(rd::rd_kafka_event_error_string(event.0))));
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
        if result.is_null() {
            return Err(kafka_err("unexpected admin result type".into()));
        }
        let mut count = 0usize;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if descriptions.is_null() || count == 0 {
            return Err(kafka_err("empty answer".into()));
        }
        let description = *descriptions;
        let error = rd::rd_kafka_TopicDescription_error(description);
        if !error.is_null()
            && rd::rd_kafka_error_code(error) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(kafka_err(text(rd::rd_kafka_error_string(error))));
        }
        let id = rd::rd_kafka_TopicDescription_topic_id(description);
        if id.is_null()
            || (rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                && rd::rd_kafka_Uuid_least_significant_bits(id) == 0)
        {
            return Err(TopicIdError::NoId {
                topic: topic.to_owned(),
            });
        }
        Ok(TopicId(text(rd::rd_kafka_Uuid_base64str(id))))
    }
}

/// Copies a C string librdkafka owns.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string alive for this call.
unsafe fn text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
