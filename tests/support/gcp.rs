//! A fake of Google Cloud Resource Manager's IAM methods, following the published REST
//! reference: `POST /v3/{resource}:getIamPolicy` and `:setIamPolicy` for projects, folders and
//! organizations, the Policy JSON (version, bindings with conditions, auditConfigs, a base64
//! etag), version 3 required whenever a binding has a condition, a stale etag refused with
//! 409 ABORTED, unknown resources refused with 403 PERMISSION_DENIED, and errors as
//! `{"error": {"code", "message", "status"}}`. Faults can be queued per resource: a concurrent
//! change between our read and write, 409, 429 with Retry-After, 500, and a reply dropped after
//! the write took effect. One fake per test binary, on its own thread.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming};
use serde_json::{Value, json};

/// Something that goes wrong at the next call of a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// At the next setIamPolicy, someone else changes the policy first (our etag goes stale).
    ConcurrentChange,
    /// The next call answers 409 ABORTED.
    Conflict,
    /// The next call answers 429 with `Retry-After: SECONDS`.
    TooManyRequests(u64),
    /// The next call answers 500 INTERNAL.
    ServerError,
    /// The next setIamPolicy takes effect, but its reply is never sent (the connection closes).
    DropReply,
}

#[derive(Default)]
struct Resource {
    policy: Value,
    generation: u64,
    faults: VecDeque<Fault>,
    sets: usize,
    /// getIamPolicy calls answered, throttled or not.
    reads: usize,
    /// Until then, every getIamPolicy answers 429 with `Retry-After` of these seconds.
    reads_throttled: Option<(std::time::Instant, u64)>,
}

type State = Arc<Mutex<HashMap<String, Resource>>>;

/// The running fake.
pub struct GcpFake {
    /// Its address, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: State,
}

static FAKE: OnceLock<GcpFake> = OnceLock::new();

/// The fake of this test binary, started on first use.
pub fn gcp_fake() -> &'static GcpFake {
    FAKE.get_or_init(|| {
        let state = State::default();
        let served = state.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(served, sender));
        });
        let port = receiver.recv().expect("the fake gcp server starts");
        GcpFake {
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
        }
    })
}

