//! A fake of the Azure pieces the operator talks to, over HTTPS with its own CA (azure_core
//! sends bearer tokens only over https):
//!
//! - Microsoft Entra ID's token endpoint, `POST /{tenant}/oauth2/v2.0/token`, for the client
//!   assertion flow that workload identity uses: it checks the federated token, client ID,
//!   assertion type, grant type and scope, and issues bearer tokens; every ARM call must carry
//!   one of them.
//! - Microsoft.Authorization, following the published REST reference: role assignments
//!   (`PUT`/`GET`/`DELETE {scope}/providers/Microsoft.Authorization/roleAssignments/{name}`,
//!   api-version 2022-04-01: 201, 200, 204, 404, 409 `RoleAssignmentExists`), PIM schedule
//!   requests (`PUT`/`GET .../roleAssignmentScheduleRequests/{name}`, api-version 2020-10-01:
//!   AdminAssign with `scheduleInfo`, AdminRemove, `RoleAssignmentRequestPolicyValidationFailed`,
//!   `RoleAssignmentDoesNotExist`, and a repeated request name refused with 409 before the
//!   access is looked at) and role assignment schedules (`GET
//!   .../roleAssignmentSchedules?$filter=principalId eq '...'`, paged with nextLink); errors
//!   as `{"error": {"code", "message"}}`. PIM ends a schedule at its `endDateTime`.
//!
//! - The Activity Log (`GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/
//!   management/values`, api-version 2015-04-01): `$filter` in the forms the reference lists
//!   (a time range, optionally with `resourceGroupName`, `resourceUri`, `resourceProvider` or
//!   `correlationId`; no other syntax: 400 `BadRequest`), a start within the last 90 days,
//!   paged with `nextLink` and an opaque `$skipToken`, events as tests record them; faults
//!   can be queued for its next reads (429 with Retry-After, 500).
//!
//! Faults can be queued per scope for its next write: 429 with Retry-After, 500, and a reply
//! dropped after the write took effect. One fake per test binary, on its own thread.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use jiff::Timestamp;
use serde_json::{Value, json};

/// The tenant the fake directory is.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The operator's application (client) ID.
pub const CLIENT_ID: &str = "0a1b2c3d-0000-4000-8000-00000000c11e";
/// The subscription every test scope is in.
pub const SUBSCRIPTION: &str = "a925f2f7-5c63-4b7b-8799-25a5f97bc3b2";
/// The Reader role, as a subscription-level role definition ID.
pub const READER: &str = "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7";
/// The assertion the operator's federated token file holds.
const FEDERATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.fake-service-account-token.signature";
/// Items per page of a list, small so that paging is exercised.
const PAGE_SIZE: usize = 2;
const ASSIGNMENTS_API: &str = "2022-04-01";
const PIM_API: &str = "2020-10-01";

/// Something that goes wrong at the next write (PUT or DELETE) at a scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next write answers 429 with `Retry-After: SECONDS`.
    TooManyRequests(u64),
    /// The next write answers 500.
    ServerError,
    /// The next write takes effect, but its reply is never sent (the connection closes).
    DropReply,
}

/// One call the fake answered, for assertions about retries.
#[derive(Clone, Debug)]
pub struct Call {
    /// GET, PUT, DELETE.
    pub method: String,
    /// The path.
    pub path: String,
    /// The status answered; 0 for a dropped reply.
    pub status: u16,
    /// When.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    /// Tokens issued.
    tokens: HashSet<String>,
    /// Token requests answered with a token.
    token_grants: usize,
    /// Object IDs in the directory, with their kind.
    principals: HashMap<String, String>,
    /// Scopes that exist (lower case), with the longest PIM assignment their policy allows.
    scopes: HashMap<String, Option<i64>>,
    /// Role assignments by (scope, name), lower case.
    assignments: HashMap<(String, String), Value>,
    /// Schedule requests by (scope, name), lower case.
    schedule_requests: HashMap<(String, String), Value>,
    /// Schedules by name.
    schedules: HashMap<String, Value>,
    /// Faults per scope (lower case).
    faults: HashMap<String, VecDeque<Fault>>,
    /// Writes that took effect, per scope.
    writes: HashMap<String, usize>,
    /// Every ARM call.
    calls: Vec<Call>,
    /// Scopes whose repeated AdminAssign is answered with the assignment-exists code rather
    /// than Azure's request-exists one (both are 409s the operator may meet).
    assignment_exists_first: HashSet<String>,
    /// Activity Log events.
    activity: Vec<Value>,
    /// Faults for the next Activity Log reads.
    activity_faults: VecDeque<Fault>,
    /// Activity Log pages answered, and reads refused by a fault.
    activity_pages: usize,
    activity_faulted: usize,
}

