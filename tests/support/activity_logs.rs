//! Fakes of two clouds' activity logs, following their published references (the Azure
//! Activity Log is served by the Azure fake, on the ARM endpoint it belongs to):
//!
//! - AWS CloudTrail `LookupEvents` (JSON 1.1 over `POST /`, `X-Amz-Target:
//!   [com.amazonaws.cloudtrail.v20131101.]CloudTrail_20131101.LookupEvents`): `StartTime` and
//!   `EndTime` in epoch seconds, at most one `LookupAttributes` entry
//!   (`InvalidLookupAttributesException`), `MaxResults` 1 to 50 (default 50,
//!   `InvalidMaxResultsException`), `StartTime` after `EndTime` refused
//!   (`InvalidTimeRangeException`), events newest first, a `NextToken` valid only with the
//!   parameters it was issued for (`InvalidNextTokenException`), and the service's rate of two
//!   lookups a second per account: a third within the second is a `ThrottlingException`.
//!   Errors are `{"__type", "message"}` with status 400.
//! - Google Cloud Logging `entries.list` (`POST /v2/entries:list`): `resourceNames` required,
//!   `pageSize` at most 1000, `orderBy` `timestamp asc` or `timestamp desc`, the filter
//!   language's terms the operator uses (`logName:`, `=`, `>=`, `<=` joined by `AND`; anything
//!   else is `INVALID_ARGUMENT`), entries of the named resources only (by their `logName`),
//!   page tokens valid only for the query they came from, and 429 `RESOURCE_EXHAUSTED` when
//!   the test queues throttling. Errors are `{"error": {"code", "message", "status"}}`.
//!
//! Events are recorded by the tests as the clouds write them (a CloudTrail record, an audit
//! log entry). One fake of each per test binary, on its own thread.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming};
use jiff::Timestamp;
use serde_json::{Value, json};

type Reply = Response<Full<Bytes>>;

