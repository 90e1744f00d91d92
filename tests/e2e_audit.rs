//! The audit trail end to end: the operator (a separate process) delivers every transition of
//! a request as a CloudEvent to a sink that parses it with the official CloudEvents SDK
//! (tests/audit/receiver.py): once per transition, in order, with ids stable per transition;
//! a deleted request's last events arrive; a sink that fails and throttles gets everything
//! afterwards; a policy naming a channel that does not exist is refused; a channel without
//! its Secret says so while requests still grant and revoke; Slack and Teams payloads keep
//! their platforms' shapes and limits; email goes through a real SMTP server (Mailpit) to the
//! approvers, the requester and the subject.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use jit_operator::crd::v1alpha1::{AccessRequest, NotificationChannel, Phase, annotations};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::{
    ACT_LIMIT, Ending, TestEnv, annotate, create_policy, end_request, eventually,
    eventually_within,
    mailpit::{self, Mailpit},
    operator::shared_operator,
    phase,
    receiver::{Receiver, channel, routed_policy},
    request_view, wait_for_request,
};

/// The events about one request, in the order they arrived.
fn events_of(receiver: &Receiver, uid: &str) -> Vec<Value> {
    receiver
        .events()
        .into_iter()
        .filter(|event| event["data"]["request"]["uid"] == uid)
        .collect()
}

fn short_type(event: &Value) -> String {
    event["type"]
        .as_str()
        .unwrap()
        .trim_start_matches("dev.jit.accessrequest.")
        .trim_end_matches(".v1")
        .to_owned()
}

/// Waits until the request's events are exactly `types`, and returns them.
async fn until_events(receiver: &Receiver, uid: &str, types: &[&str]) -> Vec<Value> {
    let wanted: Vec<String> = types.iter().map(|kind| (*kind).to_owned()).collect();
    let wanted = &wanted;
    eventually(&format!("events {types:?} for {uid}"), || async move {
        let events = events_of(receiver, uid);
        let got: Vec<String> = events.iter().map(short_type).collect();
        (got == *wanted).then_some(events)
    })
    .await
}

#[tokio::test]
async fn every_step_of_a_request_reaches_a_cloudevents_sink_once_in_order() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let receiver = Receiver::start();
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 1).await;
    let created = request_view(&env, "audited", &policy, "30m").await;
    let uid = created.uid().unwrap();
    annotate(
        &env.bob,
        &env.namespace,
        "audited",
        annotations::APPROVE,
        "INC-1 looks right",
    )
    .await
    .unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "audited", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    end_request(&env, "audited", Ending::Revoke).await;
    let events = until_events(
        &receiver,
        &uid,
        &["requested", "approval", "approved", "granted", "revoked"],
    )
    .await;

    let ids: Vec<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    for (index, id) in ids.iter().enumerate() {
        assert_eq!(*id, format!("{uid}.{index}"), "ids follow the timeline");
    }
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(
            event["source"],
            format!(
                "/apis/jit.dev/v1alpha1/namespaces/{}/accessrequests/audited",
                env.namespace
            )
        );
        assert_eq!(event["subject"], "alice");
        assert_eq!(event["data"]["policy"], policy.as_str());
        assert_eq!(event["data"]["role"], "view");
        assert_eq!(event["authorization"], "Bearer s3cret-token");
    }
    let requested = &events[0]["data"];
    assert!(
        requested["commands"]["approve"]
            .as_str()
            .unwrap()
            .starts_with("kubectl jit approve "),
        "{requested}"
    );
    assert!(
        requested["commands"]["approveByAnnotation"]
            .as_str()
            .unwrap()
            .contains("jit.dev/approve="),
        "{requested}"
    );
    assert_eq!(
        requested["roleDefinition"]["kubernetes"]["clusterRole"],
        "jit-dev-view"
    );
    let approval = &events[1]["data"];
    assert_eq!(approval["actor"], "bob");
    assert_eq!(approval["approvals"][0]["comment"], "INC-1 looks right");
    let granted = &events[3]["data"];
    assert_eq!(granted["grant"]["target"], "kubernetes");
    assert!(granted["expiresAt"].is_string());
    assert!(receiver.rejects().is_empty(), "{:?}", receiver.rejects());

    // Deleted after it ended: the last event still arrives, with the next id.
    requests
        .delete("audited", &Default::default())
        .await
        .unwrap();
    let events = until_events(
        &receiver,
        &uid,
        &[
            "requested",
            "approval",
            "approved",
            "granted",
            "revoked",
            "deleted",
        ],
    )
    .await;
    assert_eq!(events[5]["id"], format!("{uid}.5"));

    // The channel shows it is healthy and owes nothing.
    let channels = Api::<NotificationChannel>::all(env.admin.clone());
    let channel_ref = &channel;
    let channels_ref = &channels;
    eventually("the channel reports its deliveries", || async move {
        let status = channels_ref.get(channel_ref).await.unwrap().status?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && status.backlog == 0 && status.last_delivery_time.is_some()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_sink_that_fails_and_throttles_gets_every_event_afterwards_in_order() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let receiver = Receiver::start();
    receiver
        .control(json!({"fail": 3, "status": 429, "retry_after": 1}))
        .await;
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 0).await;
    let created = request_view(&env, "throttled", &policy, "30m").await;
    let uid = created.uid().unwrap();
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "throttled", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    receiver.control(json!({"fail": 2, "status": 503})).await;
    end_request(&env, "throttled", Ending::Revoke).await;
    let events = until_events(
        &receiver,
        &uid,
        &["requested", "approved", "granted", "revoked"],
    )
    .await;
    let ids: Vec<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "each transition once");
}