type Shared = Arc<Mutex<State>>;

/// The running fake.
pub struct AzureFake {
    /// `https://127.0.0.1:PORT`: ARM endpoint and authority host at once.
    pub endpoint: String,
    /// The CA that signed its certificate (PEM file).
    pub ca_file: PathBuf,
    /// The federated token file the operator reads.
    pub token_file: PathBuf,
    state: Shared,
}

static FAKE: OnceLock<AzureFake> = OnceLock::new();

/// The fake of this test binary, started on first use.
pub fn azure_fake() -> &'static AzureFake {
    FAKE.get_or_init(|| {
        let identity =
            jit_operator::certificate::ephemeral::generate(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .expect("certificates");
        let dir = std::env::temp_dir().join(format!(
            "jit-azure-fake-{}-{}",
            std::process::id(),
            super::random_suffix(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &identity.ca_pem).unwrap();
        let token_file = dir.join("azure-identity-token");
        std::fs::write(&token_file, FEDERATED_TOKEN).unwrap();

        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let state = Shared::default();
        let served = state.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(served, acceptor, sender));
        });
        let port = receiver.recv().expect("the fake azure server starts");
        AzureFake {
            endpoint: format!("https://127.0.0.1:{port}"),
            ca_file,
            token_file,
            state,
        }
    })
}

impl AzureFake {
    /// The flags and environment that point an operator at the fake with workload identity.
    pub fn operator_args(&self) -> Vec<String> {
        vec![
            "--providers".into(),
            "azure".into(),
            "--azure-endpoint".into(),
            self.endpoint.clone(),
            "--azure-ca-file".into(),
            self.ca_file.display().to_string(),
        ]
    }

    /// The workload identity environment, as the AKS webhook injects it.
    pub fn operator_environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_TENANT_ID", TENANT.to_owned()),
            ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                self.token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST", self.endpoint.clone()),
        ]
    }

    /// A new resource group; `pim_max_minutes` is the longest assignment its PIM policy
    /// allows. Returns its scope.
    pub fn resource_group(&self, pim_max_minutes: Option<i64>) -> String {
        let scope = format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-{}",
            super::random_suffix(8).to_lowercase()
        );
        self.state
            .lock()
            .unwrap()
            .scopes
            .insert(scope.to_lowercase(), pim_max_minutes);
        scope
    }

    /// A new user in the directory; returns its object ID.
    pub fn user(&self) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.state
            .lock()
            .unwrap()
            .principals
            .insert(id.clone(), "User".into());
        id
    }

    /// Records an Activity Log event (as the service lists it).
    pub fn record_activity(&self, event: Value) {
        self.state.lock().unwrap().activity.push(event);
    }

    /// Queues faults for the next Activity Log reads.
    pub fn fail_activity_reads(&self, faults: &[Fault]) {
        self.state
            .lock()
            .unwrap()
            .activity_faults
            .extend(faults.iter().cloned());
    }

    /// Activity Log pages answered, and reads refused by a queued fault.
    pub fn activity_reads(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.activity_pages, state.activity_faulted)
    }

    /// Queues faults for the next writes at `scope`.
    pub fn inject(&self, scope: &str, faults: &[Fault]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(scope.to_lowercase())
            .or_default()
            .extend(faults.iter().cloned());
    }

    /// Answers a repeated AdminAssign at `scope` with `RoleAssignmentExists` (the access is
    /// held) instead of Azure's answer to a repeated request name.
    pub fn answer_repeats_with_assignment_exists(&self, scope: &str) {
        self.state
            .lock()
            .unwrap()
            .assignment_exists_first
            .insert(scope.to_lowercase());
    }

    /// Faults not yet met at `scope`.
    pub fn pending_faults(&self, scope: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .faults
            .get(&scope.to_lowercase())
            .map_or(0, VecDeque::len)
    }

    /// Writes that took effect at `scope`.
    pub fn writes(&self, scope: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .writes
            .get(&scope.to_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Role assignments at `scope`.
    pub fn assignments(&self, scope: &str) -> Vec<Value> {
        at_scope(&self.state.lock().unwrap().assignments, scope)
    }

    /// Makes a role assignment as someone other than the operator would.
    pub fn assign_by_hand(&self, scope: &str, principal: &str, role: &str) {
        let name = uuid::Uuid::new_v4().to_string();
        let assignment = role_assignment(scope, &name, role, principal, "User", "by hand");
        self.state
            .lock()
            .unwrap()
            .assignments
            .insert((scope.to_lowercase(), name), assignment);
    }

    /// Deletes every role assignment at `scope`, as an administrator cleaning up would.
    pub fn delete_assignments(&self, scope: &str) {
        let scope = scope.to_lowercase();
        self.state
            .lock()
            .unwrap()
            .assignments
            .retain(|(at, _), _| *at != scope);
    }

    /// Live PIM schedules at `scope` (Azure's own expiry applied).
    pub fn schedules(&self, scope: &str) -> Vec<Value> {
        let mut state = self.state.lock().unwrap();
        expire_schedules(&mut state);
        state
            .schedules
            .values()
            .filter(|schedule| same(&schedule["properties"]["scope"], scope))
            .cloned()
            .collect()
    }

    /// Makes a PIM schedule as someone other than the operator would.
    pub fn schedule_by_hand(&self, scope: &str, principal: &str, role: &str) {
        let name = uuid::Uuid::new_v4().to_string();
        let request = format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{}",
            uuid::Uuid::new_v4()
        );
        let end = Timestamp::now() + jiff::SignedDuration::from_hours(8);
        let schedule = schedule(
            &name,
            scope,
            role,
            principal,
            &request,
            Timestamp::now(),
            end,
        );
        self.state.lock().unwrap().schedules.insert(name, schedule);
    }

    /// The schedule requests at `scope`.
    pub fn schedule_requests(&self, scope: &str) -> Vec<Value> {
        at_scope(&self.state.lock().unwrap().schedule_requests, scope)
    }

    /// The calls answered at `scope` (by path prefix).
    pub fn calls(&self, scope: &str) -> Vec<Call> {
        let scope = scope.to_lowercase();
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|call| call.path.to_lowercase().starts_with(&scope))
            .cloned()
            .collect()
    }

    /// Bearer tokens issued through the workload identity flow.
    pub fn tokens_issued(&self) -> usize {
        self.state.lock().unwrap().token_grants
    }
}

