//! `kubectl jit`: the command line people use to see what they may request, request it and
//! wait for it, decide on others' requests, list them and end their own, without writing YAML.
//! Identity is the API server's (a SelfSubjectReview), never typed; the policy checks are the
//! library's, run locally first so that a mistake is caught before the API call (the API
//! server's admission remains the authority).
//!
//! Exit codes: 0 done (for `request --wait`: granted); 1 refused or failed (denied, failed,
//! refused by the API server); 2 a usage or local policy error; 3 `--wait` timed out;
//! 4 the cluster could not be reached.

use std::{
    collections::BTreeMap,
    io::{BufRead, IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

use crate::{
    crd::{
        ApiDuration,
        v1alpha1::{AccessPolicy, AccessRequest, AccessRequestSpec, Phase, Requester, annotations},
    },
    policy,
};

/// Why a command did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, or a request the policy refuses (checked locally).
    #[error("{0}")]
    Usage(String),
    /// The API server refused, or the request was denied or failed.
    #[error("{0}")]
    Refused(String),
    /// `--wait` ran out.
    #[error("{0}")]
    Timeout(String),
    /// The cluster could not be reached or configured.
    #[error("{0}")]
    Unreachable(String),
}

impl Error {
    fn code(&self) -> u8 {
        match self {
            Self::Refused(_) => 1,
            Self::Usage(_) => 2,
            Self::Timeout(_) => 3,
            Self::Unreachable(_) => 4,
        }
    }

    /// The API server's own words for a refusal.
    fn api(action: &str, error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => Self::Refused(format!("{action}: {}", status.message)),
            other => Self::Unreachable(format!(
                "{action}: {}",
                crate::telemetry::error_chain(&other)
            )),
        }
    }
}

/// How to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table, as kubectl prints one.
    Table,
    /// JSON, times in RFC 3339.
    Json,
    /// YAML, times in RFC 3339.
    Yaml,
    /// `accessrequest/NAME` per line.
    Name,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-jit",
    bin_name = "kubectl jit",
    about = "Request, approve, watch and end just-in-time access",
    after_help = "Exit codes: 0 done (request --wait: granted), 1 refused, denied or failed, \
                  2 usage or policy error, 3 --wait timed out, 4 cluster unreachable."
)]
pub struct Cli {
    /// The namespace of requests (the kubeconfig context's when unset).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace I can read (list).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig file (KUBECONFIG or ~/.kube/config when unset).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// How to print.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// My identity and groups, as the API server sees them.
    #[command(after_help = "Example: kubectl jit whoami")]
    Whoami,
    /// What I may request: the policies whose requesters include me, and their roles.
    #[command(after_help = "Example: kubectl jit policies")]
    Policies,
    /// Requests a role of a policy; prints the request and, with --wait, follows it until it
    /// is granted, denied or failed.
    #[command(
        after_help = "Example: kubectl jit request prod-db read-only --for 30m --reason \"INC-1234 disk full\" --wait"
    )]
    Request {
        /// The policy.
        policy: String,
        /// The role of the policy.
        role: String,
        /// For how long (the policy's default when unset): 30m, 2h.
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why, for the approvers (a ticket if the policy asks for one).
        #[arg(long)]
        reason: Option<String>,
        /// Someone else to receive it (a user, group:NAME or a service account), when the
        /// policy lets me request for them.
        #[arg(long)]
        subject: Option<String>,
        /// Follow the request until it is granted (exit 0), denied or failed (exit 1).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// Approves someone's request.
    #[command(
        after_help = "Example: kubectl jit approve db-fix-x7k2p --comment \"ticket checked\""
    )]
    Approve {
        /// The request.
        name: String,
        /// A comment for the record.
        #[arg(long, default_value = "approved")]
        comment: String,
        /// Do not ask to confirm.
        #[arg(short, long)]
        yes: bool,
    },
    /// Denies someone's request.
    #[command(after_help = "Example: kubectl jit deny db-fix-x7k2p --comment \"use the runbook\"")]
    Deny {
        /// The request.
        name: String,
        /// Why (required).
        #[arg(long)]
        comment: String,
        /// Do not ask to confirm.
        #[arg(short, long)]
        yes: bool,
    },
    /// Ends a grant early.
    #[command(after_help = "Example: kubectl jit revoke db-fix-x7k2p --reason done")]
    Revoke {
        /// The request.
        name: String,
        /// Why.
        #[arg(long, default_value = "done")]
        reason: String,
    },
    /// Everything about one request: who asked for what and why, the decisions, the grant,
    /// time left, the timeline and what was done with the access.
    #[command(after_help = "Example: kubectl jit show db-fix-x7k2p")]
    Show {
        /// The request.
        name: String,
    },
    /// Prints a shell completion script: bash, zsh or fish.
    #[command(after_help = "Example: source <(kubectl jit completion bash)")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Lists requests.
    #[command(after_help = "Example: kubectl jit list --pending-for-me -A")]
    List {
        /// Only the ones I asked for.
        #[arg(long, conflicts_with_all = ["pending_for_me", "active"])]
        mine: bool,
        /// Only pending ones I may decide on.
        #[arg(long, conflicts_with = "active")]
        pending_for_me: bool,
        /// Only active grants.
        #[arg(long)]
        active: bool,
    },
}

