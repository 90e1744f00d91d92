//! Finding 5 of the security review: the webhook server held every connection that never
//! finished its TLS handshake, for ever, so anyone who could reach its port could exhaust the
//! operator's file descriptors. Now a connection that does not complete its handshake is
//! closed, more connections than the limit wait their turn, and admission works again at
//! once after a flood. A binary of its own: the flood would slow other tests' admissions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{TestEnv, operator::Operator, request_view, view_policy};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// More half-open connections than the server serves at once (256).
const FLOOD: usize = 400;

#[tokio::test]
async fn half_open_connections_are_closed_and_admission_survives_a_flood() {
    let operator = Operator::start("jit-operator");
    let ready: serde_json::Value =
        serde_json::from_str(&operator.wait_for_log("operator ready", Duration::from_secs(1)))
            .unwrap();
    let address = ready["webhook_addr"].as_str().unwrap().to_owned();
    let env = TestEnv::new().await;
    let policy = view_policy(&env, 1).await;

    let mut waiting = Vec::new();
    for _ in 0..FLOOD {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        // Never a byte: the TLS handshake never starts. The server must hang up.
        waiting.push(tokio::spawn(async move {
            let mut buffer = [0u8; 16];
            matches!(
                tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buffer)).await,
                Ok(Ok(0) | Err(_))
            )
        }));
    }
    let mut closed = 0;
    for connection in waiting {
        if connection.await.unwrap() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, FLOOD,
        "every half-open connection was closed by the server"
    );

    // The webhook still admits (and stamps) a request.
    let created = request_view(&env, "after-flood", &policy, "10m").await;
    assert_eq!(created.spec.requester.unwrap().username, "alice");
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(
        !log.contains("failed to accept"),
        "no accept errors with the connection limit well under the descriptor limit"
    );
}