/// The objects of a map keyed by (scope, name) that are at `scope`.
fn at_scope(objects: &HashMap<(String, String), Value>, scope: &str) -> Vec<Value> {
    let scope = scope.to_lowercase();
    objects
        .iter()
        .filter(|((at, _), _)| *at == scope)
        .map(|(_, object)| object.clone())
        .collect()
}

fn same(value: &Value, text: &str) -> bool {
    value
        .as_str()
        .is_some_and(|value| value.eq_ignore_ascii_case(text))
}

async fn serve(
    state: Shared,
    acceptor: tokio_rustls::TlsAcceptor,
    ready: std::sync::mpsc::Sender<u16>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ready.send(listener.local_addr().unwrap().port()).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
            // An error from the service (a dropped reply) closes the connection unanswered.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Result<Response<Full<Bytes>>, std::io::Error>;

fn respond(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-ms-request-id", uuid::Uuid::new_v4().to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn arm_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn no_content() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn handle(state: Shared, request: Request<Incoming>) -> Reply {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();

    if path.ends_with("/oauth2/v2.0/token") {
        return Ok(token(&state, &method, &path, &body));
    }

    let mut guard = state.lock().unwrap();
    let state = &mut *guard;
    let bearer = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "));
    let reply = match bearer {
        None => Ok(arm_error(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )),
        Some(token) if !state.tokens.contains(token) => Ok(arm_error(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )),
        Some(_) if path.to_lowercase().ends_with(ACTIVITY_LOG_PATH) => {
            Ok(activity_log(state, &path, &query))
        }
        Some(_) => arm(state, &method, &path, &query, &body),
    };
    let status = reply
        .as_ref()
        .map_or(0, |response| response.status().as_u16());
    state.calls.push(Call {
        method: method.to_string(),
        path,
        status,
        at: Instant::now(),
    });
    reply
}

/// The token endpoint: the client assertion grant of workload identity.
fn token(state: &Shared, method: &Method, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let entra_error = |code: u32, error: &str, description: &str| {
        respond(
            if error == "invalid_client" { 401 } else { 400 },
            &json!({"error": error, "error_description": format!("AADSTS{code}: {description}"),
                    "error_codes": [code]}),
        )
    };
    if *method != Method::POST || path != format!("/{TENANT}/oauth2/v2.0/token") {
        return entra_error(90002, "invalid_request", "Tenant not found.");
    }
    let form: HashMap<String, String> = url_form(body);
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return entra_error(
            70003,
            "unsupported_grant_type",
            "The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != CLIENT_ID {
        return entra_error(
            700016,
            "unauthorized_client",
            "Application was not found in the directory.",
        );
    }
    if field("client_assertion") != FEDERATED_TOKEN {
        return entra_error(
            700211,
            "invalid_client",
            "No matching federated identity record found for presented assertion.",
        );
    }
    if field("scope") != "https://management.azure.com/.default" {
        return entra_error(
            500011,
            "invalid_resource",
            "The resource principal was not found in the tenant.",
        );
    }
    let mut state = state.lock().unwrap();
    let access_token = format!("fake-arm-token-{}", uuid::Uuid::new_v4().simple());
    state.tokens.insert(access_token.clone());
    state.token_grants += 1;
    respond(
        200,
        &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                "access_token": access_token}),
    )
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (decode(key), decode(value)))
        .collect()
}