/// Runs the command line; the process's exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.code())
        }
    }
}

async fn client(cli: &Cli) -> Result<(Client, String), Error> {
    let unreachable = |error: &dyn std::fmt::Display| Error::Unreachable(error.to_string());
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| unreachable(&e))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| unreachable(&e))?
        }
        None => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| unreachable(&e))?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| unreachable(&e))?;
    Ok((client, namespace))
}

/// Who the API server says I am.
async fn whoami(client: &Client) -> Result<UserInfo, Error> {
    let review = SelfSubjectReview {
        metadata: ObjectMeta::default(),
        status: None,
    };
    let reviewed = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|error| Error::api("ask the API server who I am", error))?;
    reviewed
        .status
        .and_then(|status| status.user_info)
        .ok_or_else(|| Error::Refused("the API server did not say who I am".into()))
}

async fn run(cli: Cli) -> Result<(), Error> {
    if let Command::Completion { shell } = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(*shell, &mut command, "kubectl-jit", &mut std::io::stdout());
        return Ok(());
    }
    let (client, namespace) = client(&cli).await?;
    match &cli.command {
        Command::Whoami => {
            let me = whoami(&client).await?;
            match cli.output {
                Output::Json => print_json(&me),
                Output::Yaml => print_yaml(&me),
                Output::Table | Output::Name => {
                    let groups = me.groups.unwrap_or_default().join(", ");
                    println!("{} (groups: {groups})", me.username.unwrap_or_default());
                }
            }
            Ok(())
        }
        Command::Policies => policies(&client, &cli).await,
        Command::Request {
            policy,
            role,
            duration,
            reason,
            subject,
            wait,
            timeout,
        } => {
            let spec = AccessRequestSpec {
                policy: policy.clone(),
                role: role.clone(),
                duration: duration
                    .as_deref()
                    .map(ApiDuration::parse)
                    .transpose()
                    .map_err(|error| Error::Usage(format!("--for: {error}")))?,
                reason: reason.clone(),
                subject: subject.clone(),
                requester: None,
            };
            let timeout = ApiDuration::parse(timeout)
                .and_then(|parsed| parsed.to_std())
                .map_err(|error| Error::Usage(format!("--timeout: {error}")))?;
            request(&client, &namespace, &cli, spec, wait.then_some(timeout)).await
        }
        Command::Approve { name, comment, yes } => {
            decide(
                &client,
                &namespace,
                name,
                annotations::APPROVE,
                comment,
                *yes,
            )
            .await
        }
        Command::Deny { name, comment, yes } => {
            decide(&client, &namespace, name, annotations::DENY, comment, *yes).await
        }
        Command::Revoke { name, reason } => {
            annotate(&client, &namespace, name, annotations::REVOKE, reason).await?;
            println!("accessrequest/{name} revoke asked: {reason}");
            Ok(())
        }
        Command::List {
            mine,
            pending_for_me,
            active,
        } => list(&client, &namespace, &cli, *mine, *pending_for_me, *active).await,
        Command::Show { name } => show(&client, &namespace, &cli, name).await,
        Command::Completion { .. } => Ok(()),
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn print_yaml<T: serde::Serialize>(value: &T) {
    print!("{}", serde_yaml::to_string(value).unwrap_or_default());
}

/// A role's target in plain words.
fn target_of(role: &crate::crd::v1alpha1::PolicyRole) -> String {
    if let Some(kubernetes) = &role.kubernetes {
        let role_name = &kubernetes.cluster_role;
        return match &kubernetes.namespace {
            Some(namespace) => format!("kubernetes {role_name} in {namespace}"),
            None => format!("kubernetes {role_name} cluster-wide"),
        };
    }
    if role.aws.is_some() {
        return "aws".into();
    }
    if let Some(gcp) = &role.gcp {
        return format!("gcp {} on {}", gcp.role, gcp.resource);
    }
    if let Some(azure) = &role.azure {
        return format!("azure role at {}", azure.scope);
    }
    String::new()
}

/// Prints rows under a header, columns padded as kubectl pads them.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|name| name.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(index, cell)| format!("{cell:<width$}", width = widths[index]))
            .collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

async fn policies(client: &Client, cli: &Cli) -> Result<(), Error> {
    let me = whoami(client).await?;
    let (user, groups) = (
        me.username.clone().unwrap_or_default(),
        me.groups.clone().unwrap_or_default(),
    );
    let listed = Api::<AccessPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|error| Error::api("list policies", error))?;
    let mine: Vec<AccessPolicy> = listed
        .items
        .into_iter()
        .filter(|policy| policy.spec.requesters.admits(&user, &groups))
        .collect();
    match cli.output {
        Output::Json => print_json(&mine),
        Output::Yaml => print_yaml(&mine),
        Output::Name => {
            for policy in &mine {
                println!("accesspolicy/{}", policy.name_any());
            }
        }
        Output::Table => {
            let mut rows = Vec::new();
            for policy in &mine {
                for role in &policy.spec.roles {
                    let approvals = role
                        .approvals_required
                        .map_or(i64::from(policy.spec.approvals_required), i64::from);
                    let max = role
                        .max_duration
                        .as_ref()
                        .unwrap_or(&policy.spec.max_duration);
                    rows.push(vec![
                        policy.name_any(),
                        role.name.clone(),
                        target_of(role),
                        max.to_string(),
                        approvals.to_string(),
                    ]);
                }
            }
            if rows.is_empty() {
                println!("{user} may request nothing: no policy lists them or their groups");
                return Ok(());
            }
            table(&["POLICY", "ROLE", "GRANTS", "MAX", "APPROVALS"], &rows);
        }
    }
    Ok(())
}

