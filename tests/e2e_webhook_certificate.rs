//! The webhook's certificate in a cluster, with the operator as a separate process against
//! the real control plane. `--webhook-secret`: the operator makes a CA and a certificate for
//! its Service's DNS names in a Secret, sets the CA as the caBundle of its webhook
//! configurations, serves it, and renews it (same CA) when it nears its end.
//! `--webhook-cert-dir`: it serves the files cert-manager keeps and picks up renewed ones. A
//! binary of its own: it runs its own operators, without registered webhooks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    core::v1::Secret,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use support::{ACT_LIMIT, TestEnv, operator::Operator, random_suffix};

const SERVICE_NAME: &str = "jit-operator.jit-system.svc";

/// The leaf certificate the webhook at `address` presents to a client that trusts only
/// `ca_pem` and asks for `name`; the handshake must succeed.
async fn presented(address: &str, ca_pem: &[u8], name: &str) -> Vec<u8> {
    presented_any(address, ca_pem, name)
        .await
        .unwrap_or_else(|| panic!("no handshake for {name} with that CA"))
}

fn leaf_der(pem: &[u8]) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn webhook_address(operator: &Operator) -> String {
    let ready: Value =
        serde_json::from_str(&operator.wait_for_log("\"operator ready\"", ACT_LIMIT)).unwrap();
    ready["webhook_addr"].as_str().unwrap().to_owned()
}

async fn apply<K>(api: &Api<K>, object: Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap();
}

/// Webhook configurations named `name` that match nothing, and the right for the operator
/// (user jit-operator) to keep its certificate Secret `secret` and set their caBundle.
async fn prepare(client: &Client, name: &str, secret: &str) {
    let webhook = |kind: &str| {
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
            "metadata": {"name": name},
            "webhooks": [{
                "name": "nothing.jit.dev",
                "clientConfig": {"url": "https://127.0.0.1:1/nothing"},
                "rules": [{"apiGroups": ["jit.dev"], "apiVersions": ["v1alpha1"],
                           "operations": ["CREATE"], "resources": ["nothing"]}],
                "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "failurePolicy": "Ignore",
            }],
        })
    };
    apply(
        &Api::<MutatingWebhookConfiguration>::all(client.clone()),
        webhook("MutatingWebhookConfiguration"),
    )
    .await;
    apply(
        &Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        webhook("ValidatingWebhookConfiguration"),
    )
    .await;
    // The chart's grants for this mode, to the test's operator user.
    apply(
        &Api::<ClusterRole>::all(client.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name},
               "rules": [{"apiGroups": ["admissionregistration.k8s.io"],
                          "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
                          "resourceNames": [name], "verbs": ["get", "patch"]}]}),
    )
    .await;
    apply(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jit-operator"}],
               "roleRef": {"kind": "ClusterRole", "apiGroup": "rbac.authorization.k8s.io", "name": name}}),
    )
    .await;
    apply(
        &Api::<Role>::namespaced(client.clone(), "jit-system"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name, "namespace": "jit-system"},
               "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
                         {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret],
                          "verbs": ["get", "update"]}]}),
    )
    .await;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), "jit-system"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": "jit-system"},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jit-operator"}],
               "roleRef": {"kind": "Role", "apiGroup": "rbac.authorization.k8s.io", "name": name}}),
    )
    .await;
}

fn data(secret: &Secret, key: &str) -> Vec<u8> {
    secret.data.as_ref().unwrap()[key].0.clone()
}

