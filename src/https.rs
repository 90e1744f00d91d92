//! Serving an axum router over TLS on a bound listener: the connection limit, the handshake,
//! header and lifetime timeouts, and the accept backoff that the admission webhook and the
//! audit (activity) webhook share.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::certificate::Reloadable;

/// Why an HTTPS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is taken or not ours.
    #[error("failed to listen on {address}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate was not accepted by rustls.
    #[error("failed to configure TLS")]
    Tls(#[from] rustls::Error),
    /// Reading the bound address failed.
    #[error("failed to read the bound address")]
    Address(#[source] std::io::Error),
}

/// Listens on `address`.
pub(crate) async fn bind(address: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(address)
        .await
        .map_err(|source| Error::Bind { address, source })
}

/// The address `listener` is bound to.
pub(crate) fn local_addr(listener: &TcpListener) -> Result<SocketAddr, Error> {
    listener.local_addr().map_err(Error::Address)
}

/// A TLS acceptor presenting `certificate` (replaceable while serving), HTTP/1.1 only.
pub(crate) fn acceptor(certificate: Arc<Reloadable>) -> Result<TlsAcceptor, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` completes. `what` names the server in logs.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accept_backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // At the connection limit, stop accepting: the kernel's backlog holds the rest.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin and flood the log.
                warn!(server = what, error = %error, retry_in = ?accept_backoff, "failed to accept a connection");
                tokio::time::sleep(accept_backoff).await;
                accept_backoff = (accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    debug!(server = what, %peer, error = %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(server = what, %peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            // The API server keeps connections open between calls; a connection is closed
            // after a while all the same (the API server opens a new one), so that none is
            // held forever, idle or trickling.
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(HEADER_TIMEOUT, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(error) = result {
                debug!(server = what, %peer, error = %error, "connection ended with an error");
            }
        });
    }
}

/// Most connections served at once; the API server needs a handful.
const MAX_CONNECTIONS: usize = 256;
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's headers, including on an idle kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest life of one connection.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// First and longest wait after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
