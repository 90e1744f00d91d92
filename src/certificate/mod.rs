//! The webhook's serving certificate, swapped in place when it changes, from one of three
//! sources: files cert-manager keeps (`--webhook-cert-dir`); a Secret the operator makes and
//! rotates itself, writing its CA into the webhook configurations' caBundle
//! (`--webhook-secret`); or, for local control planes, one made at start-up and never stored
//! ([`ephemeral`]).

pub mod ephemeral;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        core::v1::Secret,
    },
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde_json::json;
use tracing::{debug, info, warn};

pub use self::ephemeral::ServingIdentity;

/// How long a serving certificate the operator makes is valid.
const LEAF_VALIDITY: SignedDuration = SignedDuration::from_hours(365 * 24);
/// How long its CA is valid; the CA is not rotated (its key stays in the Secret).
const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(10 * 365 * 24);
/// A serving certificate this close to its end is replaced.
const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);
/// The annotation recording when the serving certificate ends.
const NOT_AFTER_ANNOTATION: &str = "jit.dev/not-after";
/// The annotation recording the names it is for.
const DNS_NAMES_ANNOTATION: &str = "jit.dev/dns-names";
/// The CA's common name; a CA rebuilt from its key must say the same.
const CA_NAME: &str = "jit-operator webhook CA";

/// Why the serving certificate could not be made, read or installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen failed.
    #[error("failed to generate a certificate")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("the certificate or key is not usable")]
    Tls(#[from] rustls::Error),
    /// A file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// PEM text did not hold what it should.
    #[error("{what} holds no usable PEM: {reason}")]
    Pem {
        /// Where it came from.
        what: String,
        /// Why.
        reason: String,
    },
    /// The API server refused or failed.
    #[error("failed to {action}")]
    Api {
        /// What was being done.
        action: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A Secret the operator keeps.
    Secret(SecretSettings),
    /// Files another party keeps (cert-manager, mounted).
    Directory(PathBuf),
    /// Made now for this address, for local control planes.
    Ephemeral(std::net::IpAddr),
}

/// The certificate to serve from `source`, followed for changes every `resync` until
/// `stopped`; and the CA (PEM) that signed it, for registering the webhooks.
pub async fn serve<F, S>(
    client: &Client,
    source: Source,
    resync: Duration,
    stopped: S,
) -> Result<(Arc<Reloadable>, String), Error>
where
    S: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let serving = match &source {
        Source::Secret(settings) => {
            let identity = ensure_secret(client, settings, Timestamp::now()).await?;
            install_ca_bundle(client, settings, &identity.ca_pem).await?;
            identity
        }
        Source::Directory(directory) => read_directory(directory)?,
        Source::Ephemeral(ip) => ephemeral::generate(*ip)?,
    };
    let ca_pem = serving.ca_pem.clone();
    let presented = serving
        .chain
        .first()
        .map(|der| der.to_vec())
        .unwrap_or_default();
    let certificate = Reloadable::new(serving)?;
    match source {
        Source::Secret(settings) => {
            tokio::spawn(follow_secret(
                client.clone(),
                settings,
                certificate.clone(),
                presented,
                resync,
                stopped(),
            ));
        }
        Source::Directory(directory) => {
            tokio::spawn(follow_directory(
                directory,
                certificate.clone(),
                resync,
                stopped(),
            ));
        }
        Source::Ephemeral(_) => {}
    }
    Ok((certificate, ca_pem))
}

/// The certificate the webhook server presents, replaceable while it serves.
#[derive(Debug)]
pub struct Reloadable(RwLock<Arc<CertifiedKey>>);

impl Reloadable {
    /// Starts with `identity`.
    pub fn new(identity: ServingIdentity) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self(RwLock::new(certified(identity)?))))
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: ServingIdentity) -> Result<(), Error> {
        let key = certified(identity)?;
        if let Ok(mut current) = self.0.write() {
            *current = key;
        }
        Ok(())
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|current| current.clone())
    }
}

fn certified(identity: ServingIdentity) -> Result<Arc<CertifiedKey>, Error> {
    let provider = rustls::crypto::ring::default_provider();
    let key = provider.key_provider.load_private_key(identity.key)?;
    Ok(Arc::new(CertifiedKey::new(identity.chain, key)))
}