#[tokio::test]
async fn the_operator_keeps_its_own_certificate_in_a_secret_and_the_ca_bundle_in_place() {
    let env = TestEnv::new().await;
    let name = format!("jit-cert-{}", random_suffix(6).to_lowercase());
    let secret_name = format!("{name}-tls");
    prepare(&env.admin, &name, &secret_name).await;
    let operator = Operator::start_unregistered(
        "jit-operator",
        &[
            "--webhook-secret",
            &secret_name,
            "--webhook-service",
            "jit-operator",
            "--webhook-configuration",
            &name,
        ],
        &[],
    );
    let address = webhook_address(&operator);
    let secrets = Api::<Secret>::namespaced(env.admin.clone(), "jit-system");
    let secret = secrets.get(&secret_name).await.unwrap();
    let ca = data(&secret, "ca.crt");
    for key in ["ca.key", "tls.crt", "tls.key"] {
        assert!(!data(&secret, key).is_empty(), "{key}");
    }
    let mutating = Api::<MutatingWebhookConfiguration>::all(env.admin.clone())
        .get(&name)
        .await
        .unwrap();
    let validating = Api::<ValidatingWebhookConfiguration>::all(env.admin.clone())
        .get(&name)
        .await
        .unwrap();
    assert_eq!(
        mutating.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .unwrap()
            .0,
        ca
    );
    assert_eq!(
        validating.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .unwrap()
            .0,
        ca
    );
    // What it serves chains to that CA for the Service's name, and is the Secret's.
    let first = presented(&address, &ca, SERVICE_NAME).await;
    assert_eq!(first, leaf_der(&data(&secret, "tls.crt")));

    // Near its end (as its annotation says): renewed under the same CA, and served.
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)).to_string();
    secrets
        .patch(
            &secret_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"jit.dev/not-after": soon}}})),
        )
        .await
        .unwrap();
    let (secrets_ref, name_ref, first_ref) = (&secrets, &secret_name, &first);
    let renewed = support::eventually("the certificate is renewed", || async move {
        let current = secrets_ref.get(name_ref).await.unwrap();
        (leaf_der(&data(&current, "tls.crt")) != *first_ref).then_some(current)
    })
    .await;
    assert_eq!(data(&renewed, "ca.crt"), ca, "the CA stays");
    let wanted = leaf_der(&data(&renewed, "tls.crt"));
    let (address_ref, ca_ref, wanted_ref) = (&address, &ca, &wanted);
    support::eventually("the renewed certificate is served", || async move {
        (presented(address_ref, ca_ref, SERVICE_NAME).await == *wanted_ref).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_operator_serves_cert_managers_files_and_their_renewals() {
    let directory = std::env::temp_dir().join(format!("jit-cert-dir-{}", random_suffix(8)));
    std::fs::create_dir_all(&directory).unwrap();
    let names = vec![SERVICE_NAME.to_owned()];
    // A CA and a certificate as cert-manager would write them.
    let issue = || {
        let (data, _) =
            jit_operator::certificate::make_secret_data(None, &names, jiff::Timestamp::now())
                .unwrap();
        let get = |key: &str| data[key].0.clone();
        (get("ca.crt"), get("tls.crt"), get("tls.key"))
    };
    let write = |(_, certificate, key): &(Vec<u8>, Vec<u8>, Vec<u8>)| {
        std::fs::write(directory.join("tls.crt"), certificate).unwrap();
        std::fs::write(directory.join("tls.key"), key).unwrap();
    };
    let first = issue();
    write(&first);
    let operator = Operator::start_unregistered(
        "jit-operator",
        &["--webhook-cert-dir", directory.to_str().unwrap()],
        &[],
    );
    let address = webhook_address(&operator);
    assert_eq!(
        presented(&address, &first.0, SERVICE_NAME).await,
        leaf_der(&first.1)
    );
    let second = issue();
    write(&second);
    let (address_ref, second_ref) = (&address, &second);
    support::eventually("the renewed files are served", || async move {
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            presented_any(address_ref, &second_ref.0, SERVICE_NAME),
        )
        .await;
        matches!(served, Ok(Some(leaf)) if leaf == leaf_der(&second_ref.1)).then_some(())
    })
    .await;
    drop(operator);
    let _ = std::fs::remove_dir_all(&directory);
}

/// Like `presented`, but `None` when the handshake fails (the old certificate is still served).
async fn presented_any(address: &str, ca_pem: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let tls = connector
        .connect(ServerName::try_from(name.to_owned()).ok()?, stream)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].to_vec())
}