/// Serves `handle` on a port of its own, on a thread of its own; returns the port.
fn serve<S: Send + Sync + 'static>(
    state: Arc<S>,
    handle: fn(&S, &hyper::http::request::Parts, &[u8]) -> Reply,
) -> u16 {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap().port()).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|collected| collected.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, std::io::Error>(handle(&state, &parts, &body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    receiver.recv().expect("the fake starts")
}

fn reply(status: u16, content_type: &str, body: &Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// CloudTrail

/// The operation's target, as the service's JSON protocol names it (botocore's
/// `targetPrefix`) and as the Smithy model's service shape does (what the Rust SDK sends).
const TRAIL_TARGETS: &[&str] = &[
    "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents",
    "CloudTrail_20131101.LookupEvents",
];
const TRAIL_JSON: &str = "application/x-amz-json-1.1";
/// The attribute keys LookupEvents accepts.
const LOOKUP_KEYS: &[&str] = &[
    "EventId",
    "EventName",
    "ReadOnly",
    "Username",
    "ResourceType",
    "ResourceName",
    "EventSource",
    "AccessKeyId",
];
/// Lookups a second per account and region.
const TRAIL_RATE: usize = 2;

#[derive(Default)]
struct TrailState {
    /// Recorded events, as LookupEvents returns them.
    events: Vec<Value>,
    /// Issued tokens: the query they belong to and the offset they continue at.
    tokens: HashMap<String, (String, usize)>,
    /// When the last lookups were answered, for the rate limit.
    recent: VecDeque<Instant>,
    /// Lookups answered with events, and throttled.
    answered: usize,
    throttled: usize,
    /// Calls the test wants throttled, whatever the rate.
    forced_throttles: usize,
}

/// The running CloudTrail fake.
pub struct CloudTrailFake {
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL_CLOUDTRAIL`.
    pub endpoint: String,
    state: Arc<Mutex<TrailState>>,
}

/// The CloudTrail fake of this test binary, started on first use.
pub fn cloudtrail() -> &'static CloudTrailFake {
    static FAKE: OnceLock<CloudTrailFake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let state = Arc::new(Mutex::new(TrailState::default()));
        let port = serve(state.clone(), |state, parts, body| {
            lookup_events(&mut state.lock().unwrap(), parts, body)
        });
        CloudTrailFake {
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
        }
    })
}

impl CloudTrailFake {
    /// Records a CloudTrail record (the JSON CloudTrail writes for a call) as its event
    /// history would list it.
    pub fn record(&self, mut record: Value) {
        let event_id = uuid::Uuid::new_v4().to_string();
        if record.get("eventID").is_none() {
            record["eventID"] = json!(event_id);
        }
        let identity = &record["userIdentity"];
        let username = match identity["type"].as_str() {
            Some("IAMUser") => identity["userName"].clone(),
            // Assumed-role events are listed under the session name.
            Some("AssumedRole") => json!(
                identity["arn"]
                    .as_str()
                    .and_then(|arn| arn.rsplit('/').next())
                    .unwrap_or_default()
            ),
            _ => Value::Null,
        };
        let time: Timestamp = record["eventTime"].as_str().unwrap().parse().unwrap();
        let event = json!({
            "EventId": record["eventID"],
            "EventName": record["eventName"],
            "ReadOnly": record["readOnly"].as_bool().unwrap_or(true).to_string(),
            "EventTime": time.as_millisecond() as f64 / 1000.0,
            "EventSource": record["eventSource"],
            "Username": username,
            "Resources": record["resources"].as_array().map(|resources| resources.iter()
                .map(|resource| json!({"ResourceType": resource["type"], "ResourceName": resource["ARN"]}))
                .collect::<Vec<_>>()).unwrap_or_default(),
            "CloudTrailEvent": record.to_string(),
        });
        self.state.lock().unwrap().events.push(event);
    }

    /// Throttles the next `count` lookups.
    pub fn throttle(&self, count: usize) {
        self.state.lock().unwrap().forced_throttles += count;
    }

    /// Lookups answered with a page, and lookups throttled.
    pub fn lookups(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.answered, state.throttled)
    }
}

fn trail_error(kind: &str, message: &str) -> Reply {
    reply(
        400,
        TRAIL_JSON,
        &json!({"__type": kind, "message": message}),
    )
}

fn lookup_events(
    state: &mut TrailState,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Reply {
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if parts.method != hyper::Method::POST || parts.uri.path() != "/" {
        return trail_error("UnknownOperationException", "unknown operation");
    }
    if !TRAIL_TARGETS.contains(&target) {
        return trail_error(
            "UnknownOperationException",
            &format!("this fake answers LookupEvents only, not {target}"),
        );
    }
    let now = Instant::now();
    while state
        .recent
        .front()
        .is_some_and(|at| now.duration_since(*at).as_secs_f64() >= 1.0)
    {
        state.recent.pop_front();
    }
    if state.forced_throttles > 0 || state.recent.len() >= TRAIL_RATE {
        state.forced_throttles = state.forced_throttles.saturating_sub(1);
        state.throttled += 1;
        return trail_error("ThrottlingException", "Rate exceeded");
    }
    state.recent.push_back(now);
    let Ok(input) = serde_json::from_slice::<Value>(body) else {
        return trail_error("SerializationException", "the body is not JSON");
    };
    let attributes = input["LookupAttributes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if attributes.len() > 1 {
        return trail_error(
            "InvalidLookupAttributesException",
            "You cannot specify more than one lookup attribute.",
        );
    }
    let attribute = match attributes.first() {
        Some(attribute) => {
            let key = attribute["AttributeKey"].as_str().unwrap_or_default();
            let value = attribute["AttributeValue"].as_str().unwrap_or_default();
            if !LOOKUP_KEYS.contains(&key) || value.is_empty() {
                return trail_error(
                    "InvalidLookupAttributesException",
                    &format!("{key} is not a valid lookup attribute, or its value is empty"),
                );
            }
            Some((key.to_owned(), value.to_owned()))
        }
        None => None,
    };
    let max = input["MaxResults"].as_i64().unwrap_or(50);
    if !(1..=50).contains(&max) {
        return trail_error(
            "InvalidMaxResultsException",
            "MaxResults must be between 1 and 50.",
        );
    }
    let start = input["StartTime"].as_f64();
    let end = input["EndTime"].as_f64();
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        return trail_error(
            "InvalidTimeRangeException",
            "Start time must be before end time.",
        );
    }
    // The query a token belongs to: everything but the token.
    let mut query = input.clone();
    query.as_object_mut().unwrap().remove("NextToken");
    let query = query.to_string();
    let offset = match input["NextToken"].as_str() {
        None => 0,
        Some(token) => match state.tokens.get(token) {
            Some((issued_for, offset)) if *issued_for == query => *offset,
            _ => {
                return trail_error(
                    "InvalidNextTokenException",
                    "A token you provided is not valid.",
                );
            }
        },
    };
    let field = |event: &Value, key: &str| -> Option<String> {
        match key {
            "Username" | "EventName" | "EventId" | "EventSource" | "ReadOnly" | "AccessKeyId" => {
                event[key].as_str().map(str::to_owned)
            }
            _ => None,
        }
    };
    let mut matching: Vec<&Value> = state
        .events
        .iter()
        .filter(|event| {
            let time = event["EventTime"].as_f64().unwrap();
            start.is_none_or(|start| time >= start) && end.is_none_or(|end| time <= end)
        })
        .filter(|event| match &attribute {
            None => true,
            Some((key, value)) if key == "ResourceName" || key == "ResourceType" => {
                let name = if key == "ResourceName" {
                    "ResourceName"
                } else {
                    "ResourceType"
                };
                event["Resources"].as_array().is_some_and(|resources| {
                    resources
                        .iter()
                        .any(|resource| resource[name] == value.as_str())
                })
            }
            Some((key, value)) => field(event, key).as_deref() == Some(value.as_str()),
        })
        .collect();
    // Newest first.
    matching.sort_by(|left, right| {
        right["EventTime"]
            .as_f64()
            .unwrap()
            .total_cmp(&left["EventTime"].as_f64().unwrap())
    });
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(max as usize)
        .map(|event| (*event).clone())
        .collect();
    let mut output = json!({"Events": page});
    if offset + (max as usize) < matching.len() {
        let token = uuid::Uuid::new_v4().simple().to_string();
        state
            .tokens
            .insert(token.clone(), (query, offset + max as usize));
        output["NextToken"] = json!(token);
    }
    state.answered += 1;
    reply(200, TRAIL_JSON, &output)
}

// ---------------------------------------------------------------------------------------
// Cloud Logging

#[derive(Default)]
struct LoggingState {
    /// Recorded entries.
    entries: Vec<Value>,
    /// Issued page tokens: the query they belong to and the offset they continue at.
    tokens: HashMap<String, (String, usize)>,
    /// Pages answered, and calls throttled.
    answered: usize,
    throttled: usize,
    /// Calls the test wants throttled.
    forced_throttles: usize,
    /// The page size the fake uses when asked for more (small, so that paging is exercised).
    page_limit: usize,
}

/// The running Cloud Logging fake.
pub struct CloudLoggingFake {
    /// `http://127.0.0.1:PORT`, for `--gcp-logging-endpoint`.
    pub endpoint: String,
    state: Arc<Mutex<LoggingState>>,
}

/// The Cloud Logging fake of this test binary, started on first use.
pub fn cloud_logging() -> &'static CloudLoggingFake {
    static FAKE: OnceLock<CloudLoggingFake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let state = Arc::new(Mutex::new(LoggingState {
            page_limit: 4,
            ..LoggingState::default()
        }));
        let port = serve(state.clone(), |state, parts, body| {
            entries_list(&mut state.lock().unwrap(), parts, body)
        });
        CloudLoggingFake {
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
        }
    })
}