#[tokio::test]
async fn a_policy_naming_a_channel_that_does_not_exist_is_refused() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let missing = format!("nowhere-{}", support::random_suffix(6).to_lowercase());
    let policy: jit_operator::crd::v1alpha1::AccessPolicy = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": format!("routed-{}", support::random_suffix(6).to_lowercase())},
        "spec": {
            "requesters": {"groups": ["devs"]},
            "maxDuration": "1h",
            "roles": [{"name": "view", "kubernetes": {"clusterRole": "jit-dev-view"}}],
            "notifications": {"routes": [{"channel": missing}]},
        },
    }))
    .unwrap();
    let refused = Api::<jit_operator::crd::v1alpha1::AccessPolicy>::all(env.admin.clone())
        .create(&Default::default(), &policy)
        .await
        .expect_err("a route to a channel that does not exist is refused");
    let message = refused.to_string();
    assert!(
        message.contains(&format!(
            "NotificationChannel {missing}, which does not exist"
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_channel_without_its_secret_says_so_and_requests_still_grant_and_revoke() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let channel = channel(&env, "webhook", None).await;
    let policy = routed_policy(&env, &channel, 0).await;
    request_view(&env, "secretless", &policy, "30m").await;
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    wait_for_request(&requests, "secretless", "active", |r| {
        phase(r) == Some(Phase::Active)
    })
    .await;
    end_request(&env, "secretless", Ending::Revoke).await;
    let channels = Api::<NotificationChannel>::all(env.admin.clone());
    let (channels_ref, channel_ref) = (&channels, &channel);
    let condition = eventually("the channel says its Secret is missing", || async move {
        let status = channels_ref.get(channel_ref).await.unwrap().status?;
        let ready = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "SecretMissing")?;
        (status.backlog > 0).then_some(ready)
    })
    .await;
    assert_eq!(condition.status, "False");
    assert!(
        condition
            .message
            .contains(&format!("Secret {channel} does not exist")),
        "{}",
        condition.message
    );
}

/// The bodies that arrived at `path`, in order.
fn bodies_at(receiver: &Receiver, path: &str) -> Vec<Value> {
    receiver
        .bodies()
        .into_iter()
        .filter(|body| body["path"] == path)
        .collect()
}

fn chars(value: &Value) -> usize {
    value.as_str().unwrap().chars().count()
}

/// Checks a Slack incoming-webhook payload against Slack's documented Block Kit limits.
fn assert_slack_shape(payload: &Value) {
    assert!(chars(&payload["text"]) <= 3000, "fallback text: {payload}");
    let blocks = payload["blocks"].as_array().unwrap();
    assert!(!blocks.is_empty() && blocks.len() <= 50, "{payload}");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(chars(&blocks[0]["text"]["text"]) <= 150);
    for block in &blocks[1..] {
        assert_eq!(block["type"], "section", "{block}");
        if let Some(fields) = block["fields"].as_array() {
            assert!(fields.len() <= 10, "{block}");
            for field in fields {
                assert_eq!(field["type"], "mrkdwn");
                assert!(chars(&field["text"]) <= 2000, "{field}");
            }
        } else {
            assert!(chars(&block["text"]["text"]) <= 3000, "{block}");
        }
    }
}

/// Checks a Teams Workflows payload: a message with one Adaptive Card, within about 28 KB.
fn assert_teams_shape(payload: &Value) {
    assert!(
        payload.to_string().len() <= 28_000,
        "{} bytes",
        payload.to_string().len()
    );
    assert_eq!(payload["type"], "message");
    let attachment = &payload["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert!(attachment["content"]["version"].is_string());
    assert!(!attachment["content"]["body"].as_array().unwrap().is_empty());
}

/// The Slack fields of a payload, as "label\nvalue" texts.
fn slack_fields(payload: &Value) -> Vec<String> {
    payload["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|block| block["fields"].as_array())
        .flatten()
        .map(|field| field["text"].as_str().unwrap().to_owned())
        .collect()
}

fn teams_fact(payload: &Value, title: &str) -> String {
    payload["attachments"][0]["content"]["body"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|block| block["facts"].as_array())
        .flatten()
        .find(|fact| fact["title"] == title)
        .and_then(|fact| fact["value"].as_str())
        .unwrap_or_else(|| panic!("no fact {title} in {payload}"))
        .to_owned()
}

#[tokio::test]
async fn slack_and_teams_get_the_approvers_context_within_their_limits() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let receiver = Receiver::start();
    let slack = channel(&env, "slack", Some(&format!("{}plain/slack", receiver.url))).await;
    let teams = channel(
        &env,
        "msteams",
        Some(&format!("{}plain/teams", receiver.url)),
    )
    .await;
    let policy = create_policy(
        &env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"groups": ["approvers"]},
            "approvalsRequired": 1,
            "maxDuration": "1h",
            "roles": [{"name": "view",
                       "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}],
            "notifications": {"routes": [{"channel": slack}, {"channel": teams}]},
        }),
    )
    .await;
    // The longest reason the API accepts, with markup Slack would otherwise interpret.
    let reason = format!("INC-77 <!channel> & {}", "x".repeat(1100));
    let reason = &reason[..1024];
    support::alice_requests(
        &env,
        "chatty",
        json!({"policy": policy, "role": "view", "duration": "20m", "reason": reason}),
    )
    .await;

    let (slack_asks, teams_asks) = eventually("both chats hear the request", || async {
        let slack = bodies_at(&receiver, "/plain/slack").into_iter().next()?;
        let teams = bodies_at(&receiver, "/plain/teams").into_iter().next()?;
        Some((slack, teams))
    })
    .await;
    assert_eq!(slack_asks["content_type"], "application/json");
    let slack_asks = &slack_asks["body"];
    assert_slack_shape(slack_asks);
    assert_eq!(
        slack_asks["text"],
        format!("alice asks for view of {policy}")
    );
    let fields = slack_fields(slack_asks);
    let field = |label: &str| {
        fields
            .iter()
            .find(|text| text.starts_with(&format!("*{label}*\n")))
            .unwrap_or_else(|| panic!("no field {label} in {fields:?}"))
            .clone()
    };
    let shown_reason = field("Reason");
    assert!(
        shown_reason.ends_with('…'),
        "a long reason is cut: {shown_reason}"
    );
    assert!(
        shown_reason.contains("&lt;!channel&gt; &amp;"),
        "markup is escaped: {shown_reason}"
    );
    assert_eq!(field("Ticket"), "*Ticket*\nINC-77");
    assert_eq!(field("Approvals"), "*Approvals*\n0 of 1");
    assert_eq!(field("Duration"), "*Duration*\n20m");
    assert!(
        field("Grants").contains("jit-dev-view"),
        "{}",
        field("Grants")
    );
    assert_eq!(
        field("History"),
        "*History*\nalice had this role 0 times in the last 30 days"
    );
    let commands = slack_asks["blocks"].as_array().unwrap().last().unwrap()["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    // The exact commands, escaped for Slack's mrkdwn.
    assert!(
        commands.contains(&format!(
            "kubectl jit approve chatty -n {} --comment '&lt;comment&gt;'",
            env.namespace
        )),
        "{commands}"
    );
    assert!(
        commands.contains(&format!("kubectl jit deny chatty -n {}", env.namespace)),
        "{commands}"
    );
    assert!(
        commands.contains(&format!(
            "kubectl annotate accessrequest chatty -n {} jit.dev/approve=",
            env.namespace
        )),
        "{commands}"
    );

    let teams_asks = &teams_asks["body"];
    assert_teams_shape(teams_asks);
    assert!(teams_fact(teams_asks, "Reason").ends_with('…'));
    assert_eq!(teams_fact(teams_asks, "Ticket"), "INC-77");
    assert_eq!(teams_fact(teams_asks, "Approvals"), "0 of 1");

    // Bob approves: both chats hear the approval, the decision and the grant, in order.
    annotate(
        &env.bob,
        &env.namespace,
        "chatty",
        annotations::APPROVE,
        "ok for INC-77",
    )
    .await
    .unwrap();
    let titles = |path: &'static str| {
        let receiver = &receiver;
        move || async move {
            let titles: Vec<String> = bodies_at(receiver, path)
                .iter()
                .map(|body| match path {
                    "/plain/slack" => body["body"]["text"].as_str().unwrap().to_owned(),
                    _ => body["body"]["attachments"][0]["content"]["body"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                })
                .collect();
            (titles.len() >= 4).then_some(titles)
        }
    };
    let expected = vec![
        format!("alice asks for view of {policy}"),
        format!("bob approved {}/chatty", env.namespace),
        format!("Approved: view of {policy} for alice"),
        format!("Granted: view of {policy} to alice"),
    ];
    assert_eq!(
        eventually("slack hears the grant", titles("/plain/slack")).await,
        expected
    );
    assert_eq!(
        eventually("teams hears the grant", titles("/plain/teams")).await,
        expected
    );
    for body in receiver.bodies() {
        match body["path"].as_str().unwrap() {
            "/plain/slack" => assert_slack_shape(&body["body"]),
            _ => assert_teams_shape(&body["body"]),
        }
        assert!(
            !body.to_string().contains("s3cret-token"),
            "no secret in a message"
        );
    }
}

/// The messages Mailpit holds for `address`, oldest first.
fn mail_to(messages: &[Value], address: &str) -> Vec<Value> {
    messages
        .iter()
        .filter(|message| {
            message["To"]
                .as_array()
                .unwrap()
                .iter()
                .any(|to| to["Address"] == address)
        })
        .cloned()
        .collect()
}

fn subjects(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["Subject"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn email_reaches_approvers_requester_and_subject_through_a_real_smtp_server() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let mailpit = Mailpit::start().await;
    let name = format!("mail-{}", support::random_suffix(8).to_lowercase());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": support::LEDGER_NAMESPACE},
        "stringData": {
            "username": mailpit::USERNAME,
            "password": mailpit::PASSWORD,
            "ca.crt": mailpit.ca_pem,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(env.admin.clone(), support::LEDGER_NAMESPACE)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let channel: NotificationChannel = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "NotificationChannel",
        "metadata": {"name": name},
        "spec": {
            "type": "email",
            "secretRef": {"name": name},
            "email": {
                "host": "localhost",
                "port": mailpit.smtp_port,
                "from": "jit@example.com",
                "to": ["security@example.com"],
            },
        },
    }))
    .unwrap();
    Api::<NotificationChannel>::all(env.admin.clone())
        .create(&Default::default(), &channel)
        .await
        .unwrap();
    let policy = create_policy(
        &env,
        json!({
            "requesters": {"groups": ["devs"]},
            "approvers": {"users": ["bob"], "groups": ["approvers"]},
            "approvalsRequired": 1,
            "maxDuration": "1h",
            "roles": [{"name": "view",
                       "kubernetes": {"clusterRole": "jit-dev-view", "namespace": env.namespace}}],
            "identityMappings": [
                {"subject": "alice", "values": {"email": "alice@example.com"}},
                {"subject": "bob", "values": {"email": "bob@example.com"}},
            ],
            "notifications": {
                "routes": [{"channel": name}],
                "expiryWarning": "20s",
            },
        }),
    )
    .await;
    support::alice_requests(
        &env,
        "mailed",
        json!({"policy": policy, "role": "view", "duration": "30s", "reason": "INC-9 debugging"}),
    )
    .await;

    // The approver is asked, with the context and the commands.
    let mailpit = &mailpit;
    let asked = eventually("bob is asked by email", || async move {
        mail_to(&mailpit.messages().await, "bob@example.com")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        asked["Subject"],
        format!("[jit] alice asks for view of {policy}")
    );
    assert_eq!(asked["From"]["Address"], "jit@example.com");
    let body = asked["Text"].as_str().unwrap();
    for expected in [
        "Reason: INC-9 debugging",
        "Ticket: INC-9",
        "Duration: 30s",
        "Approvals: 0 of 1",
        "alice had this role 0 times in the last 30 days",
        &format!(
            "kubectl jit approve mailed -n {} --comment '<comment>'",
            env.namespace
        ),
        &format!("kubectl annotate accessrequest mailed -n {}", env.namespace),
    ] {
        assert!(
            body.contains(expected),
            "{expected:?} missing from:\n{body}"
        );
    }
    assert!(!body.contains(mailpit::PASSWORD));

    annotate(
        &env.bob,
        &env.namespace,
        "mailed",
        annotations::APPROVE,
        "ok",
    )
    .await
    .unwrap();
    // The requester hears the decision, the grant, the warning (she is the subject) and the end.
    let to_alice = eventually_within(
        ACT_LIMIT * 3,
        "alice hears the whole story",
        || async move {
            let mail = mail_to(&mailpit.messages().await, "alice@example.com");
            (mail.len() >= 5).then_some(mail)
        },
    )
    .await;
    assert_eq!(
        subjects(&to_alice),
        vec![
            format!("[jit] bob approved {}/mailed", env.namespace),
            format!("[jit] Approved: view of {policy} for alice"),
            format!("[jit] Granted: view of {policy} to alice"),
            format!("[jit] Expiring soon: view of {policy} for alice"),
            format!("[jit] Expired: view of {policy} for alice"),
        ]
    );
    // The channel's own recipients get every message; bob only what asks him.
    let all = mailpit.messages().await;
    assert_eq!(mail_to(&all, "security@example.com").len(), 6);
    assert_eq!(subjects(&mail_to(&all, "bob@example.com")).len(), 1);
}

#[tokio::test]
async fn a_sink_that_was_down_gets_the_whole_backlog_in_order_afterwards() {
    const REQUESTS: usize = 15;
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let receiver = Receiver::start();
    receiver
        .control(json!({"fail_ratio": 1.0, "status": 503}))
        .await;
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 0).await;
    let mut uids = Vec::new();
    for index in 0..REQUESTS {
        let created = request_view(&env, &format!("backlog-{index}"), &policy, "4s").await;
        uids.push(created.uid().unwrap());
    }
    let requests = Api::<AccessRequest>::namespaced(env.admin.clone(), &env.namespace);
    for index in 0..REQUESTS {
        wait_for_request(&requests, &format!("backlog-{index}"), "expired", |r| {
            phase(r) == Some(Phase::Expired)
        })
        .await;
    }
    // Everything happened while the sink was down: the channel owes it all.
    let channels = Api::<NotificationChannel>::all(env.admin.clone());
    let (channels_ref, channel_ref) = (&channels, &channel);
    let owed = eventually("the channel shows its backlog", || async move {
        let status = channels_ref.get(channel_ref).await.unwrap().status?;
        let failing = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "DeliveryRefused");
        (failing && status.backlog >= 4 * REQUESTS as i64).then_some(status.backlog)
    })
    .await;
    assert!(receiver.events().is_empty());

    receiver.control(json!({"fail_ratio": 0.0})).await;
    let recovered = jiff::Timestamp::now();
    // Waits for every transition, then checks that each arrived once and in order; says
    // what arrived and what the channel reports when the backlog does not drain.
    let types_of = |events: &[Value], uid: &str| -> Vec<String> {
        events
            .iter()
            .filter(|event| event["data"]["request"]["uid"] == uid)
            .map(short_type)
            .collect()
    };
    let deadline = std::time::Instant::now() + ACT_LIMIT * 4;
    let events = loop {
        let events = receiver.events();
        let distinct: std::collections::HashSet<&str> = events
            .iter()
            .map(|event| event["id"].as_str().unwrap())
            .collect();
        if distinct.len() == 4 * REQUESTS {
            break events;
        }
        if std::time::Instant::now() > deadline {
            let status = channels.get(&channel).await.unwrap().status;
            let arrived: Vec<Vec<String>> = uids.iter().map(|uid| types_of(&events, uid)).collect();
            panic!("the backlog did not drain: arrived {arrived:?}; channel status {status:#?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // At least once: a delivery whose acknowledgement or cursor write was lost is sent again,
    // with the same id. In order: repeats aside, each request's events arrive oldest first.
    let mut seen = std::collections::HashSet::new();
    let first_arrivals: Vec<Value> = events
        .iter()
        .filter(|event| seen.insert(event["id"].as_str().unwrap().to_owned()))
        .cloned()
        .collect();
    for uid in &uids {
        assert_eq!(
            types_of(&first_arrivals, uid),
            ["requested", "approved", "granted", "expired"],
            "{uid}: every transition, in order; all arrivals: {:?}",
            types_of(&events, uid)
        );
    }
    eventually("the channel is healthy and owes nothing", || async move {
        let status = channels_ref.get(channel_ref).await.unwrap().status?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && status.backlog == 0).then_some(())
    })
    .await;

    // For the record: the wait for the channel's backoff to end, then the drain rate.
    let received: Vec<jiff::Timestamp> = events
        .iter()
        .map(|event| event["received"].as_str().unwrap().parse().unwrap())
        .collect();
    let first = *received.iter().min().unwrap();
    let last = *received.iter().max().unwrap();
    let draining = last.duration_since(first).as_secs_f64();
    println!(
        "backlog: {owed} owed; first delivery {:.1}s after the sink came back; \
         {} events ({} repeated) drained in {draining:.2}s ({:.0}/s)",
        first.duration_since(recovered).as_secs_f64(),
        events.len(),
        events.len() - first_arrivals.len(),
        events.len() as f64 / draining.max(0.001),
    );
}

#[tokio::test]
async fn a_create_refused_at_admission_is_an_audit_event_naming_who_really_asked() {
    let env = TestEnv::new().await;
    let _ = shared_operator();
    let receiver = Receiver::start();
    let channel = channel(&env, "cloudevents", Some(&receiver.url)).await;
    let policy = routed_policy(&env, &channel, 1).await;
    // Mallory may create requests in the namespace but is no requester of the policy; the
    // object claims to come from alice.
    let request: AccessRequest = serde_json::from_value(json!({
        "apiVersion": "jit.dev/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": "sneaky"},
        "spec": {"policy": policy, "role": "view", "duration": "10m", "reason": "trust me",
                 "requester": {"username": "alice", "groups": ["devs"]}},
    }))
    .unwrap();
    let refused = Api::<AccessRequest>::namespaced(env.mallory.clone(), &env.namespace)
        .create(&Default::default(), &request)
        .await
        .expect_err("mallory is no requester");
    let receiver = &receiver;
    let event = eventually("the refusal reaches the channel", || async move {
        receiver
            .events()
            .into_iter()
            .find(|event| event["type"] == "dev.jit.accessrequest.refused.v1")
    })
    .await;
    let data = &event["data"];
    assert_eq!(data["requester"], "mallory", "{event}");
    assert_eq!(data["actor"], "mallory");
    assert_eq!(data["policy"], policy.as_str());
    assert_eq!(data["request"]["name"], "sneaky");
    assert_eq!(data["request"]["namespace"], env.namespace.as_str());
    assert!(
        refused
            .to_string()
            .contains(data["message"].as_str().unwrap()),
        "the event says why, as mallory was told: {} / {refused}",
        data["message"]
    );
    let id = event["id"].as_str().unwrap();
    assert!(id.starts_with("refused-") && id.ends_with(".0"), "{id}");
}
