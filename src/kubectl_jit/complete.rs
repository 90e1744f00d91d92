//! Shell completion for `kubectl jit ...`: kubectl (1.26+) completes a plugin's arguments by
//! running `kubectl_complete-jit ARGS... PARTIAL` and reading Cobra's `__complete` answer
//! (one `candidate<TAB>description` per line, then `:DIRECTIVE`). That script runs
//! `kubectl-jit __complete`, answered here: commands and flags from the command line's own
//! definition, and policy, role and request names from the cluster, as the user sees them.

use clap::CommandFactory;
use kube::{Api, Client, ResourceExt, api::ListParams};

use super::{Cli, connect};
use crate::crd::v1alpha1::{AccessPolicy, AccessRequest, Phase};

/// The hidden command kubectl's completion script runs, as Cobra names it.
pub(crate) const COMMAND: &str = "__complete";

/// Cobra's `ShellCompDirectiveNoFileComp`: never offer file names.
const NO_FILES: u8 = 4;

/// Whether `flag` (`-n`, `--for`) takes a value, by the command line's own definition, so
/// that the word after it is its value, not a positional.
fn takes_value(flag: &str) -> bool {
    let root = Cli::command();
    let mut arguments = root.get_arguments().chain(
        root.get_subcommands()
            .flat_map(|command| command.get_arguments()),
    );
    arguments.any(|argument| {
        let named = match flag.strip_prefix("--") {
            Some(long) => argument.get_long() == Some(long),
            None => flag
                .strip_prefix('-')
                .and_then(|short| short.chars().next())
                .is_some_and(|short| argument.get_short() == Some(short)),
        };
        named && argument.get_action().takes_values()
    })
}

/// What the words typed so far say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Typed {
    /// The command, once typed.
    pub(crate) command: Option<String>,
    /// Its positional arguments typed so far.
    pub(crate) positionals: Vec<String>,
    /// The flag the partial word is a value of.
    pub(crate) value_of: Option<String>,
    /// The word being completed.
    pub(crate) partial: String,
    /// `-n`, `--kubeconfig` and `--context` as typed.
    pub(crate) namespace: Option<String>,
    pub(crate) kubeconfig: Option<String>,
    pub(crate) context: Option<String>,
}

/// Reads the words before the one being completed (the last).
pub(crate) fn typed(words: &[String]) -> Typed {
    let mut typed = Typed::default();
    let Some((partial, before)) = words.split_last() else {
        return typed;
    };
    typed.partial = partial.clone();
    let mut pending_flag: Option<&str> = None;
    for word in before {
        if let Some(flag) = pending_flag.take() {
            match flag {
                "-n" | "--namespace" => typed.namespace = Some(word.clone()),
                "--kubeconfig" => typed.kubeconfig = Some(word.clone()),
                "--context" => typed.context = Some(word.clone()),
                _ => {}
            }
            continue;
        }
        if word.starts_with('-') {
            if let Some((flag, value)) = word.split_once('=') {
                match flag {
                    "-n" | "--namespace" => typed.namespace = Some(value.to_owned()),
                    "--kubeconfig" => typed.kubeconfig = Some(value.to_owned()),
                    "--context" => typed.context = Some(value.to_owned()),
                    _ => {}
                }
            } else if takes_value(word) {
                pending_flag = Some(word);
            }
            continue;
        }
        if typed.command.is_none() {
            typed.command = Some(word.clone());
        } else {
            typed.positionals.push(word.clone());
        }
    }
    typed.value_of = pending_flag.map(str::to_owned);
    typed
}

/// What the command line's definition offers: commands, flags, flag values. `None` when the
/// answer needs the cluster.
pub(crate) fn offline(typed: &Typed) -> Option<Vec<(String, String)>> {
    let root = Cli::command();
    if let Some(flag) = &typed.value_of {
        return Some(match flag.as_str() {
            "-o" | "--output" => ["table", "wide", "json", "yaml", "name"]
                .iter()
                .map(|value| ((*value).to_owned(), String::new()))
                .collect(),
            _ => Vec::new(),
        });
    }
    let command = typed
        .command
        .as_deref()
        .and_then(|name| root.find_subcommand(name));
    if typed.partial.starts_with('-') {
        let mut flags = Vec::new();
        let arguments = root.get_arguments().chain(
            command
                .into_iter()
                .flat_map(|command| command.get_arguments()),
        );
        for argument in arguments {
            if let Some(long) = argument.get_long() {
                let help = argument
                    .get_help()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                flags.push((format!("--{long}"), help));
            }
        }
        flags.push(("--help".into(), "Print help".into()));
        return Some(flags);
    }
    match (typed.command.as_deref(), command) {
        (None, _) => Some(
            root.get_subcommands()
                .filter(|command| !command.is_hide_set())
                .map(|command| {
                    (
                        command.get_name().to_owned(),
                        command
                            .get_about()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    )
                })
                .collect(),
        ),
        (Some("completion"), _) if typed.positionals.is_empty() => Some(
            ["bash", "zsh", "fish", "powershell", "elvish"]
                .iter()
                .map(|shell| ((*shell).to_owned(), String::new()))
                .collect(),
        ),
        (Some("request"), _) if typed.positionals.len() < 2 => None,
        (Some("approve" | "deny" | "revoke" | "show"), _) if typed.positionals.is_empty() => None,
        _ => Some(Vec::new()),
    }
}

