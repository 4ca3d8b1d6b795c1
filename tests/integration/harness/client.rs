//! Clients: a TLS probe that reports which certificate and protocol the edge chose, HTTPS
//! clients that verify for real, a raw socket for requests no good client would send, and
//! a plain GET that returns the whole answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion,
};
use tokio_rustls::TlsConnector;

/// What a TLS handshake with the edge produced.
pub struct TlsProbe {
    pub leaf_der: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
}

/// Accepts any certificate: the probe asks *which* certificate was served; the HTTPS
/// clients below are the ones that verify.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a TLS connection to `address`, sending `sni` (None sends no SNI: rustls omits it
/// for an IP address), accepting whatever certificate comes back.
pub async fn tls_connect(
    address: SocketAddr,
    sni: Option<&str>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_string()).expect("server name"),
        None => ServerName::IpAddress(address.ip().into()),
    };
    let tcp = TcpStream::connect(address).await.expect("connect");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Handshakes with `address` and reports what the edge chose.
pub async fn tls_probe(
    address: SocketAddr,
    sni: Option<&str>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> TlsProbe {
    let tls = tls_connect(address, sni, versions, alpn).await;
    let (_, connection) = tls.get_ref();
    TlsProbe {
        leaf_der: connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.to_vec())
            .expect("a certificate"),
        alpn: connection.alpn_protocol().map(|p| p.to_vec()),
        version: connection.protocol_version(),
    }
}

/// Sends one HTTP/1.1 request on an open stream and reads one response with a
/// Content-Length body; returns (status, body).
pub async fn http1_on<S>(stream: &mut S, host: &str, path: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(n > 0, "connection closed before a whole response");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= length {
                let status = raw_status(head).expect("status");
                return (status, body[..length].to_string());
            }
        }
    }
}

/// An HTTPS client that trusts `roots`, resolves `names` to `address`, and verifies for real.
pub fn https_client(
    roots: &[&str],
    names: &[&str],
    address: SocketAddr,
    http1_only: bool,
) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0);
    for pem in roots {
        builder = builder
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("root"));
    }
    for name in names {
        builder = builder.resolve(name, address);
    }
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

/// Connects to `address` and sends `request`, leaving the connection open for reading.
pub async fn connect_and_send(address: SocketAddr, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    stream
}

/// Sends raw bytes and returns everything the edge answers until it closes or goes quiet.
pub async fn raw_exchange(address: SocketAddr, request: &[u8]) -> String {
    exchange(address, request, false).await
}

/// Like [`raw_exchange`], but closes the sending side after the bytes, so an incomplete
/// request ends at once instead of waiting for more.
pub async fn raw_exchange_then_close(address: SocketAddr, request: &[u8]) -> String {
    exchange(address, request, true).await
}

async fn exchange(address: SocketAddr, request: &[u8], half_close: bool) -> String {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // Write and read at once: the edge may answer (and close) before it has read everything,
    // and an answer read early cannot be lost to the reset that follows.
    let request = request.to_vec();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        if half_close {
            let _ = writer.shutdown().await;
        }
        writer
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    sending.abort();
    String::from_utf8_lossy(&answer).to_string()
}

/// The status code of a raw HTTP/1 answer.
pub fn raw_status(answer: &str) -> Option<u16> {
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// One answer, whole.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn cache_status(&self) -> &str {
        self.headers
            .get("x-cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("origin JSON")
    }
}

pub async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(reqwest::Method::GET, address, path, headers).await
}

/// One request of any method, on a connection of its own.
pub async fn send(
    method: reqwest::Method,
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut request = client.request(method, format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.expect("request");
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.expect("body").to_vec(),
    }
}