fn decode(text: &str) -> String {
    urlencoding::decode(&text.replace('+', " "))
        .map(|decoded| decoded.into_owned())
        .unwrap_or_default()
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| decode(key) == name)
        .map(|(_, value)| decode(value))
}

/// Microsoft.Authorization.
fn arm(state: &mut State, method: &Method, path: &str, query: &str, body: &[u8]) -> Reply {
    const MARKER: &str = "/providers/microsoft.authorization/";
    let lower = path.to_lowercase();
    let Some(at) = lower.rfind(MARKER) else {
        return Ok(arm_error(
            404,
            "InvalidResourceType",
            &format!("The resource type could not be found for {path}."),
        ));
    };
    let scope = &path[..at];
    let rest = &path[at + MARKER.len()..];
    let (collection, name) = match rest.split_once('/') {
        Some((collection, name)) => (collection.to_lowercase(), Some(name.to_owned())),
        None => (rest.to_lowercase(), None),
    };
    let api_version = query_value(query, "api-version").unwrap_or_default();
    let wanted = match collection.as_str() {
        "roleassignments" => ASSIGNMENTS_API,
        "roleassignmentschedulerequests" | "roleassignmentschedules" => PIM_API,
        _ => {
            return Ok(arm_error(
                404,
                "InvalidResourceType",
                &format!(
                    "The resource type '{collection}' could not be found in the namespace 'Microsoft.Authorization'."
                ),
            ));
        }
    };
    if api_version != wanted {
        return Ok(arm_error(
            400,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{api_version}' is invalid. The supported versions include '{wanted}'."
            ),
        ));
    }
    if !state.scopes.contains_key(&scope.to_lowercase()) {
        return Ok(arm_error(
            403,
            "AuthorizationFailed",
            &format!(
                "The client '{CLIENT_ID}' with object id '{CLIENT_ID}' does not have authorization to perform action 'Microsoft.Authorization/{collection}/write' over scope '{scope}' or the scope is invalid."
            ),
        ));
    }
    let writing = *method == Method::PUT || *method == Method::DELETE;
    let mut drop_reply = false;
    if writing {
        match state
            .faults
            .get_mut(&scope.to_lowercase())
            .and_then(VecDeque::pop_front)
        {
            Some(Fault::TooManyRequests(seconds)) => {
                let mut response =
                    arm_error(429, "TooManyRequests", "The request is being throttled.");
                response.headers_mut().insert("retry-after", seconds.into());
                return Ok(response);
            }
            Some(Fault::ServerError) => {
                return Ok(arm_error(
                    500,
                    "InternalServerError",
                    "Encountered internal server error.",
                ));
            }
            Some(Fault::DropReply) => drop_reply = true,
            None => {}
        }
    }
    let Ok(body) = serde_json::from_slice::<Value>(if body.is_empty() { b"{}" } else { body })
    else {
        return Ok(arm_error(
            400,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        ));
    };
    let response = match (collection.as_str(), name) {
        ("roleassignments", Some(name)) => role_assignments(state, method, scope, &name, &body),
        ("roleassignmentschedulerequests", Some(name)) => {
            schedule_requests(state, method, scope, &name, &body)
        }
        ("roleassignmentschedules", None) if *method == Method::GET => {
            schedules_list(state, path, scope, query)
        }
        _ => arm_error(
            405,
            "MethodNotAllowed",
            &format!("The requested resource does not support http method '{method}'."),
        ),
    };
    if writing && response.status().is_success() {
        *state.writes.entry(scope.to_lowercase()).or_default() += 1;
    }
    if drop_reply {
        return Err(std::io::Error::other("reply dropped by the fault switch"));
    }
    Ok(response)
}

fn is_guid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