/// Reads a serving identity from PEM text: the certificate chain and its key.
fn identity_from_pem(
    certificate: &[u8],
    key: &[u8],
    ca: Option<&[u8]>,
    what: &str,
) -> Result<ServingIdentity, Error> {
    let pem = |reason: String| Error::Pem {
        what: what.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(certificate)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem(format!("certificate: {error}")))?;
    if chain.is_empty() {
        return Err(pem("no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| pem(format!("key: {error}")))?;
    Ok(ServingIdentity {
        ca_pem: ca
            .map(|ca| String::from_utf8_lossy(ca).into_owned())
            .unwrap_or_default(),
        chain,
        key,
    })
}

/// The identity in `directory` (`tls.crt`, `tls.key`, as cert-manager writes them).
pub fn read_directory(directory: &Path) -> Result<ServingIdentity, Error> {
    let read = |name: &str| {
        let path = directory.join(name);
        std::fs::read(&path).map_err(|source| Error::Read { path, source })
    };
    identity_from_pem(
        &read("tls.crt")?,
        &read("tls.key")?,
        None,
        &directory.display().to_string(),
    )
}

/// Keeps serving what is in `directory`, looking every `period` (cert-manager renews the
/// Secret; the kubelet updates the mounted files).
pub async fn follow_directory(
    directory: PathBuf,
    serving: Arc<Reloadable>,
    period: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut last = files_of(&directory);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(period) => {}
        }
        let now = files_of(&directory);
        if now == last {
            continue;
        }
        match read_directory(&directory).and_then(|identity| serving.replace(identity)) {
            Ok(()) => {
                info!(directory = %directory.display(), "serving the renewed webhook certificate");
                last = now;
            }
            Err(error) => warn!(%error, "the renewed webhook certificate is not usable yet"),
        }
    }
}

fn files_of(directory: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((
        std::fs::read(directory.join("tls.crt")).ok()?,
        std::fs::read(directory.join("tls.key")).ok()?,
    ))
}

/// Where the operator keeps its own webhook certificate, and whom it is for.
#[derive(Clone, Debug)]
pub struct SecretSettings {
    /// The operator's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The webhook Service's name: the certificate is for its DNS names.
    pub service: String,
    /// The webhook configurations (mutating and validating) whose caBundle it sets.
    pub configuration: String,
}

impl SecretSettings {
    /// The names the API server may use for the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (service, namespace) = (&self.service, &self.namespace);
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
            service.clone(),
        ]
    }
}

/// What a Secret holds, and whether it will do at `now`. Pure.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretState {
    /// It serves these names for more than the renewal margin.
    Current,
    /// There is a CA, but the serving certificate must be made again (near its end, for other
    /// names, or unreadable).
    RenewLeaf,
    /// Nothing usable: make everything.
    Missing,
}

