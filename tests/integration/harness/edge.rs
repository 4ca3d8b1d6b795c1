//! The real edgecache binary, started with a config written for one test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::config::Config;

pub const BINARY: &str = env!("CARGO_BIN_EXE_edgecache");

/// Edges' ports come from here: below the kernel's ephemeral range (32768 and up), where
/// the local ports of the tests' many client connections (and every port-0 listener)
/// come from, so none of those can be holding a port by the time an edge binds it.
const LOW: u32 = 10_000;
const SPAN: u32 = 22_000;

/// Lock files of the ports this process has taken, held until it exits. Test processes
/// running at the same time (several checkouts, several `cargo test`) each lock the ports
/// they take, so none hands a port to its edges that another one's edge binds or rebinds
/// (after a restart, a port is bound again long after it was chosen).
static TAKEN: parking_lot::Mutex<Vec<std::fs::File>> = parking_lot::const_mutex(Vec::new());

/// A port on 127.0.0.1, locked for this process and held bound (not listening, so a
/// connection to it is refused as to a closed port) until the socket is dropped. Without
/// SO_REUSEADDR on the held socket, nobody else can bind the port meanwhile.
fn take_port() -> (SocketAddr, socket2::Socket) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let locks = std::env::temp_dir().join("edgecache-test-ports");
    // Another user's run may own the directory or a lock file: then that port is only
    // probed by binding it, as without locks.
    let _ = std::fs::create_dir_all(&locks);
    // Processes start at different places, so they seldom meet on the same ports.
    let offset = (std::process::id() % 1000) * 20;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % SPAN).expect("port in range");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(format!("{port}.lock")))
            .ok();
        if lock.as_ref().is_some_and(|l| l.try_lock().is_err()) {
            continue;
        }
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if socket.bind(&address.into()).is_ok() {
            TAKEN.lock().extend(lock);
            return (address, socket);
        }
    }
    panic!("no free port below the ephemeral range");
}

/// A port that was free a moment ago on 127.0.0.1, for something to bind later (an origin
/// started after the edge, a core host that is never there). No other test process will
/// take it, but between now and the bind anything else on the machine still could; an
/// edge binds port 0 instead ([`EdgeSetup::new`]).
pub fn free_address() -> SocketAddr {
    take_port().0
}

/// A certificate written into a test directory.
pub struct TestCert {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pem: String,
    pub der: Vec<u8>,
}

