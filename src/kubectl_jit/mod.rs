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
use jiff::{Timestamp, tz::TimeZone};
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
        v1alpha1::{
            AccessPolicy, AccessRequest, AccessRequestSpec, Phase, PolicyRole, Requester,
            annotations,
        },
    },
    policy,
};

mod complete;
mod render;

use render::Paint;

impl Paint {
    /// For standard output.
    fn stdout() -> Self {
        Self::for_stream(std::io::stdout().is_terminal())
    }

    /// For standard error.
    fn stderr() -> Self {
        Self::for_stream(std::io::stderr().is_terminal())
    }

    fn for_stream(terminal: bool) -> Self {
        Self::new(
            terminal,
            std::env::var("NO_COLOR").ok().as_deref(),
            std::env::var("TERM").ok().as_deref(),
        )
    }
}

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
    /// The table with more columns.
    Wide,
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
    after_help = "Examples:\n  \
                  kubectl jit policies\n  \
                  kubectl jit request prod-db read-only --for 30m --reason \"INC-1234 disk full\" --wait\n  \
                  kubectl jit list --pending-for-me -A\n  \
                  kubectl jit approve read-only-x7k2p -n team-a --comment \"ticket checked\"\n\n\
                  Exit codes: 0 done (request --wait: granted), 1 refused, denied or failed, \
                  2 usage or policy error, 3 --wait timed out, 4 cluster unreachable.\n\
                  Colour only on a terminal; never with NO_COLOR set."
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
    #[command(after_help = "Examples:\n  kubectl jit whoami\n  kubectl jit whoami -o yaml")]
    Whoami,
    /// What I may request: the policies whose requesters include me, and their roles.
    #[command(after_help = "Examples:\n  \
        kubectl jit policies\n  \
        kubectl jit policies -o wide     # with approvers, reason rules and descriptions\n  \
        kubectl jit policies -o yaml     # the policies whole")]
    Policies,
    /// Requests a role of a policy; prints the request and, with --wait, follows it until it
    /// is granted, denied or failed.
    #[command(after_help = "Examples:\n  \
        kubectl jit request prod-db read-only --reason \"INC-1234 disk full\"\n  \
        kubectl jit request prod-db read-only --for 30m --reason \"INC-1234\" --wait --timeout 5m\n  \
        kubectl jit request deploy edit --subject system:serviceaccount:ci:deployer -n ci\n  \
        NAME=$(kubectl jit request prod-db read-only --reason INC-1 -o name)\n\n\
        With --wait: exit 0 once granted, 1 if denied or failed, 3 if --timeout runs out \
        (the request stays).")]
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
    #[command(after_help = "Examples:\n  \
        kubectl jit approve read-only-x7k2p --comment \"ticket checked\"\n  \
        kubectl jit approve read-only-x7k2p -n team-a --yes   # no prompt, for scripts\n\n\
        Shows who asks, for what and why first, and asks to confirm on a terminal.")]
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
    #[command(after_help = "Examples:\n  \
        kubectl jit deny read-only-x7k2p --comment \"use the runbook\"\n  \
        kubectl jit deny read-only-x7k2p -n team-a --comment \"no ticket\" --yes")]
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
    #[command(after_help = "Examples:\n  \
        kubectl jit revoke read-only-x7k2p\n  \
        kubectl jit revoke read-only-x7k2p -n team-a --reason \"incident closed\"")]
    Revoke {
        /// The request.
        name: String,
        /// Why.
        #[arg(long, default_value = "done")]
        reason: String,
    },
    /// Everything about one request: who asked for what and why, the decisions, the grant,
    /// time left, the timeline and what was done with the access.
    #[command(after_help = "Examples:\n  \
        kubectl jit show read-only-x7k2p\n  \
        kubectl jit show read-only-x7k2p -o json | jq .status.activity")]
    Show {
        /// The request.
        name: String,
    },
    /// Prints a shell completion script: bash, zsh or fish.
    #[command(after_help = "Examples:\n  \
        source <(kubectl jit completion bash)\n  \
        kubectl jit completion zsh > \"${fpath[1]}/_kubectl-jit\"\n  \
        kubectl jit completion fish > ~/.config/fish/completions/kubectl-jit.fish")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Lists requests.
    #[command(after_help = "Examples:\n  \
        kubectl jit list\n  \
        kubectl jit list --mine -A\n  \
        kubectl jit list --pending-for-me -A   # what waits for my decision\n  \
        kubectl jit list --active -o wide")]
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
    let words: Vec<String> = std::env::args().skip(1).collect();
    if let Some((first, rest)) = words.split_first()
        && first == complete::COMMAND
    {
        complete::answer(rest).await;
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{} {error}", Paint::stderr().error("error:"));
            ExitCode::from(error.code())
        }
    }
}

async fn client(cli: &Cli) -> Result<(Client, String), Error> {
    connect(
        cli.kubeconfig.as_deref(),
        cli.context.as_deref(),
        cli.namespace.as_deref(),
    )
    .await
}