/// Judges a Secret's content at `now`. Pure.
pub fn judge(secret: Option<&Secret>, dns_names: &[String], now: Timestamp) -> SecretState {
    let Some(secret) = secret else {
        return SecretState::Missing;
    };
    let data = secret.data.clone().unwrap_or_default();
    let has = |key: &str| data.get(key).is_some_and(|value| !value.0.is_empty());
    if !has("ca.crt") || !has("ca.key") {
        return SecretState::Missing;
    }
    if !has("tls.crt") || !has("tls.key") {
        return SecretState::RenewLeaf;
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let not_after = annotations
        .get(NOT_AFTER_ANNOTATION)
        .and_then(|text| text.parse::<Timestamp>().ok());
    let names_match = annotations.get(DNS_NAMES_ANNOTATION) == Some(&dns_names.join(","));
    match not_after {
        Some(end) if names_match && end - RENEW_BEFORE > now => SecretState::Current,
        _ => SecretState::RenewLeaf,
    }
}

fn to_offset(time: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(time.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(now: Timestamp) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = to_offset(now - SignedDuration::from_hours(1));
    params.not_after = to_offset(now + CA_VALIDITY);
    Ok(params)
}

/// Makes the Secret's content at `now`: a new CA unless `ca` (certificate and key PEM) is
/// given, and a serving certificate for `dns_names` signed by it. Pure but for randomness.
pub fn make_secret_data(
    ca: Option<(&str, &str)>,
    dns_names: &[String],
    now: Timestamp,
) -> Result<(BTreeMap<String, ByteString>, Timestamp), Error> {
    let (ca_pem, ca_key) = match ca {
        Some((certificate, key)) => (certificate.to_owned(), KeyPair::from_pem(key)?),
        None => {
            let key = KeyPair::generate()?;
            let certificate = ca_params(now)?.self_signed(&key)?;
            (certificate.pem(), key)
        }
    };
    let ca_key_pem = ca_key.serialize_pem();
    // Signing needs only the CA's name and key; both are what the CA certificate holds.
    let issuer = Issuer::new(ca_params(now)?, ca_key);
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = to_offset(now - SignedDuration::from_hours(1));
    let not_after = now + LEAF_VALIDITY;
    leaf.not_after = to_offset(not_after);
    let leaf_key = KeyPair::generate()?;
    let certificate = leaf.signed_by(&leaf_key, &issuer)?;
    let data = BTreeMap::from([
        ("ca.crt".to_owned(), ByteString(ca_pem.into_bytes())),
        ("ca.key".to_owned(), ByteString(ca_key_pem.into_bytes())),
        (
            "tls.crt".to_owned(),
            ByteString(certificate.pem().into_bytes()),
        ),
        (
            "tls.key".to_owned(),
            ByteString(leaf_key.serialize_pem().into_bytes()),
        ),
    ]);
    Ok((data, not_after))
}

/// The identity a Secret holds.
fn identity_of(secret: &Secret, name: &str) -> Result<ServingIdentity, Error> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &str| {
        data.get(key)
            .map(|value| value.0.clone())
            .unwrap_or_default()
    };
    identity_from_pem(
        &get("tls.crt"),
        &get("tls.key"),
        Some(&get("ca.crt")),
        &format!("secret {name}"),
    )
}

/// Makes sure the Secret holds a current certificate for the Service, making or renewing it
/// when needed (another replica doing the same at once is fine: the loser reads the winner's),
/// and returns what it holds.
pub async fn ensure_secret(
    client: &Client,
    settings: &SecretSettings,
    now: Timestamp,
) -> Result<ServingIdentity, Error> {
    let api = Api::<Secret>::namespaced(client.clone(), &settings.namespace);
    let api_error = |action: &str| {
        let action = format!("{action} secret {}/{}", settings.namespace, settings.secret);
        move |source| Error::Api { action, source }
    };
    for _ in 0..3 {
        let current = api
            .get_opt(&settings.secret)
            .await
            .map_err(api_error("read"))?;
        let names = settings.dns_names();
        let state = judge(current.as_ref(), &names, now);
        if state == SecretState::Current
            && let Some(current) = &current
        {
            return identity_of(current, &settings.secret);
        }
        let ca = current
            .as_ref()
            .filter(|_| state == SecretState::RenewLeaf)
            .and_then(|secret| {
                let data = secret.data.as_ref()?;
                Some((
                    String::from_utf8_lossy(&data.get("ca.crt")?.0).into_owned(),
                    String::from_utf8_lossy(&data.get("ca.key")?.0).into_owned(),
                ))
            });
        let (data, not_after) = make_secret_data(
            ca.as_ref()
                .map(|(certificate, key)| (certificate.as_str(), key.as_str())),
            &names,
            now,
        )?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(settings.secret.clone()),
                namespace: Some(settings.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    crate::provider::MANAGED_BY_LABEL.to_owned(),
                    crate::provider::MANAGED_BY.to_owned(),
                )])),
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
                    (DNS_NAMES_ANNOTATION.to_owned(), names.join(",")),
                ])),
                resource_version: current
                    .as_ref()
                    .and_then(|secret| secret.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Secret::default()
        };
        let written = match &current {
            None => api.create(&PostParams::default(), &secret).await,
            Some(_) => {
                api.replace(&settings.secret, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(written) => {
                info!(secret = %settings.secret, renewed = current.is_some(), until = %not_after, "made the webhook certificate");
                return identity_of(&written, &settings.secret);
            }
            // Another replica wrote first: use what it wrote.
            Err(kube::Error::Api(status)) if matches!(status.code, 409) => {
                debug!("another replica wrote the webhook certificate first");
            }
            Err(error) => return Err(api_error("write")(error)),
        }
    }
    let current = api
        .get_opt(&settings.secret)
        .await
        .map_err(api_error("read"))?;
    match current {
        Some(current) => identity_of(&current, &settings.secret),
        None => Err(Error::Pem {
            what: format!("secret {}", settings.secret),
            reason: "it keeps changing; try again".into(),
        }),
    }
}

/// Sets `ca_pem` as the caBundle of every webhook in the configurations named
/// `settings.configuration`, when it is not already.
pub async fn install_ca_bundle(
    client: &Client,
    settings: &SecretSettings,
    ca_pem: &str,
) -> Result<(), Error> {
    // ByteString serializes as base64, as caBundle is written.
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let name = &settings.configuration;
    // The same for both kinds of configuration, whose webhook types differ.
    macro_rules! install {
        ($kind:ty, $what:literal) => {{
            let api = Api::<$kind>::all(client.clone());
            let failed = |action: &str| {
                let action = format!("{action} {} webhook configuration {name}", $what);
                move |source| Error::Api { action, source }
            };
            if let Some(configuration) = api.get_opt(name).await.map_err(failed("read"))? {
                let stale: Vec<_> = configuration
                    .webhooks
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|webhook| {
                        webhook.client_config.ca_bundle.as_ref().map(|b| &b.0[..])
                            != Some(ca_pem.as_bytes())
                    })
                    .map(|webhook| json!({"name": webhook.name, "clientConfig": {"caBundle": bundle}}))
                    .collect();
                if !stale.is_empty() {
                    api.patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Strategic(json!({ "webhooks": stale })),
                    )
                    .await
                    .map_err(failed("set the caBundle of"))?;
                    info!(configuration = %name, kind = $what, "set the webhooks' caBundle");
                }
            }
        }};
    }
    install!(MutatingWebhookConfiguration, "mutating");
    install!(ValidatingWebhookConfiguration, "validating");
    Ok(())
}