async fn serve(state: State, ready: std::sync::mpsc::Sender<u16>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ready.send(listener.local_addr().unwrap().port()).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
            // An error from the service (a dropped reply) closes the connection unanswered.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn error(code: u16, status: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"code": code, "message": message, "status": status}});
    Response::builder()
        .status(code)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// 429 RESOURCE_EXHAUSTED with `Retry-After: SECONDS`, for this quota metric.
fn too_many(seconds: u64, metric: &str) -> Response<Full<Bytes>> {
    let mut response = error(
        429,
        "RESOURCE_EXHAUSTED",
        &format!("Quota exceeded for quota metric '{metric}'."),
    );
    response.headers_mut().insert("retry-after", seconds.into());
    response
}

fn ok(body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The etag of a policy generation: opaque bytes, base64 in JSON.
fn etag(generation: u64) -> String {
    let text = format!("BwY{generation:08}");
    let mut encoded = String::new();
    // Standard base64 of ASCII text, enough for an opaque tag.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in text.as_bytes().chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let number = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                let sextet = (number >> (18 - 6 * index)) & 63;
                encoded.push(ALPHABET[sextet as usize] as char);
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

fn has_conditions(policy: &Value) -> bool {
    policy["bindings"].as_array().is_some_and(|bindings| {
        bindings
            .iter()
            .any(|binding| binding.get("condition").is_some())
    })
}

/// The policy as the API returns it: its etag, and no empty fields.
fn rendered(resource: &Resource) -> Value {
    let mut policy = resource.policy.clone();
    policy["etag"] = json!(etag(resource.generation));
    if policy.get("version").is_none() {
        policy["version"] = json!(1);
    }
    policy
}

const MEMBER_PREFIXES: &[&str] = &[
    "user:",
    "group:",
    "serviceAccount:",
    "domain:",
    "principal://",
    "principalSet://",
];

async fn handle(
    state: State,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let path = request.uri().path().to_owned();
    let post = request.method() == hyper::Method::POST;
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let Some((resource_name, method)) = path
        .strip_prefix("/v3/")
        .and_then(|rest| rest.rsplit_once(':'))
    else {
        return Ok(error(404, "NOT_FOUND", &format!("unknown path {path}")));
    };
    let known_kind = ["projects/", "folders/", "organizations/"]
        .iter()
        .any(|kind| {
            resource_name.starts_with(kind) && resource_name[kind.len()..].find('/').is_none()
        });
    if !post || !known_kind || !["getIamPolicy", "setIamPolicy"].contains(&method) {
        return Ok(error(
            404,
            "NOT_FOUND",
            &format!(
                "unknown method {} {path}",
                if post { "POST" } else { "GET" }
            ),
        ));
    }
    let Ok(body) = serde_json::from_slice::<Value>(if body.is_empty() { b"{}" } else { &body })
    else {
        return Ok(error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
        ));
    };

    let mut resources = state.lock().unwrap();
    let Some(resource) = resources.get_mut(resource_name) else {
        return Ok(error(
            403,
            "PERMISSION_DENIED",
            &format!(
                "The caller does not have permission on resource {resource_name}, or it may not exist."
            ),
        ));
    };
    let setting = method == "setIamPolicy";
    if !setting {
        resource.reads += 1;
        if let Some((until, seconds)) = resource.reads_throttled
            && std::time::Instant::now() < until
        {
            return Ok(too_many(seconds, "Read requests"));
        }
    }
    match resource.faults.front().cloned() {
        Some(Fault::Conflict) => {
            resource.faults.pop_front();
            return Ok(error(
                409,
                "ABORTED",
                "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
            ));
        }
        Some(Fault::TooManyRequests(seconds)) => {
            resource.faults.pop_front();
            return Ok(too_many(seconds, "Write requests"));
        }
        Some(Fault::ServerError) => {
            resource.faults.pop_front();
            return Ok(error(500, "INTERNAL", "Internal error encountered."));
        }
        Some(Fault::ConcurrentChange) if setting => {
            resource.faults.pop_front();
            let bindings = resource.policy["bindings"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut changed = bindings;
            changed
                .push(json!({"role": "roles/browser", "members": ["user:concurrent@example.com"]}));
            resource.policy["bindings"] = json!(changed);
            resource.generation += 1;
        }
        _ => {}
    }

    if !setting {
        let requested = body["options"]["requestedPolicyVersion"]
            .as_i64()
            .unwrap_or(0);
        if has_conditions(&resource.policy) && requested < 3 {
            return Ok(error(
                400,
                "INVALID_ARGUMENT",
                "The policy contains conditional role bindings; requestedPolicyVersion must be 3.",
            ));
        }
        return Ok(ok(&rendered(resource)));
    }

    let Some(policy) = body.get("policy").cloned() else {
        return Ok(error(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument: policy is required.",
        ));
    };
    if let Some(sent) = policy.get("etag").and_then(Value::as_str)
        && sent != etag(resource.generation)
    {
        return Ok(error(
            409,
            "ABORTED",
            "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
        ));
    }

    let version = policy["version"].as_i64().unwrap_or(1);
    if has_conditions(&policy) && version < 3 {
        return Ok(error(
            400,
            "INVALID_ARGUMENT",
            "Policy version 3 is required when a binding has a condition.",
        ));
    }
    for member in policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
    {
        let member = member.as_str().unwrap_or_default();
        if !MEMBER_PREFIXES
            .iter()
            .any(|prefix| member.starts_with(prefix))
        {
            return Ok(error(
                400,
                "INVALID_ARGUMENT",
                &format!(
                    "The member {member} is of an unknown type. Please set a valid type prefix for the member."
                ),
            ));
        }
        if member.ends_with("@nonexistent.example") {
            let email = member.split_once(':').map_or(member, |(_, email)| email);
            return Ok(error(
                400,
                "INVALID_ARGUMENT",
                &format!("User {email} does not exist."),
            ));
        }
    }
    // Without an updateMask only bindings and etag change; auditConfigs stay as they were.
    let mask = body["updateMask"].as_str().unwrap_or("bindings,etag");
    let mut stored = resource.policy.clone();
    stored["version"] = json!(version);
    match policy.get("bindings") {
        Some(bindings) => stored["bindings"] = bindings.clone(),
        None => {
            if let Some(object) = stored.as_object_mut() {
                object.remove("bindings");
            }
        }
    }
    if mask.contains("auditConfigs") {
        stored["auditConfigs"] = policy.get("auditConfigs").cloned().unwrap_or(json!([]));
    }
    resource.policy = stored;
    resource.generation += 1;
    resource.sets += 1;
    if resource.faults.front() == Some(&Fault::DropReply) {
        resource.faults.pop_front();
        return Err(std::io::Error::other(
            "fault: reply dropped after the write",
        ));
    }
    Ok(ok(&rendered(resource)))
}

impl GcpFake {
    /// Makes a project, folder or organization with this policy (no etag).
    pub fn create(&self, resource: &str, policy: Value) {
        self.state.lock().unwrap().insert(
            resource.to_owned(),
            Resource {
                policy,
                generation: 1,
                ..Resource::default()
            },
        );
    }

    /// The stored policy, as an administrator would read it.
    pub fn policy(&self, resource: &str) -> Value {
        rendered(&self.state.lock().unwrap()[resource])
    }

    /// Queues faults for the next calls on a resource.
    pub fn inject(&self, resource: &str, faults: &[Fault]) {
        self.state
            .lock()
            .unwrap()
            .get_mut(resource)
            .unwrap()
            .faults
            .extend(faults.iter().cloned());
    }

    /// The faults not yet used.
    pub fn pending_faults(&self, resource: &str) -> usize {
        self.state.lock().unwrap()[resource].faults.len()
    }

    /// Answers every getIamPolicy of a resource with 429 and `Retry-After: SECONDS` for
    /// `period` from now.
    pub fn throttle_reads(&self, resource: &str, period: std::time::Duration, seconds: u64) {
        self.state
            .lock()
            .unwrap()
            .get_mut(resource)
            .unwrap()
            .reads_throttled = Some((std::time::Instant::now() + period, seconds));
    }

    /// How many getIamPolicy calls reached the resource.
    pub fn reads(&self, resource: &str) -> usize {
        self.state.lock().unwrap()[resource].reads
    }

    /// How many setIamPolicy calls took effect.
    pub fn writes(&self, resource: &str) -> usize {
        self.state.lock().unwrap()[resource].sets
    }
}