async fn request(
    client: &Client,
    namespace: &str,
    cli: &Cli,
    spec: AccessRequestSpec,
    wait: Option<Duration>,
) -> Result<(), Error> {
    let me = whoami(client).await?;
    let policy = Api::<AccessPolicy>::all(client.clone())
        .get_opt(&spec.policy)
        .await
        .map_err(|error| Error::api("read the policy", error))?
        .ok_or_else(|| {
            Error::Usage(format!(
                "policy {} does not exist (kubectl jit policies lists yours)",
                spec.policy
            ))
        })?;
    // The library's own checks, before the API call; admission checks again.
    let requester = Requester {
        username: me.username.clone().unwrap_or_default(),
        uid: me.uid.clone(),
        groups: me.groups.clone().unwrap_or_default(),
        extra: BTreeMap::new(),
    };
    policy::check_request(&policy, &spec, &requester)
        .map_err(|refusal| Error::Usage(refusal.to_string()))?;
    let request = AccessRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", spec.role)),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    };
    let api = Api::<AccessRequest>::namespaced(client.clone(), namespace);
    let created = api
        .create(&PostParams::default(), &request)
        .await
        .map_err(|error| Error::api("create the request", error))?;
    let name = created.name_any();
    match cli.output {
        Output::Name => println!("accessrequest/{name}"),
        _ => println!("accessrequest/{name} created"),
    }
    let Some(limit) = wait else {
        return Ok(());
    };
    follow(&api, &name, limit).await
}