/// Keeps the Secret current and the server presenting it: every `period` it renews what is
/// near its end (or takes what another replica renewed) and keeps the caBundle in place.
pub async fn follow_secret(
    client: Client,
    settings: SecretSettings,
    serving: Arc<Reloadable>,
    mut presented: Vec<u8>,
    period: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(period) => {}
        }
        let identity = match ensure_secret(&client, &settings, Timestamp::now()).await {
            Ok(identity) => identity,
            Err(error) => {
                warn!(error = %crate::telemetry::error_chain(&error), "could not check the webhook certificate; will retry");
                continue;
            }
        };
        if let Err(error) = install_ca_bundle(&client, &settings, &identity.ca_pem).await {
            warn!(error = %crate::telemetry::error_chain(&error), "could not set the webhooks' caBundle; will retry");
        }
        let leaf = identity
            .chain
            .first()
            .map(|der| der.to_vec())
            .unwrap_or_default();
        if leaf != presented {
            match serving.replace(identity) {
                Ok(()) => {
                    info!("serving the renewed webhook certificate");
                    presented = leaf;
                }
                Err(error) => warn!(%error, "the renewed webhook certificate is not usable"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        SecretSettings {
            namespace: "jit-system".into(),
            secret: "jit-operator-webhook-tls".into(),
            service: "jit-operator".into(),
            configuration: "jit-operator".into(),
        }
        .dns_names()
    }

    fn secret(
        data: BTreeMap<String, ByteString>,
        not_after: Timestamp,
        names: &[String],
    ) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
                    (DNS_NAMES_ANNOTATION.to_owned(), names.join(",")),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    #[test]
    fn a_secret_is_renewed_near_its_end_or_for_other_names_and_remade_without_a_ca() {
        let now: Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
        let names = names();
        assert_eq!(judge(None, &names, now), SecretState::Missing);
        let (data, not_after) = make_secret_data(None, &names, now).unwrap();
        assert_eq!(not_after, now + LEAF_VALIDITY);
        let fresh = secret(data.clone(), not_after, &names);
        assert_eq!(judge(Some(&fresh), &names, now), SecretState::Current);
        let late = not_after - RENEW_BEFORE + SignedDuration::from_secs(1);
        assert_eq!(judge(Some(&fresh), &names, late), SecretState::RenewLeaf);
        let renamed = vec!["other.jit-system.svc".to_owned()];
        assert_eq!(judge(Some(&fresh), &renamed, now), SecretState::RenewLeaf);
        let mut without_ca = data;
        without_ca.remove("ca.key");
        assert_eq!(
            judge(Some(&secret(without_ca, not_after, &names)), &names, now),
            SecretState::Missing
        );
    }

    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_renewed_leaf_keeps_the_ca_and_verifies_against_it() {
        let now: Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
        let names = names();
        let (first, _) = make_secret_data(None, &names, now).unwrap();
        let text = |data: &BTreeMap<String, ByteString>, key: &str| {
            String::from_utf8(data[key].0.clone()).unwrap()
        };
        let (renewed, _) = make_secret_data(
            Some((&text(&first, "ca.crt"), &text(&first, "ca.key"))),
            &names,
            now + SignedDuration::from_hours(24 * 340),
        )
        .unwrap();
        assert_eq!(text(&renewed, "ca.crt"), text(&first, "ca.crt"));
        assert_ne!(text(&renewed, "tls.crt"), text(&first, "tls.crt"));

        // A TLS client trusting only the CA accepts the renewed leaf for the Service's name.
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&renewed["ca.crt"].0) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::pem_slice_iter(&renewed["tls.crt"].0)
            .next()
            .unwrap()
            .unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            (now + SignedDuration::from_hours(24 * 341)).as_second() as u64,
        ));
        for name in &names {
            let server = rustls::pki_types::ServerName::try_from(name.clone()).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &server, &[], at)
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        }
        let identity = identity_of(&secret(renewed, now, &names), "s").unwrap();
        assert_eq!(identity.chain.len(), 1);
        assert!(Reloadable::new(identity).is_ok());
    }
}
