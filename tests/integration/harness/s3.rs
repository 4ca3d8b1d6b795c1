//! A real S3-compatible server for the tests: s3s-fs, which checks SigV4 signatures and
//! keeps objects as files under a temporary directory. `scripts/test-servers.sh` installs
//! it under `.tools/`; `EDGECACHE_S3S_FS` may point at another copy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use tempfile::TempDir;

use super::config::Store;
use super::edge::free_address;

pub const S3_ACCESS_KEY: &str = "edgecache-test";
pub const S3_SECRET_KEY: &str = "edgecache-test-secret-key";
pub const BUCKET: &str = "media";

pub struct S3Server {
    child: Option<Child>,
    pub address: SocketAddr,
    pub root: TempDir,
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("EDGECACHE_S3S_FS") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/s3s-fs");
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-servers.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

impl S3Server {
    /// Starts a server with the bucket [`BUCKET`].
    pub async fn start() -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let mut server = S3Server {
            child: None,
            address: free_address(),
            root,
        };
        server.resume().await;
        server
    }

    /// Stops the server (the store is down); its objects stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same address and objects.
    pub async fn resume(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.address.port().to_string())
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.address).await.is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen in 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A `stores:` entry for this server, its credentials in a file under `dir`.
    pub fn store(&self, name: &str, dir: &std::path::Path) -> Store {
        let credentials = dir.join(format!("{name}.credentials"));
        std::fs::write(
            &credentials,
            format!("access_key_id: {S3_ACCESS_KEY}\nsecret_access_key: {S3_SECRET_KEY}\n"),
        )
        .expect("credentials file");
        Store::s3(&self.endpoint(), BUCKET, &credentials)
    }

    /// A client with the server's credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                S3_ACCESS_KEY,
                S3_SECRET_KEY,
                None,
                None,
                "test",
            ))
            .http_client(http)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn put(&self, key: &str, body: &[u8]) {
        self.client()
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .expect("put object");
    }

    /// The object's bytes, or `None` when the store has no such key.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self
            .client()
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Some(
                output
                    .body
                    .collect()
                    .await
                    .expect("object body")
                    .into_bytes()
                    .to_vec(),
            ),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => panic!("get {key}: {e:?}"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
