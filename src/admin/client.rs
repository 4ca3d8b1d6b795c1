//! The CLI's client of the admin listener: `edgecache reload`, `upgrade` and `purge` ask the
//! running PoP over HTTP, with the bearer token from the same config file.

use std::net::SocketAddr;
use std::time::Duration;

use crate::fleet::PurgeTarget;

/// How long the CLI waits to connect, and for the whole answer (a reload reads every
/// certificate; an upgrade waits for the successor to be ready).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AdminRequestError {
    #[error("cannot reach the admin listener at {address}: {}", causes(source))]
    Connect {
        address: SocketAddr,
        source: reqwest::Error,
    },
    #[error("the admin listener answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("unreadable answer from the admin listener: {0}")]
    BadAnswer(String),
}

/// An error with its causes, `: `-joined: reqwest's own message names only the URL, the
/// cause says what went wrong (connection refused, timed out).
fn causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Asks the PoP whose admin listener is at `address` to reload (what `edgecache reload`
/// does). Returns the admin listener's report.
pub fn request_reload(
    address: SocketAddr,
    token: Option<&str>,
) -> Result<String, AdminRequestError> {
    admin_post(address, token, "/reload")
}

/// Asks the PoP at `address` to start the binary now on disk as its successor (what
/// `edgecache upgrade` does). Returns the admin listener's report.
pub fn request_upgrade(
    address: SocketAddr,
    token: Option<&str>,
) -> Result<String, AdminRequestError> {
    admin_post(address, token, "/upgrade")
}

/// Asks the PoP at `address` to purge `target` (a URL, a URL prefix or a tag) here and on
/// every other PoP of its fleet; returns its JSON report.
pub fn request_purge(
    address: SocketAddr,
    token: Option<&str>,
    target: &PurgeTarget,
    deleted: bool,
) -> Result<String, AdminRequestError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair(target.kind.query_name(), &target.value);
    if let Some(host) = &target.host {
        query.append_pair("host", host);
    }
    if deleted {
        query.append_pair("deleted", "1");
    }
    let query = query.finish();
    admin_post(address, token, &format!("/purge?{query}"))
}

/// POSTs to the admin listener and returns the body of a 200 answer. The CLI runs no
/// runtime of its own, so the request gets a small one.
fn admin_post(
    address: SocketAddr,
    token: Option<&str>,
    target: &str,
) -> Result<String, AdminRequestError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminRequestError::BadAnswer(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(post(address, token, target))
}

async fn post(
    address: SocketAddr,
    token: Option<&str>,
    target: &str,
) -> Result<String, AdminRequestError> {
    let connect = |source| AdminRequestError::Connect { address, source };
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(connect)?;
    let mut request = client.post(format!("http://{address}{target}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.map_err(connect)?;
    let status = answer.status().as_u16();
    let body = answer
        .text()
        .await
        .map_err(|e| AdminRequestError::BadAnswer(e.to_string()))?;
    if status == 200 {
        Ok(body)
    } else {
        Err(AdminRequestError::Refused {
            status,
            body: body.trim().to_string(),
        })
    }
}