/// A client as kubectl would make one: the kubeconfig file (else KUBECONFIG or
/// ~/.kube/config, else in-cluster), the context, and the namespace (else the context's).
async fn connect(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    namespace: Option<&str>,
) -> Result<(Client, String), Error> {
    let unreachable = |error: &dyn std::fmt::Display| Error::Unreachable(error.to_string());
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
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
    let namespace = namespace
        .map(str::to_owned)
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
                Output::Table | Output::Wide | Output::Name => {
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
        Output::Table | Output::Wide => {
            let now = Timestamp::now();
            let offers: Vec<render::Offer<'_>> = mine
                .iter()
                .flat_map(|policy| {
                    policy.spec.roles.iter().map(|role| render::Offer {
                        policy,
                        role,
                        auto: auto_approval(policy, role, &user, &groups, now),
                    })
                })
                .collect();
            if offers.is_empty() {
                println!("{user} may request nothing: no policy lists them or their groups");
                return Ok(());
            }
            print!(
                "{}",
                render::policies_table(&offers, columns(cli), Paint::stdout())
            );
        }
    }
    Ok(())
}

/// Whether the policy's rule would approve, now, a request of mine for `role` for its default
/// duration and without a reason: the operator's own evaluation, run locally.
fn auto_approval(
    policy: &AccessPolicy,
    role: &PolicyRole,
    user: &str,
    groups: &[String],
    now: Timestamp,
) -> render::AutoApproval {
    let Some(rule) = &policy.spec.auto_approve else {
        return render::AutoApproval::NoRule;
    };
    let Some(duration) = render::default_duration(policy, role) else {
        return render::AutoApproval::No;
    };
    let name = policy.name_any();
    let input = policy::auto_approve::Input {
        policy: &name,
        role: &role.name,
        duration,
        reason: "",
        subject_username: user,
        subject_groups: groups,
        now,
    };
    match policy::auto_approve::evaluate(&rule.expression, &input) {
        Ok(true) => render::AutoApproval::Yes,
        Ok(false) => render::AutoApproval::No,
        Err(_) => render::AutoApproval::Broken,
    }
}

fn columns(cli: &Cli) -> render::Columns {
    render::Columns {
        wide: cli.output == Output::Wide,
        namespace: cli.all_namespaces,
    }
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
    let approvals_required = policy::check_request(&policy, &spec, &requester)
        .map_err(|refusal| Error::Usage(refusal.to_string()))?
        .approvals_required;
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
    follow(&api, &name, approvals_required, limit).await
}

/// Prints each change of the request (decisions, approvals still missing, the operator's
/// messages) until it is granted, denied or failed. A watch would save the polls, but a
/// person waits here; two reads a second cost the API server nothing.
async fn follow(
    api: &Api<AccessRequest>,
    name: &str,
    approvals_required: u32,
    limit: Duration,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + limit;
    let zone = TimeZone::system();
    let mut progress = render::Progress::default();
    loop {
        let request = api
            .get(name)
            .await
            .map_err(|error| Error::api("read the request", error))?;
        for line in progress.lines(&request, approvals_required, Timestamp::now(), &zone) {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
        match request.status.as_ref().and_then(|status| status.phase) {
            Some(Phase::Active) => return Ok(()),
            Some(phase) if phase.is_final() => {
                let message = request
                    .status
                    .and_then(|status| status.message)
                    .unwrap_or_default();
                return Err(Error::Refused(format!(
                    "{name} is {}: {message}",
                    phase.as_str()
                )));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{name} is still pending after {}; it stays requested (kubectl jit show {name})",
                render::span(limit)
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

/// The request's policy, when I may read it; context, never a reason to stop.
async fn policy_of(client: &Client, request: &AccessRequest) -> Option<AccessPolicy> {
    Api::<AccessPolicy>::all(client.clone())
        .get_opt(&request.spec.policy)
        .await
        .ok()
        .flatten()
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
    let policy = policy_of(client, &request).await;
    // The subject's earlier requests in this namespace; context, so a failed list is no stop.
    let history = api
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default();
    print!(
        "{}",
        render::approver_context(
            &request,
            policy.as_ref(),
            &history,
            Timestamp::now(),
            Paint::stdout()
        )
    );
    if !yes && std::io::stdin().is_terminal() {
        print!("{verb} {name}? [y/N] ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(Error::Refused(format!(
                "did not {verb} {name}: not confirmed"
            )));
        }
    }
    annotate(client, namespace, name, key, comment).await?;
    println!("accessrequest/{name} {verb}d");
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
        Output::Table | Output::Wide => {
            let policy = policy_of(client, &request).await;
            print!(
                "{}",
                render::describe(&request, policy.as_ref(), Timestamp::now(), Paint::stdout())
            );
        }
    }
    Ok(())
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
    let policies: BTreeMap<String, AccessPolicy> = if pending_for_me {
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
            return render::requester_of(request) == user;
        }
        if active {
            return phase(request) == Some(Phase::Active);
        }
        if pending_for_me {
            // What admission would let me decide: the library's own check.
            let earlier = request
                .status
                .as_ref()
                .map(|status| status.approvals.as_slice())
                .unwrap_or_default();
            return matches!(phase(request), Some(Phase::Pending) | None)
                && policies.get(&request.spec.policy).is_some_and(|policy| {
                    policy::check_new_decision(
                        policy,
                        &request.spec,
                        phase(request),
                        earlier,
                        &user,
                        &groups,
                    )
                    .is_ok()
                });
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
        Output::Table | Output::Wide => print!(
            "{}",
            render::requests_table(&requests, columns(cli), Timestamp::now(), Paint::stdout())
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