impl CloudLoggingFake {
    /// Records an admin activity audit log entry of `project` (`projects/P`): `payload` is
    /// its `protoPayload`, an AuditLog.
    pub fn record(&self, project: &str, time: Timestamp, mut payload: Value) {
        payload["@type"] = json!("type.googleapis.com/google.cloud.audit.AuditLog");
        let entry = json!({
            "logName": format!("{project}/logs/cloudaudit.googleapis.com%2Factivity"),
            "resource": {"type": "project", "labels": {"project_id": project.trim_start_matches("projects/")}},
            "timestamp": time.to_string(),
            "receiveTimestamp": time.to_string(),
            "severity": "NOTICE",
            "insertId": uuid::Uuid::new_v4().simple().to_string(),
            "protoPayload": payload,
        });
        self.state.lock().unwrap().entries.push(entry);
    }

    /// Throttles the next `count` calls.
    pub fn throttle(&self, count: usize) {
        self.state.lock().unwrap().forced_throttles += count;
    }

    /// Pages answered, and calls throttled.
    pub fn calls(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.answered, state.throttled)
    }
}

fn google_error(code: u16, status: &str, message: &str) -> Reply {
    reply(
        code,
        "application/json; charset=UTF-8",
        &json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

/// One term of a filter: a field, a comparison, a quoted value.
struct Term {
    field: String,
    operator: &'static str,
    value: String,
}

/// The terms of `filter` joined by AND; `None` for anything else.
fn parse_filter(filter: &str) -> Option<Vec<Term>> {
    let mut terms = Vec::new();
    let mut rest = filter.trim();
    while !rest.is_empty() {
        let (field, operator, after) = ["<=", ">=", "=", ":"].iter().find_map(|operator| {
            let at = rest.find(operator)?;
            let field = &rest[..at];
            (!field.contains(' ') && !field.contains('"'))
                .then(|| (field, *operator, &rest[at + operator.len()..]))
        })?;
        let after = after.strip_prefix('"')?;
        // A quoted string, with \" and \\ escapes.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => {
                    end = Some(index + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        terms.push(Term {
            field: field.to_owned(),
            operator,
            value,
        });
        rest = after[end?..].trim_start();
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix("AND ")?.trim_start();
    }
    Some(terms)
}

fn field_of<'a>(entry: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(entry, |value, key| &value[key])
}

fn entries_list(
    state: &mut LoggingState,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Reply {
    if parts.method != hyper::Method::POST || parts.uri.path() != "/v2/entries:list" {
        return google_error(
            404,
            "NOT_FOUND",
            &format!("unknown path {}", parts.uri.path()),
        );
    }
    if state.forced_throttles > 0 {
        state.forced_throttles -= 1;
        state.throttled += 1;
        return google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute' of service 'logging.googleapis.com'.",
        );
    }
    let Ok(input) = serde_json::from_slice::<Value>(body) else {
        return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let resources: Vec<String> = input["resourceNames"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if resources.is_empty() {
        return google_error(400, "INVALID_ARGUMENT", "resourceNames is required.");
    }
    let size = input["pageSize"].as_u64().unwrap_or(50);
    if size > 1000 {
        return google_error(400, "INVALID_ARGUMENT", "pageSize must not exceed 1000.");
    }
    let descending = match input["orderBy"].as_str().unwrap_or("timestamp asc") {
        "" | "timestamp asc" => false,
        "timestamp desc" => true,
        other => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                &format!("orderBy {other:?} is not supported: timestamp asc or timestamp desc."),
            );
        }
    };
    let filter = input["filter"].as_str().unwrap_or_default();
    let Some(terms) = parse_filter(filter) else {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            &format!("Unparseable filter: {filter}"),
        );
    };
    for term in &terms {
        if term.field == "timestamp" && term.value.parse::<Timestamp>().is_err() {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                &format!("Invalid timestamp {:?} in the filter.", term.value),
            );
        }
    }
    let mut query = input.clone();
    query.as_object_mut().unwrap().remove("pageToken");
    let query = query.to_string();
    let offset = match input["pageToken"]
        .as_str()
        .filter(|token| !token.is_empty())
    {
        None => 0,
        Some(token) => match state.tokens.get(token) {
            Some((issued_for, offset)) if *issued_for == query => *offset,
            _ => {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "page_token doesn't match arguments from the request",
                );
            }
        },
    };
    let matches = |entry: &Value| {
        let log_name = entry["logName"].as_str().unwrap_or_default();
        resources
            .iter()
            .any(|resource| log_name.starts_with(&format!("{resource}/logs/")))
            && terms.iter().all(|term| {
                let value = field_of(entry, &term.field);
                match (term.field.as_str(), term.operator) {
                    ("timestamp", operator) => {
                        let time: Timestamp = value.as_str().unwrap().parse().unwrap();
                        let bound: Timestamp = term.value.parse().unwrap();
                        match operator {
                            ">=" => time >= bound,
                            "<=" => time <= bound,
                            _ => time == bound,
                        }
                    }
                    (_, ":") => value.as_str().is_some_and(|text| {
                        urlencoding::decode(text)
                            .map(|text| text.contains(&term.value))
                            .unwrap_or(false)
                    }),
                    (_, "=") => value.as_str() == Some(term.value.as_str()),
                    _ => false,
                }
            })
    };
    let mut matching: Vec<&Value> = state
        .entries
        .iter()
        .filter(|entry| matches(entry))
        .collect();
    matching.sort_by_key(|entry| {
        entry["timestamp"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .unwrap()
    });
    if descending {
        matching.reverse();
    }
    let take = (size as usize).min(state.page_limit);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(take)
        .map(|entry| (*entry).clone())
        .collect();
    let mut output = json!({"entries": page});
    if offset + take < matching.len() {
        let token = uuid::Uuid::new_v4().simple().to_string();
        state.tokens.insert(token.clone(), (query, offset + take));
        output["nextPageToken"] = json!(token);
    }
    state.answered += 1;
    reply(200, "application/json; charset=UTF-8", &output)
}