/// Prints each new state of the request until it is granted, denied or failed.
async fn follow(api: &Api<AccessRequest>, name: &str, limit: Duration) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut said = String::new();
    loop {
        let request = api
            .get(name)
            .await
            .map_err(|error| Error::api("read the request", error))?;
        let status = request.status.clone().unwrap_or_default();
        let message = status.message.clone().unwrap_or_default();
        if !message.is_empty() && message != said {
            println!("{name}: {message}");
            said = message;
        }
        match status.phase {
            Some(Phase::Active) => {
                let until = status
                    .expires_at
                    .as_ref()
                    .map(|time| time.0.to_string())
                    .unwrap_or_default();
                println!("{name}: granted until {until}");
                return Ok(());
            }
            Some(phase @ (Phase::Denied | Phase::Failed | Phase::Expired | Phase::Revoked)) => {
                return Err(Error::Refused(format!(
                    "{name} is {}: {said}",
                    phase.as_str()
                )));
            }
            Some(Phase::Pending) | None => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{name} is still pending after {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn annotate(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<(), Error> {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    Api::<AccessRequest>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(|error| Error::api(&format!("update {name}"), error))
}

/// Shows the approver what they decide on, asks on a terminal, then records the decision.
async fn decide(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    comment: &str,
    yes: bool,
) -> Result<(), Error> {
    let api = Api::<AccessRequest>::namespaced(client.clone(), namespace);
    let request = api
        .get(name)
        .await
        .map_err(|error| Error::api(&format!("read {name}"), error))?;
    let verb = if key == annotations::APPROVE {
        "approve"
    } else {
        "deny"
    };
    let requester = requester_of(&request);
    let approvals = request
        .status
        .as_ref()
        .map(|status| status.approvals.len())
        .unwrap_or_default();
    println!(
        "{name}: {requester} asks for {} of {}{}, for {}\n  reason: {}\n  decisions so far: {approvals}",
        request.spec.role,
        request.spec.policy,
        request
            .spec
            .subject
            .as_ref()
            .map(|subject| format!(" for {subject}"))
            .unwrap_or_default(),
        request
            .spec
            .duration
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "the policy's default".into()),
        request.spec.reason.clone().unwrap_or_default(),
    );
    if !yes && std::io::stdin().is_terminal() {
        print!("{verb} {name}? [y/N] ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(Error::Refused(format!("did not {verb} {name}")));
        }
    }
    annotate(client, namespace, name, key, comment).await?;
    println!("accessrequest/{name}: {verb}d");
    Ok(())
}

/// Prints one request whole.
async fn show(client: &Client, namespace: &str, cli: &Cli, name: &str) -> Result<(), Error> {
    let request = Api::<AccessRequest>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|error| Error::api(&format!("read {name}"), error))?;
    match cli.output {
        Output::Json => print_json(&request),
        Output::Yaml => print_yaml(&request),
        Output::Name => println!("accessrequest/{name}"),
        Output::Table => print!("{}", describe(&request, Timestamp::now())),
    }
    Ok(())
}

/// A request as people read it. Pure.
fn describe(request: &AccessRequest, now: Timestamp) -> String {
    let status = request.status.clone().unwrap_or_default();
    let mut text = String::new();
    let mut line = |label: &str, value: String| {
        if !value.is_empty() {
            text.push_str(&format!("{label:<11}{value}\n"));
        }
    };
    line("Name:", request.name_any());
    line("Namespace:", request.namespace().unwrap_or_default());
    line("Requester:", requester_of(request));
    line("Subject:", crate::audit::event::subject_of(request));
    line(
        "Role:",
        format!("{} of policy {}", request.spec.role, request.spec.policy),
    );
    line("Reason:", request.spec.reason.clone().unwrap_or_default());
    line(
        "Phase:",
        status.phase.map_or("Pending", Phase::as_str).to_owned(),
    );
    line("Message:", status.message.clone().unwrap_or_default());
    if let Some(grant) = &status.grant {
        line(
            "Granted:",
            format!("{} ({})", grant.reference, grant.provider),
        );
    }
    if let (Some(Phase::Active), Some(expires)) = (status.phase, &status.expires_at) {
        line(
            "Expires:",
            format!("{} ({})", expires.0, human(expires.0, now)),
        );
    }
    for approval in &status.approvals {
        line(
            "Decision:",
            format!(
                "{:?} by {} at {}{}",
                approval.decision,
                approval.user,
                approval.time.0,
                approval
                    .comment
                    .as_ref()
                    .map(|comment| format!(": {comment}"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(activity) = &status.activity {
        line(
            "Activity:",
            format!(
                "{} actions, {} refused{}",
                activity.actions,
                activity.refused,
                activity
                    .last_action_time
                    .as_ref()
                    .map(|time| format!(", last {}", human(time.0, now)))
                    .unwrap_or_default()
            ),
        );
    }
    text.push_str("Timeline:\n");
    for entry in &status.timeline {
        text.push_str(&format!(
            "  {}  {:<14} {}{}\n",
            entry.time.0,
            entry.event,
            entry.actor.clone().unwrap_or_default(),
            entry
                .message
                .as_ref()
                .map(|message| format!("  {message}"))
                .unwrap_or_default()
        ));
    }
    text
}

/// Who asked for the request, as admission recorded them.
fn requester_of(request: &AccessRequest) -> String {
    request
        .spec
        .requester
        .as_ref()
        .map(|requester| requester.username.clone())
        .unwrap_or_default()
}

/// Human time to `to` from `now`: `in 23m`, `3h ago`.
fn human(to: Timestamp, now: Timestamp) -> String {
    let seconds = to.as_second() - now.as_second();
    let magnitude = seconds.unsigned_abs();
    let text = match magnitude {
        0..=119 => format!("{magnitude}s"),
        120..=7_199 => format!("{}m", magnitude / 60),
        7_200..=172_799 => format!("{}h", magnitude / 3_600),
        _ => format!("{}d", magnitude / 86_400),
    };
    if seconds >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

async fn list(
    client: &Client,
    namespace: &str,
    cli: &Cli,
    mine: bool,
    pending_for_me: bool,
    active: bool,
) -> Result<(), Error> {
    // Only the filters about me need to know who I am.
    let (user, groups) = if mine || pending_for_me {
        let me = whoami(client).await?;
        (
            me.username.unwrap_or_default(),
            me.groups.unwrap_or_default(),
        )
    } else {
        (String::new(), Vec::new())
    };
    let api = if cli.all_namespaces {
        Api::<AccessRequest>::all(client.clone())
    } else {
        Api::<AccessRequest>::namespaced(client.clone(), namespace)
    };
    let mut requests = api
        .list(&ListParams::default())
        .await
        .map_err(|error| Error::api("list requests", error))?
        .items;
    let approvers: BTreeMap<String, AccessPolicy> = if pending_for_me {
        Api::<AccessPolicy>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|error| Error::api("list policies", error))?
            .items
            .into_iter()
            .map(|policy| (policy.name_any(), policy))
            .collect()
    } else {
        BTreeMap::new()
    };
    let phase = |request: &AccessRequest| request.status.as_ref().and_then(|status| status.phase);
    requests.retain(|request| {
        if mine {
            return requester_of(request) == user;
        }
        if active {
            return phase(request) == Some(Phase::Active);
        }
        if pending_for_me {
            return matches!(phase(request), Some(Phase::Pending) | None)
                && requester_of(request) != user
                && approvers
                    .get(&request.spec.policy)
                    .is_some_and(|policy| policy.spec.approvers.admits(&user, &groups));
        }
        true
    });
    match cli.output {
        Output::Json => print_json(&requests),
        Output::Yaml => print_yaml(&requests),
        Output::Name => {
            for request in &requests {
                println!("accessrequest/{}", request.name_any());
            }
        }
        Output::Table => {
            let now = Timestamp::now();
            let rows: Vec<Vec<String>> = requests
                .iter()
                .map(|request| {
                    let status = request.status.clone().unwrap_or_default();
                    let expires = match (status.phase, status.expires_at) {
                        (Some(Phase::Active), Some(at)) => human(at.0, now),
                        _ => "-".into(),
                    };
                    let age = request
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        // An age, never "in": the API server's clock may run ahead of ours.
                        .map(|created| {
                            human(created.0.min(now), now)
                                .trim_end_matches(" ago")
                                .trim_start_matches("in ")
                                .to_owned()
                        })
                        .unwrap_or_default();
                    let mut row = Vec::new();
                    if cli.all_namespaces {
                        row.push(request.namespace().unwrap_or_default());
                    }
                    row.extend([
                        request.name_any(),
                        request.spec.policy.clone(),
                        request.spec.role.clone(),
                        crate::audit::event::subject_of(request),
                        status.phase.map_or("Pending", Phase::as_str).to_owned(),
                        expires,
                        age,
                    ]);
                    row
                })
                .collect();
            if rows.is_empty() {
                println!("No requests found.");
                return Ok(());
            }
            let mut header = Vec::new();
            if cli.all_namespaces {
                header.push("NAMESPACE");
            }
            header.extend([
                "NAME",
                "POLICY",
                "ROLE",
                "SUBJECT",
                "PHASE",
                "EXPIRES IN",
                "AGE",
            ]);
            table(&header, &rows);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_human_ahead_and_behind() {
        let now: Timestamp = "2026-01-01T12:00:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let at = |seconds: i64| now + jiff::SignedDuration::from_secs(seconds);
        assert_eq!(human(at(23 * 60), now), "in 23m");
        assert_eq!(human(at(-3 * 3_600), now), "3h ago");
        assert_eq!(human(at(45), now), "in 45s");
        assert_eq!(human(at(-3 * 86_400), now), "3d ago");
    }

    #[test]
    fn the_command_line_parses_like_kubectls() {
        let cli = Cli::try_parse_from([
            "kubectl-jit",
            "request",
            "prod",
            "view",
            "--for",
            "30m",
            "--wait",
            "-n",
            "team",
            "-o",
            "name",
        ]);
        let cli = cli.unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(cli.namespace.as_deref(), Some("team"));
        assert_eq!(cli.output, Output::Name);
        assert!(matches!(cli.command, Command::Request { wait: true, .. }));
        assert!(
            Cli::try_parse_from(["kubectl-jit", "deny", "x"]).is_err(),
            "deny needs a comment"
        );
    }
}