/// The names the cluster offers for the word being completed; nothing when it cannot say.
async fn online(typed: &Typed) -> Vec<(String, String)> {
    let Ok((client, namespace)) = connect(
        typed.kubeconfig.as_deref().map(std::path::Path::new),
        typed.context.as_deref(),
        typed.namespace.as_deref(),
    )
    .await
    else {
        return Vec::new();
    };
    let lookup = async {
        match (typed.command.as_deref(), typed.positionals.as_slice()) {
            (Some("request"), []) => policies(&client).await,
            (Some("request"), [policy]) => roles(&client, policy).await,
            (Some(command), []) => requests(&client, &namespace, command).await,
            _ => Vec::new(),
        }
    };
    // A shell waits on this: a slow cluster gives no names rather than a frozen prompt.
    tokio::time::timeout(std::time::Duration::from_secs(3), lookup)
        .await
        .unwrap_or_default()
}

async fn policies(client: &Client) -> Vec<(String, String)> {
    let Ok(me) = super::whoami(client).await else {
        return Vec::new();
    };
    let (user, groups) = (
        me.username.unwrap_or_default(),
        me.groups.unwrap_or_default(),
    );
    Api::<AccessPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|policy| policy.spec.requesters.admits(&user, &groups))
        .map(|policy| {
            let about = policy.spec.description.clone().unwrap_or_default();
            (policy.name_any(), about)
        })
        .collect()
}

async fn roles(client: &Client, policy: &str) -> Vec<(String, String)> {
    let Ok(Some(policy)) = Api::<AccessPolicy>::all(client.clone())
        .get_opt(policy)
        .await
    else {
        return Vec::new();
    };
    policy
        .spec
        .roles
        .iter()
        .map(|role| (role.name.clone(), super::render::grants(role)))
        .collect()
}

/// Requests a command can act on: pending ones to decide, active ones to revoke, any to show.
async fn requests(client: &Client, namespace: &str, command: &str) -> Vec<(String, String)> {
    Api::<AccessRequest>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|request| {
            let phase = super::render::phase_of(&request);
            let fits = match command {
                "approve" | "deny" => phase == Phase::Pending,
                "revoke" => matches!(phase, Phase::Pending | Phase::Active),
                _ => true,
            };
            fits.then(|| {
                let about = format!(
                    "{} asks for {} of {} ({})",
                    super::render::requester_of(&request),
                    request.spec.role,
                    request.spec.policy,
                    phase.as_str()
                );
                (request.name_any(), about)
            })
        })
        .collect()
}

/// Answers `kubectl-jit __complete WORDS...` on stdout, in Cobra's format.
pub(crate) async fn answer(words: &[String]) {
    let typed = typed(words);
    let candidates = match offline(&typed) {
        Some(candidates) => candidates,
        None => online(&typed).await,
    };
    for (candidate, about) in candidates {
        if !candidate.starts_with(&typed.partial) {
            continue;
        }
        // Descriptions on one line: a tab or newline would break the format.
        let about = about.replace(['\t', '\n'], " ");
        if about.is_empty() {
            println!("{candidate}");
        } else {
            println!("{candidate}\t{about}");
        }
    }
    println!(":{NO_FILES}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut words: Vec<String> = text.split(' ').map(str::to_owned).collect();
        if text.ends_with(' ') {
            words.pop();
            words.push(String::new());
        }
        words
    }

    fn names(typed: &Typed) -> Vec<String> {
        offline(typed)
            .unwrap_or_else(|| panic!("{typed:?} needs the cluster"))
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn the_first_word_is_a_command() {
        let commands = names(&typed(&words("")));
        for expected in ["request", "approve", "list", "policies", "completion"] {
            assert!(commands.contains(&expected.to_owned()), "{commands:?}");
        }
    }

    #[test]
    fn flags_are_the_commands_and_the_global_ones() {
        let flags = names(&typed(&words("request --")));
        for expected in ["--for", "--reason", "--wait", "--namespace", "--output"] {
            assert!(flags.contains(&expected.to_owned()), "{flags:?}");
        }
        assert!(!flags.contains(&"--comment".to_owned()));
    }

    #[test]
    fn flag_values_are_not_positionals() {
        let typed = typed(&words("-n team-a approve --comment ok "));
        assert_eq!(typed.command.as_deref(), Some("approve"));
        assert!(typed.positionals.is_empty());
        assert_eq!(typed.namespace.as_deref(), Some("team-a"));
        assert_eq!(offline(&typed), None, "request names come from the cluster");
        assert_eq!(
            names(&super::typed(&words("list -o "))),
            ["table", "wide", "json", "yaml", "name"]
        );
        let typed = super::typed(&words("request --namespace=ci prod "));
        assert_eq!(typed.namespace.as_deref(), Some("ci"));
        assert_eq!(typed.positionals, ["prod"]);
        assert_eq!(offline(&typed), None, "roles come from the cluster");
    }

    #[test]
    fn nothing_is_offered_where_nothing_fits() {
        assert!(names(&typed(&words("show name-1 "))).is_empty());
        assert!(names(&typed(&words("request p r "))).is_empty());
        assert!(names(&typed(&words("request --reason "))).is_empty());
    }
}