fn role_guid(role_definition_id: &str) -> String {
    role_definition_id
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

fn role_assignment(
    scope: &str,
    name: &str,
    role: &str,
    principal: &str,
    kind: &str,
    description: &str,
) -> Value {
    json!({
        "properties": {
            "roleDefinitionId": role,
            "principalId": principal,
            "principalType": kind,
            "scope": scope,
            "description": description,
            "createdOn": Timestamp::now().to_string(),
        },
        "id": format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"),
        "type": "Microsoft.Authorization/roleAssignments",
        "name": name,
    })
}

fn role_assignments(
    state: &mut State,
    method: &Method,
    scope: &str,
    name: &str,
    body: &Value,
) -> Response<Full<Bytes>> {
    let key = (scope.to_lowercase(), name.to_lowercase());
    match *method {
        Method::GET => match state.assignments.get(&key) {
            Some(assignment) => respond(200, assignment),
            None => arm_error(
                404,
                "RoleAssignmentNotFound",
                &format!("The role assignment '{name}' is not found."),
            ),
        },
        Method::DELETE => match state.assignments.remove(&key) {
            Some(assignment) => respond(200, &assignment),
            None => no_content(),
        },
        Method::PUT => {
            if !is_guid(name) {
                return arm_error(
                    400,
                    "InvalidRoleAssignmentId",
                    &format!(
                        "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
                    ),
                );
            }
            let properties = &body["properties"];
            let (Some(role), Some(principal)) = (
                properties["roleDefinitionId"].as_str(),
                properties["principalId"].as_str(),
            ) else {
                return arm_error(
                    400,
                    "InvalidRoleAssignmentRequest",
                    "The request must name roleDefinitionId and principalId.",
                );
            };
            let Some(kind) = state.principals.get(&principal.to_lowercase()).cloned() else {
                return arm_error(
                    400,
                    "PrincipalNotFound",
                    &format!(
                        "Principal {} does not exist in the directory {TENANT}. Check that you have the correct principal ID.",
                        principal.replace('-', "")
                    ),
                );
            };
            if let Some(given) = properties["principalType"].as_str()
                && given != kind
            {
                return arm_error(
                    400,
                    "PrincipalTypeNotSupported",
                    &format!(
                        "The principal type '{given}' does not match the principal's type '{kind}'."
                    ),
                );
            }
            if let Some(existing) = state.assignments.get(&key) {
                let same_access = same(&existing["properties"]["principalId"], principal)
                    && role_guid(
                        existing["properties"]["roleDefinitionId"]
                            .as_str()
                            .unwrap_or_default(),
                    ) == role_guid(role);
                if !same_access {
                    return arm_error(
                        409,
                        "RoleAssignmentUpdateNotPermitted",
                        "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
                    );
                }
            }
            // Azure allows one assignment of a role to a principal at a scope, whatever its
            // name, and says which one holds it.
            if let Some(((_, held), _)) = state.assignments.iter().find(|((at, _), existing)| {
                *at == key.0
                    && same(&existing["properties"]["principalId"], principal)
                    && role_guid(
                        existing["properties"]["roleDefinitionId"]
                            .as_str()
                            .unwrap_or_default(),
                    ) == role_guid(role)
            }) {
                return arm_error(
                    409,
                    "RoleAssignmentExists",
                    &format!(
                        "The role assignment already exists. The ID of the existing role assignment is {}.",
                        held.replace('-', "")
                    ),
                );
            }
            let assignment = role_assignment(
                scope,
                name,
                role,
                principal,
                &kind,
                properties["description"].as_str().unwrap_or_default(),
            );
            state.assignments.insert(key, assignment.clone());
            respond(201, &assignment)
        }
        _ => arm_error(
            405,
            "MethodNotAllowed",
            "The requested resource does not support this method.",
        ),
    }
}

fn schedule(
    name: &str,
    scope: &str,
    role: &str,
    principal: &str,
    request: &str,
    start: Timestamp,
    end: Timestamp,
) -> Value {
    json!({
        "properties": {
            "scope": scope,
            "roleDefinitionId": role,
            "principalId": principal,
            "principalType": "User",
            "status": "Provisioned",
            "roleAssignmentScheduleRequestId": request,
            "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string(),
            "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string(),
            "assignmentType": "Assigned",
            "memberType": "Direct",
            "createdOn": Timestamp::now().to_string(),
        },
        "name": name,
        "id": format!("{scope}/providers/Microsoft.Authorization/roleAssignmentSchedules/{name}"),
        "type": "Microsoft.Authorization/roleAssignmentSchedules",
    })
}

/// PIM ends schedules at their end time.
fn expire_schedules(state: &mut State) {
    let now = Timestamp::now();
    state.schedules.retain(|_, schedule| {
        schedule["properties"]["endDateTime"]
            .as_str()
            .and_then(|end| end.parse::<Timestamp>().ok())
            .is_none_or(|end| end > now)
    });
}

fn schedule_requests(
    state: &mut State,
    method: &Method,
    scope: &str,
    name: &str,
    body: &Value,
) -> Response<Full<Bytes>> {
    let key = (scope.to_lowercase(), name.to_lowercase());
    if *method == Method::GET {
        return match state.schedule_requests.get(&key) {
            Some(request) => respond(200, request),
            None => arm_error(
                404,
                "RoleAssignmentScheduleRequestNotFound",
                &format!("The role assignment schedule request '{name}' is not found."),
            ),
        };
    }
    if *method != Method::PUT {
        return arm_error(
            405,
            "MethodNotAllowed",
            "The requested resource does not support this method.",
        );
    }
    if !is_guid(name) {
        return arm_error(
            400,
            "InvalidRoleAssignmentScheduleRequestName",
            &format!("The role assignment schedule request name '{name}' must be a GUID."),
        );
    }
    expire_schedules(state);
    let properties = &body["properties"];
    let (Some(role), Some(principal), Some(kind)) = (
        properties["roleDefinitionId"].as_str(),
        properties["principalId"].as_str(),
        properties["requestType"].as_str(),
    ) else {
        return arm_error(
            400,
            "InvalidRoleAssignmentRequest",
            "principalId, roleDefinitionId and requestType are required.",
        );
    };
    if !state.principals.contains_key(&principal.to_lowercase()) {
        return arm_error(
            400,
            "PrincipalNotFound",
            &format!(
                "Principal {} does not exist in the directory {TENANT}.",
                principal.replace('-', "")
            ),
        );
    }
    let holding = state
        .schedules
        .iter()
        .find(|(_, schedule)| {
            let held = &schedule["properties"];
            same(&held["principalId"], principal)
                && same(&held["scope"], scope)
                && role_guid(held["roleDefinitionId"].as_str().unwrap_or_default())
                    == role_guid(role)
        })
        .map(|(held, _)| held.clone());
    let request_id =
        format!("{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}");
    let mut stored = json!({
        "properties": properties.clone(),
        "name": name,
        "id": request_id,
        "type": "Microsoft.Authorization/RoleAssignmentScheduleRequests",
    });
    stored["properties"]["scope"] = json!(scope);
    stored["properties"]["principalType"] = json!("User");
    stored["properties"]["requestorId"] = json!(CLIENT_ID);
    stored["properties"]["createdOn"] = json!(Timestamp::now().to_string());
    match kind {
        "AdminAssign" => {
            // Azure checks the request's name first: a retried PUT of a request it already
            // took is refused as a duplicate request, before the access is looked at.
            let repeated = state.schedule_requests.contains_key(&key);
            if repeated && !state.assignment_exists_first.contains(&key.0) {
                return arm_error(
                    409,
                    "RoleAssignmentRequestExists",
                    &format!("A role assignment request with Id: {name} already exists"),
                );
            }
            if holding.is_some() {
                return arm_error(
                    409,
                    "RoleAssignmentExists",
                    "The Role assignment already exists.",
                );
            }
            if repeated {
                return arm_error(
                    409,
                    "RoleAssignmentRequestExists",
                    &format!("A role assignment request with Id: {name} already exists"),
                );
            }
            let expiration = &properties["scheduleInfo"]["expiration"];
            let start = properties["scheduleInfo"]["startDateTime"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            let end = expiration["endDateTime"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            let (Some(start), Some(end)) = (start, end) else {
                return arm_error(
                    400,
                    "InvalidScheduleInfo",
                    "scheduleInfo needs startDateTime and an expiration with endDateTime.",
                );
            };
            if expiration["type"] != "AfterDateTime" {
                return arm_error(
                    400,
                    "InvalidScheduleInfo",
                    "Only AfterDateTime expirations are accepted by this fake.",
                );
            }
            let limit = state.scopes.get(&key.0).copied().flatten();
            if let Some(minutes) = limit
                && end.duration_since(start) > jiff::SignedDuration::from_mins(minutes)
            {
                return arm_error(
                    400,
                    "RoleAssignmentRequestPolicyValidationFailed",
                    "The following policy rules failed: [\"ExpirationRule\"]",
                );
            }
            let schedule_name = uuid::Uuid::new_v4().to_string();
            state.schedules.insert(
                schedule_name.clone(),
                schedule(
                    &schedule_name,
                    scope,
                    role,
                    principal,
                    &request_id,
                    start,
                    end,
                ),
            );
            stored["properties"]["status"] = json!("Provisioned");
            stored["properties"]["targetRoleAssignmentScheduleId"] = json!(format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignmentSchedules/{schedule_name}"
            ));
        }
        "AdminRemove" => {
            let Some(held) = holding else {
                return arm_error(
                    400,
                    "RoleAssignmentDoesNotExist",
                    "The Role assignment does not exist.",
                );
            };
            state.schedules.remove(&held);
            stored["properties"]["status"] = json!("Revoked");
            stored["properties"]["targetRoleAssignmentScheduleId"] = json!(format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignmentSchedules/{held}"
            ));
        }
        other => {
            return arm_error(
                400,
                "InvalidRequestType",
                &format!("The request type '{other}' is not supported by this fake."),
            );
        }
    }
    state.schedule_requests.insert(key, stored.clone());
    respond(201, &stored)
}

fn schedules_list(
    state: &mut State,
    path: &str,
    scope: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    expire_schedules(state);
    let principal = query_value(query, "$filter").map(|filter| {
        filter
            .strip_prefix("principalId eq ")
            .map(|id| id.trim_matches('\'').to_owned())
            .ok_or(filter)
    });
    let principal = match principal {
        Some(Err(filter)) => {
            return arm_error(
                400,
                "InvalidFilter",
                &format!("The filter '{filter}' is not supported."),
            );
        }
        Some(Ok(principal)) => Some(principal),
        None => None,
    };
    let mut matching: Vec<Value> = state
        .schedules
        .values()
        .filter(|schedule| same(&schedule["properties"]["scope"], scope))
        .filter(|schedule| {
            principal
                .as_deref()
                .is_none_or(|id| same(&schedule["properties"]["principalId"], id))
        })
        .cloned()
        .collect();
    matching.sort_by_key(|schedule| schedule["name"].as_str().unwrap_or_default().to_owned());
    let skip: usize = query_value(query, "$skipToken")
        .and_then(|skip| skip.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(PAGE_SIZE)
        .cloned()
        .collect();
    let mut body = json!({"value": page});
    if skip + PAGE_SIZE < matching.len() {
        let endpoint = FAKE
            .get()
            .map(|fake| fake.endpoint.clone())
            .unwrap_or_default();
        let mut next = format!(
            "{endpoint}{path}?api-version={PIM_API}&$skipToken={}",
            skip + PAGE_SIZE
        );
        if let Some(filter) = query_value(query, "$filter") {
            next.push_str("&$filter=");
            next.push_str(&urlencoding::encode(&filter));
        }
        body["nextLink"] = json!(next);
    }
    respond(200, &body)
}

const ACTIVITY_LOG_PATH: &str = "/providers/microsoft.insights/eventtypes/management/values";
const ACTIVITY_LOG_API: &str = "2015-04-01";
/// Activity Log events per page, small so that paging is exercised.
const ACTIVITY_PAGE_SIZE: usize = 3;

/// The Activity Log of a subscription.
fn activity_log(state: &mut State, path: &str, query: &str) -> Response<Full<Bytes>> {
    let api_version = query_value(query, "api-version").unwrap_or_default();
    if api_version != ACTIVITY_LOG_API {
        return arm_error(
            400,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{api_version}' is invalid. The supported versions include '{ACTIVITY_LOG_API}'."
            ),
        );
    }
    let subscription = path
        .trim_start_matches('/')
        .split('/')
        .nth(1)
        .unwrap_or_default()
        .to_lowercase();
    match state.activity_faults.pop_front() {
        Some(Fault::TooManyRequests(seconds)) => {
            state.activity_faulted += 1;
            let mut response = arm_error(429, "TooManyRequests", "The request is being throttled.");
            response.headers_mut().insert("retry-after", seconds.into());
            return response;
        }
        Some(Fault::ServerError) | Some(Fault::DropReply) => {
            state.activity_faulted += 1;
            return arm_error(
                500,
                "InternalServerError",
                "Encountered internal server error.",
            );
        }
        None => {}
    }
    let filter = query_value(query, "$filter").unwrap_or_default();
    let bad = |why: &str| {
        arm_error(
            400,
            "BadRequest",
            &format!("The $filter '{filter}' is not supported: {why}"),
        )
    };
    // eventTimestamp ge 'T' and eventTimestamp le 'T'[ and FIELD eq 'V']
    let parts: Vec<&str> = filter.split(" and ").collect();
    let quoted = |text: &str, prefix: &str| -> Option<String> {
        text.strip_prefix(prefix)?
            .strip_prefix('\'')?
            .strip_suffix('\'')
            .map(str::to_owned)
    };
    let (Some(from), Some(to)) = (
        parts
            .first()
            .and_then(|part| quoted(part, "eventTimestamp ge ")),
        parts
            .get(1)
            .and_then(|part| quoted(part, "eventTimestamp le ")),
    ) else {
        return bad("it must start with eventTimestamp ge '...' and eventTimestamp le '...'");
    };
    let (Ok(from), Ok(to)) = (from.parse::<Timestamp>(), to.parse::<Timestamp>()) else {
        return bad("the times are not ISO 8601");
    };
    if from < Timestamp::now() - jiff::SignedDuration::from_hours(90 * 24) {
        return bad("the start time is more than 90 days ago");
    }
    let narrowed = match parts.get(2..).unwrap_or_default() {
        [] => None,
        [term] => {
            let Some((field, value)) = [
                "resourceGroupName",
                "resourceUri",
                "resourceProvider",
                "correlationId",
            ]
            .iter()
            .find_map(|field| quoted(term, &format!("{field} eq ")).map(|value| (*field, value))) else {
                return bad("no other syntax is allowed");
            };
            Some((field, value.to_lowercase()))
        }
        _ => return bad("no other syntax is allowed"),
    };
    let mut matching: Vec<&Value> = state
        .activity
        .iter()
        .filter(|event| {
            let resource = event["resourceId"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            let time: Timestamp = event["eventTimestamp"].as_str().unwrap().parse().unwrap();
            resource.starts_with(&format!("/subscriptions/{subscription}/"))
                && time >= from
                && time <= to
                && narrowed.as_ref().is_none_or(|(field, value)| match *field {
                    "resourceGroupName" => {
                        event["resourceGroupName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_lowercase()
                            == *value
                    }
                    "resourceUri" => resource == *value,
                    "resourceProvider" => {
                        event["resourceProviderName"]["value"]
                            .as_str()
                            .unwrap_or_default()
                            .to_lowercase()
                            == *value
                    }
                    _ => {
                        event["correlationId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_lowercase()
                            == *value
                    }
                })
        })
        .collect();
    // Newest first, as the service lists them.
    matching.sort_by_key(|event| {
        std::cmp::Reverse(
            event["eventTimestamp"]
                .as_str()
                .unwrap()
                .parse::<Timestamp>()
                .unwrap(),
        )
    });
    let skip: usize = query_value(query, "$skipToken")
        .and_then(|token| {
            token
                .strip_prefix("page-")
                .and_then(|skip| skip.parse().ok())
        })
        .unwrap_or(0);
    let page: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(ACTIVITY_PAGE_SIZE)
        .map(|event| (*event).clone())
        .collect();
    let mut body = json!({"value": page});
    if skip + ACTIVITY_PAGE_SIZE < matching.len() {
        let endpoint = FAKE
            .get()
            .map(|fake| fake.endpoint.clone())
            .unwrap_or_default();
        body["nextLink"] = json!(format!(
            "{endpoint}{path}?api-version={ACTIVITY_LOG_API}&$filter={}&$skipToken=page-{}",
            urlencoding::encode(&filter),
            skip + ACTIVITY_PAGE_SIZE
        ));
    }
    state.activity_pages += 1;
    respond(200, &body)
}

/// Starts an operator for Azure against the fake, with workload identity, plus `environment`.
pub fn start_operator(environment: &[(&str, &str)]) -> super::operator::Operator {
    let fake = azure_fake();
    let args = fake.operator_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut variables = fake.operator_environment();
    variables.extend(
        environment
            .iter()
            .map(|(key, value)| (*key, (*value).to_owned())),
    );
    let variables: Vec<(&str, &str)> = variables
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    super::operator::Operator::start_with_args("jit-operator", &args, &variables)
}

/// A policy letting devs request Reader at `scope` in `mode`, for alice mapped to `object_id`.
pub async fn azure_policy(
    env: &super::TestEnv,
    scope: &str,
    mode: &str,
    object_id: &str,
    approvals: u32,
) -> String {
    super::create_policy(
        env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": approvals,
            "maxDuration": "2h",
            "roles": [{"name": "reader", "azure": {
                "scope": scope, "roleDefinitionId": READER,
                "principalId": "{{mapping.azureObjectId}}", "principalType": "User",
                "mode": mode, "ticketSystem": "ServiceNow"}}],
            "identityMappings": [{"subject": "alice", "values": {"azureObjectId": object_id}}],
        }),
    )
    .await
}

/// Alice requests the policy's role for `duration`.
pub async fn request(
    env: &super::TestEnv,
    policy: &str,
    duration: &str,
) -> jit_operator::crd::v1alpha1::AccessRequest {
    super::alice_requests(
        env,
        &format!("az-{}", super::random_suffix(6).to_lowercase()),
        json!({"policy": policy, "role": "reader", "duration": duration,
               "reason": "INC-77 dashboards down"}),
    )
    .await
}

/// How many grants of the role exist at `scope` in `mode`: role assignments, or live PIM
/// schedules.
pub fn held(scope: &str, mode: &str) -> usize {
    if mode == "pim" {
        azure_fake().schedules(scope).len()
    } else {
        azure_fake().assignments(scope).len()
    }
}