impl TestCert {
    /// Generates a self-signed certificate for `names` into `dir/<file>.pem` and `.key`.
    pub fn create(dir: &Path, file: &str, names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = dir.join(format!("{file}.pem"));
        let key = dir.join(format!("{file}.key"));
        let generated = edgecache::devcert::generate(&names).expect("generate cert");
        std::fs::write(&cert, &generated.cert_pem).expect("write cert");
        std::fs::write(&key, &generated.key_pem).expect("write key");
        TestCert {
            der: pem_to_der(&generated.cert_pem),
            names,
            cert,
            key,
            pem: generated.cert_pem,
        }
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

/// The three addresses of a test edge.
#[derive(Debug, Clone, Copy)]
struct EdgeAddresses {
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
}

/// How a test edge gets its ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ports {
    /// Port 0: ports of the kernel's choice, new at every start, reported by the edge.
    #[default]
    Chosen,
    /// Taken before the config is written, the same at every start: for an edge whose
    /// address must be known before it starts or stay where it was across a restart
    /// (cache keys name the port a client called).
    Kept,
}

/// Addresses and files of one test's edge.
pub struct EdgeSetup {
    pub dir: TempDir,
    /// What the config says: port 0 (the edge picks) unless taken by [`EdgeSetup::with_ports_now`].
    configured: EdgeAddresses,
    /// What the running (or last) edge reported it listens on.
    reported: parking_lot::Mutex<Option<EdgeAddresses>>,
    /// Ports taken by [`EdgeSetup::with_ports_now`], held bound until the edge is about to
    /// start, so nothing else takes them while the test writes certificates and starts its
    /// origins and stores.
    held: parking_lot::Mutex<Vec<socket2::Socket>>,
}

impl EdgeSetup {
    /// An edge on port 0: it binds ports of the kernel's choice and reports them
    /// (`serve --addresses-file`), read by [`Edge::start`]. Every start, restarts included,
    /// gets new ports; ask [`EdgeSetup::http`] and the others after it.
    pub fn new() -> EdgeSetup {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        EdgeSetup {
            dir: tempfile::tempdir().expect("tempdir"),
            configured: EdgeAddresses {
                http: any,
                https: any,
                admin: any,
            },
            reported: parking_lot::Mutex::new(None),
            held: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// An edge with `ports`.
    pub fn with(ports: Ports) -> EdgeSetup {
        match ports {
            Ports::Chosen => EdgeSetup::new(),
            Ports::Kept => EdgeSetup::with_ports_now(),
        }
    }

    /// An edge whose ports are taken now ([`Ports::Kept`]), for a config that must name
    /// them before it starts (PoPs of a fleet list each other's admin addresses) or that
    /// must keep them across a restart.
    pub fn with_ports_now() -> EdgeSetup {
        let (http, http_socket) = take_port();
        let (https, https_socket) = take_port();
        let (admin, admin_socket) = take_port();
        EdgeSetup {
            dir: tempfile::tempdir().expect("tempdir"),
            configured: EdgeAddresses { http, https, admin },
            reported: parking_lot::Mutex::new(None),
            held: parking_lot::Mutex::new(vec![http_socket, https_socket, admin_socket]),
        }
    }

    /// The plain HTTP listener's address.
    pub fn http(&self) -> SocketAddr {
        self.known(|a| a.http, "http")
    }

    /// The HTTPS listener's address.
    pub fn https(&self) -> SocketAddr {
        self.known(|a| a.https, "https")
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.known(|a| a.admin, "admin")
    }

    fn known(&self, pick: impl Fn(&EdgeAddresses) -> SocketAddr, what: &str) -> SocketAddr {
        if let Some(reported) = *self.reported.lock() {
            return pick(&reported);
        }
        let configured = pick(&self.configured);
        assert_ne!(
            configured.port(),
            0,
            "the {what} port is chosen when the edge starts: ask after Edge::start, or take it first with EdgeSetup::with_ports_now"
        );
        configured
    }

    /// The (http, admin) addresses as a config names them: port 0 unless [`Ports::Kept`].
    pub fn configured_http_and_admin(&self) -> (SocketAddr, SocketAddr) {
        (self.configured.http, self.configured.admin)
    }

    /// Whether every start binds the same ports.
    pub fn ports(&self) -> Ports {
        if self.configured.http.port() == 0 {
            Ports::Chosen
        } else {
            Ports::Kept
        }
    }

    /// Lets the taken ports go, for the edge to bind them. From here until the edge has
    /// bound them, only a process outside the test suite could take them.
    pub fn release_ports(&self) {
        self.held.lock().clear();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The test config ([`Config::edge`]) on this setup's addresses, serving `certs` on
    /// HTTPS, in front of `core`, with the top-level sections in `extra` added.
    pub fn config(&self, certs: &[&TestCert], core: &[SocketAddr], extra: &str) -> Config {
        let EdgeAddresses { http, https, admin } = self.configured;
        Config::edge(http, https, admin, certs, core).with_sections(extra)
    }

    /// Writes `config` where [`Edge::start`] and restarts read it.
    pub fn write_config(&self, config: &Config) -> PathBuf {
        self.write_config_text(&config.render())
    }

    /// Writes a config given as text, for a test that means to write a bad one.
    pub fn write_config_text(&self, text: &str) -> PathBuf {
        let path = self.path("edgecache.yaml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Where the edge reports its addresses.
    pub fn addresses_file(&self) -> PathBuf {
        self.path("addresses")
    }

    /// The edge's report: (name, address) of every listener, `admin` and
    /// `listener:<name>`.
    pub fn report(&self) -> Vec<(String, SocketAddr)> {
        let text = std::fs::read_to_string(self.addresses_file()).expect("the address report");
        edgecache::sockets::parse_report(&text).expect("a readable address report")
    }

    /// The reported address of the listener `name` (as named in the config).
    pub fn listener_address(&self, name: &str) -> SocketAddr {
        let key = edgecache::sockets::listener_key(name);
        self.report()
            .into_iter()
            .find_map(|(n, address)| (n == key).then_some(address))
            .unwrap_or_else(|| panic!("no listener {name} in the report"))
    }

    /// Takes in what the edge reported (listeners other than `http` and `https` a test
    /// added keep their own addresses); `None` until the report is there.
    fn read_report(&self) -> Option<SocketAddr> {
        let text = std::fs::read_to_string(self.addresses_file()).ok()?;
        let report = edgecache::sockets::parse_report(&text).expect("a readable address report");
        let find = |name: &str, otherwise: SocketAddr| {
            report
                .iter()
                .find(|(n, _)| n == name)
                .map_or(otherwise, |(_, a)| *a)
        };
        let admin = find(edgecache::sockets::ADMIN, self.configured.admin);
        *self.reported.lock() = Some(EdgeAddresses {
            http: find("listener:http", self.configured.http),
            https: find("listener:https", self.configured.https),
            admin,
        });
        Some(admin)
    }
}

/// An edge started for one test, with what it was started from.
pub struct TestPop {
    pub edge: Edge,
    pub setup: EdgeSetup,
    /// The HTTPS listener's one certificate, for `hachyderm.example`.
    pub cert: TestCert,
}

/// Starts an edge with the test config (HTTP, HTTPS for `hachyderm.example`, admin) in front
/// of `core`, with `extra` YAML appended.
pub async fn start_pop(core: &[SocketAddr], extra: &str) -> TestPop {
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let config = setup.config(&[&cert], core, extra);
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    TestPop { edge, setup, cert }
}

/// A running edgecache process; killed when dropped.
pub struct Edge {
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub admin: SocketAddr,
}

impl Edge {
    /// Starts `edgecache serve` on `config` and waits until every listener listens (the
    /// edge reports its addresses then).
    pub async fn start(setup: &EdgeSetup, config: &Path) -> Edge {
        let stdout = setup.path("stdout.log");
        let stderr = setup.path("stderr.log");
        setup.release_ports();
        let report = setup.addresses_file();
        match std::fs::remove_file(&report) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove the old address report: {e}"),
        }
        let child = Command::new(BINARY)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--addresses-file")
            .arg(&report)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn edgecache");
        let mut edge = Edge {
            child,
            stdout,
            stderr,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        edge.admin = edge.wait_listening(setup).await;
        edge
    }

    /// Waits for the edge's address report; returns the admin address.
    async fn wait_listening(&mut self, setup: &EdgeSetup) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(admin) = setup.read_report() {
                return admin;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "edgecache exited early with {status}: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "edgecache did not listen in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("kill {signal}: {e}"));
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .expect("admin request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("admin body"))
    }

    /// POST /reload on the admin listener, with a bearer token if given: (status, body).
    pub async fn admin_reload(&self, token: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new().post(format!("http://{}/reload", self.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let resp = request.send().await.expect("reload request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("reload answer"))
    }

    /// The value of one sample in `/metrics`, e.g. `edgecache_requests_total{listener="http",status_class="2xx"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
    }

    /// Waits until the `/metrics` sample equals `value`.
    pub async fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.metric(sample).await;
            if got == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} never became {value}; last: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/readyz` answers `status` with a body containing `text`.
    pub async fn wait_ready_answer(&self, status: u16, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (got, body) = self.admin_get("/readyz").await;
            if got == status && body.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never answered {status} with {text:?}; last: {got} {body:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready_status(&self, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.admin_get("/readyz").await.0 == status {
                return;
            }
            assert!(Instant::now() < deadline, "/readyz never answered {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_binary(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run edgecache");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}
