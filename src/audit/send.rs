//! Sending one record to one channel: an HTTP POST (CloudEvents structured mode, plain JSON,
//! Slack, Teams) or an email over SMTP with STARTTLS. Done means acknowledged: a 2xx, or SMTP
//! 250. Errors never carry the channel's URL or credentials.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::header::ContentType,
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};

use super::{outbox::Record, render};
use crate::crd::v1alpha1::{ChannelType, NotificationChannelSpec};

/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the channel's Secret holds.
#[derive(Clone, Default)]
pub struct ChannelSecret {
    pub address: Option<String>,
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca: Option<Vec<u8>>,
}

/// Why a delivery did not count as done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The channel is set up wrong (Secret incomplete, bad address): retried, but it will
    /// not work until someone fixes it.
    #[error("{0}")]
    Setup(String),
    /// The channel answered, but not with an acknowledgement.
    #[error("{message}")]
    Answered {
        message: String,
        /// The channel's Retry-After, when it gave one.
        retry_after: Option<Duration>,
    },
    /// The channel could not be reached or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
}

impl Error {
    /// The channel's own retry-after, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Answered { retry_after, .. } => *retry_after,
            Self::Setup(_) | Self::Unreachable(_) => None,
        }
    }
}

/// The HTTP client for a channel: rustls with the system's roots plus the Secret's `ca.crt`,
/// no redirects (a redirect would carry a token elsewhere).
pub fn http_client(credentials: &ChannelSecret) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &credentials.ca {
        let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|error| {
            Error::Setup(format!("ca.crt does not parse: {}", error.without_url()))
        })?;
        builder = builder.tls_certs_merge(certificates);
    }
    builder.build().map_err(|error| {
        Error::Setup(format!(
            "cannot build the HTTP client: {}",
            error.without_url()
        ))
    })
}

/// Sends `record` to a channel of this spec.
pub async fn send(
    spec: &NotificationChannelSpec,
    credentials: &ChannelSecret,
    http: &reqwest::Client,
    record: &Record,
) -> Result<(), Error> {
    match spec.type_ {
        ChannelType::CloudEvents => {
            post(
                http,
                credentials,
                "application/cloudevents+json",
                &record.event,
            )
            .await
        }
        ChannelType::Webhook => post(http, credentials, "application/json", &record.event).await,
        ChannelType::Slack => {
            let message = message(record)?;
            post(
                http,
                credentials,
                "application/json",
                &render::slack(&message),
            )
            .await
        }
        ChannelType::MsTeams => {
            let message = message(record)?;
            post(
                http,
                credentials,
                "application/json",
                &render::teams(&message),
            )
            .await
        }
        ChannelType::Email => email(spec, credentials, record).await,
    }
}

fn message(record: &Record) -> Result<render::Message, Error> {
    render::message(&record.event)
        .ok_or_else(|| Error::Setup("the event does not describe a request".into()))
}

/// Reads a channel's Secret `name` in `namespace`; `(reason, message)` when it is missing or
/// unreadable.
pub(crate) async fn read_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<ChannelSecret, (String, String)> {
    let api =
        kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err((
                "SecretMissing".into(),
                format!("Secret {name} does not exist in namespace {namespace}"),
            ));
        }
        Err(error) => {
            return Err((
                "SecretUnreadable".into(),
                format!(
                    "cannot read Secret {name} in namespace {namespace}: {}",
                    crate::telemetry::error_chain(&error)
                ),
            ));
        }
    };
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    };
    Ok(ChannelSecret {
        address: text("address"),
        token: text("token"),
        username: text("username"),
        password: text("password"),
        ca: text("ca.crt").map(String::into_bytes),
    })
}

/// How long a channel's Secret is used before it is read again.
pub(crate) const SECRET_TTL: Duration = Duration::from_secs(30);

/// A channel's Secret (in `namespace`) and an HTTP client for it; `(reason, message)` when
/// they cannot be had.
pub(crate) async fn credentials(
    client: &kube::Client,
    namespace: &str,
    spec: &NotificationChannelSpec,
) -> Result<(ChannelSecret, reqwest::Client), (String, String)> {
    let secret = read_secret(client, namespace, &spec.secret_ref.name).await?;
    let http =
        http_client(&secret).map_err(|error| ("Misconfigured".to_owned(), error.to_string()))?;
    Ok((secret, http))
}

/// POSTs `body` to the channel's address with its token.
pub(crate) async fn post(
    http: &reqwest::Client,
    credentials: &ChannelSecret,
    content_type: &str,
    body: &serde_json::Value,
) -> Result<(), Error> {
    let address = credentials
        .address
        .as_deref()
        .ok_or_else(|| Error::Setup("the Secret has no address".into()))?;
    let url = reqwest::Url::parse(address)
        .map_err(|_| Error::Setup("the Secret's address is not a URL".into()))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(Error::Setup("the Secret's address is not http(s)".into()));
    }
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body.to_string());
    if let Some(token) = &credentials.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|error| Error::Unreachable(error.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(retry_after);
    Err(Error::Answered {
        message: format!("answered {status}"),
        retry_after,
    })
}

/// A Retry-After value: seconds, or an HTTP date.
pub fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = jiff::fmt::rfc2822::parse(value.trim()).ok()?;
    let now = jiff::Timestamp::now();
    let wait = date.timestamp().duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

async fn email(
    spec: &NotificationChannelSpec,
    credentials: &ChannelSecret,
    record: &Record,
) -> Result<(), Error> {
    let settings = spec
        .email
        .as_ref()
        .ok_or_else(|| Error::Setup("type email needs spec.email".into()))?;
    let mut to: Vec<String> = settings.to.iter().chain(&record.mail).cloned().collect();
    to.sort();
    to.dedup();
    if to.is_empty() {
        // Nobody to tell: the event is for people without an address.
        return Ok(());
    }
    let message = message(record)?;
    let (subject, body) = render::email(&message);
    let from = settings
        .from
        .parse()
        .map_err(|_| Error::Setup(format!("from {} is not an address", settings.from)))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for address in &to {
        match address.parse() {
            Ok(mailbox) => builder = builder.to(mailbox),
            Err(_) => tracing::warn!(%address, "skipping a recipient that is not an address"),
        }
    }
    let email = builder
        .body(body)
        .map_err(|error| Error::Setup(format!("cannot build the email: {error}")))?;
    let mut tls = TlsParameters::builder(settings.host.clone());
    if let Some(pem) = &credentials.ca {
        let certificate = Certificate::from_pem(pem)
            .map_err(|error| Error::Setup(format!("ca.crt does not parse: {error}")))?;
        tls = tls.add_root_certificate(certificate);
    }
    let tls = tls
        .build_rustls()
        .map_err(|error| Error::Setup(format!("cannot set up TLS: {error}")))?;
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            .port(settings.port)
            // STARTTLS or nothing: credentials and mail never cross in the clear.
            .tls(Tls::Required(tls))
            .timeout(Some(TIMEOUT));
    if let (Some(username), Some(password)) = (&credentials.username, &credentials.password) {
        transport = transport.credentials(Credentials::new(username.clone(), password.clone()));
    }
    let transport = transport.build();
    match transport.send(email).await {
        Ok(response) if response.is_positive() => Ok(()),
        Ok(response) => Err(Error::Answered {
            message: format!("the SMTP server answered {}", response.code()),
            retry_after: None,
        }),
        Err(error) if error.is_transient() || error.is_permanent() => Err(Error::Answered {
            message: format!("the SMTP server refused: {error}"),
            retry_after: None,
        }),
        Err(error) => Err(Error::Unreachable(format!("SMTP: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
