//! Bad configs: every one exits 64 and names the file, the line and the key.

use crate::harness::{run_binary, TestCert};

fn testdata(name: &str) -> String {
    format!("{}/config/testdata/bad/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `check-config` on a bad file and returns its one-line-per-problem stderr.
fn refused(path: &str) -> String {
    let (code, stdout, stderr) = run_binary(&["check-config", path]);
    assert_eq!(
        code, 64,
        "{path}: exit {code}, stdout {stdout:?}, stderr {stderr:?}"
    );
    stderr
}

#[test]
fn each_bad_file_names_file_line_and_key() {
    let cases = [
        ("unknown-key.yaml", ":8: listeners[1].tls: unknown field `certs`"),
        ("bad-duration.yaml", ":9: core.groups.web.connect_timeout: invalid duration \"5 fortnights\""),
        ("missing-cert.yaml", ":8: listeners[0].tls.certificates[0].cert: file not found: /nonexistent/edgecache/hachyderm.pem"),
        ("bad-address.yaml", ":6: listeners[1].address: invalid address \"everywhere:80\""),
        ("bad-enum.yaml", ":10: logging.format: unknown variant `xml`"),
        ("duplicate-listener.yaml", ":5: listeners[1].name: duplicate listener name \"http\""),
        ("no-core.yaml", ":2: missing field `core`"),
        ("not-yaml.yaml", ":5: "),
        ("duplicate-host.yaml", ":8: core.groups.web.hosts[2]: 127.0.0.1:3000 is listed twice"),
        ("bad-cache.yaml", ":13: cache.memory.max_object_size: must not exceed cache.memory.max_size"),
        ("bad-cache.yaml", ":14: cache.session_cookies[1]: \"bad;name\" is not a cookie name"),
        ("bad-cache.yaml", ":17: sites[0].routes[0].path: must start with /"),
        ("bad-disk-cache.yaml", ":13: cache.disk.max_entries: must be at least 1"),
        ("bad-forwarding.yaml", ":11: core.groups.web.retry_methods[1]: \"POST\" cannot be retried"),
        ("bad-forwarding.yaml", ":15: sites[0].routes[0].upstream: no core group is named \"streamin\""),
        ("bad-forwarding.yaml", ":17: sites[0].routes[1].max_body_size: must be more than 0"),
        ("bad-forwarding.yaml", ":19: sites[0].routes[2].client_limit.per: is needed with requests"),
        ("bad-forwarding.yaml", ":21: sites[0].routes[2].client_limit.methods[1]: \"GE T\" is not a method"),
        ("bad-forwarding.yaml", ":23: sites[0].routes[3].client_limit.concurrent: must be at least 1"),
        ("bad-media.yaml", ":15: stores.spaces.bucket: \"Media_Bucket\" is not a bucket name"),
        ("bad-media.yaml", ":16: stores.spaces.credentials_file: cannot read /nonexistent/edgecache/spaces.credentials"),
        ("bad-media.yaml", ":19: stores.old.path: /nonexistent/edgecache/system is not a directory"),
        ("bad-media.yaml", ":20: stores.old.breaker.first_probe_after: must be more than 0s"),
        ("bad-media.yaml", ":25: sites[0].routes[0].media.chain[1]: no store is named \"nfs\""),
        ("bad-compression.yaml", ":10: compression.codings[1]: \"deflate\" is not one of zstd, br, gzip"),
        ("bad-compression.yaml", ":12: compression.levels.passing.gzip: must be between 1 and 9"),
        ("bad-compression.yaml", ":13: compression.types[1]: \"text\" is not a media type"),
        ("bad-compression.yaml", ":14: compression.max_concurrent: must be at least 1"),
        ("bad-compression.yaml", ":15: compression.min_length: must be at least 1 byte"),
        ("bad-slices.yaml", ":11: cache.slice_size: must be between 64KiB and 64MiB"),
        ("bad-slices.yaml", ":14: sites[0].routes[0].slice_size: must not be larger than the largest object a cache tier keeps"),
        ("bad-upgrade-socket.yaml", ":6: server.upgrade_socket: /run/edgecache-upgrade-socket-directory/"),
    ];
    for (file, expected) in cases {
        let path = testdata(file);
        let stderr = refused(&path);
        let wanted = format!("{path}{expected}");
        assert!(
            stderr.contains(&wanted),
            "{file}: wanted {wanted:?} in {stderr:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let path = testdata("bad-limits.yaml");
    let stderr = refused(&path);
    assert!(
        stderr.contains(&format!(
            "{path}:11: proxy.trusted_proxies[1]: invalid address or CIDR"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}:13: limits.max_header_size: must be between"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}:14: limits.client_header_timeout: must be greater than zero"
        )),
        "{stderr}"
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = TestCert::create(dir.path(), "a", &["a.example"]);
    let b = TestCert::create(dir.path(), "b", &["b.example"]);
    let config = format!(
        "listeners:\n  - name: https\n    address: \"127.0.0.1:8443\"\n    tls:\n      certificates:\n        - names: [a.example]\n          cert: {}\n          key: {}\ncore:\n  groups:\n    web:\n      hosts: [\"127.0.0.1:3000\"]\n",
        a.cert.display(),
        b.key.display()
    );
    let path = dir.path().join("mismatch.yaml");
    std::fs::write(&path, config).expect("write");
    let stderr = refused(path.to_str().expect("utf-8 path"));
    assert!(
        stderr.contains(&format!(
            "{}:8: listeners[0].tls.certificates[0].key: key {} does not match certificate",
            path.display(),
            b.key.display()
        )),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_key_and_garbage_pem_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = TestCert::create(dir.path(), "a", &["a.example"]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").expect("write");
    let config = format!(
        "listeners:\n  - name: https\n    address: \"127.0.0.1:8443\"\n    tls:\n      certificates:\n        - names: [a.example]\n          cert: {}\n          key: {}\n        - names: [b.example]\n          cert: {}\n          key: {}\n        - names: [c.example]\n          cert: {}\n          key: {}\ncore:\n  groups:\n    web:\n      hosts: [\"127.0.0.1:3000\"]\n",
        garbage.display(),
        a.key.display(),
        a.cert.display(),
        dir.path().join("missing.key").display(),
        dir.path().display(),
        a.key.display(),
    );
    let path = dir.path().join("bad-pem.yaml");
    std::fs::write(&path, config).expect("write");
    let stderr = refused(path.to_str().expect("utf-8 path"));
    assert!(
        stderr.contains(":7: listeners[0].tls.certificates[0].cert:"),
        "{stderr}"
    );
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
    assert!(
        stderr.contains(":11: listeners[0].tls.certificates[1].key: file not found:"),
        "{stderr}"
    );
    // A directory where a file should be.
    assert!(
        stderr.contains(":13: listeners[0].tls.certificates[2].cert: cannot read"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_bad_config_with_64_too() {
    let path = testdata("missing-cert.yaml");
    let (code, _, stderr) = run_binary(&["serve", "--config", &path]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("file not found"), "{stderr}");
    let (code, _, stderr) = run_binary(&["serve", "--config", "/nonexistent/edgecache.yaml"]);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("/nonexistent/edgecache.yaml: cannot read config"),
        "{stderr}"
    );
}

/// The fully commented example is a real config: with its certificate paths pointed at
/// generated files, it loads.
#[test]
fn the_commented_example_config_loads() {
    let example = std::fs::read_to_string(format!(
        "{}/config/mastodon-pop.example.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example config");
    let dir = tempfile::tempdir().expect("tempdir");
    TestCert::create(
        dir.path(),
        "hachyderm.example",
        &["hachyderm.example", "www.hachyderm.example"],
    );
    TestCert::create(
        dir.path(),
        "media.hachyderm.example",
        &["media.hachyderm.example"],
    );
    std::fs::write(dir.path().join("admin.token"), "s3cret-token\n").expect("token");
    let text = example.replace("/etc/edgecache/tls/", &format!("{}/", dir.path().display()));
    let text = text.replace(
        "/etc/edgecache/admin.token",
        &dir.path().join("admin.token").display().to_string(),
    );
    let text = text.replace(
        "/var/log/edgecache/access.log",
        &dir.path().join("access.log").display().to_string(),
    );
    std::fs::write(
        dir.path().join("spaces.credentials"),
        "access_key_id: AKIDEXAMPLE\nsecret_access_key: example-secret\n",
    )
    .expect("credentials");
    let text = text.replace(
        "/etc/edgecache/spaces.credentials",
        &dir.path().join("spaces.credentials").display().to_string(),
    );
    std::fs::write(dir.path().join("cache-buster.secret"), "buster-secret\n").expect("secret");
    let text = text.replace(
        "/etc/edgecache/cache-buster.secret",
        &dir.path().join("cache-buster.secret").display().to_string(),
    );
    let legacy = dir.path().join("legacy-system");
    std::fs::create_dir(&legacy).expect("legacy dir");
    let text = text.replace("/mnt/legacy/system", &legacy.display().to_string());
    let path = dir.path().join("mastodon-pop.yaml");
    std::fs::write(&path, text).expect("write");
    let (code, stdout, stderr) = run_binary(&["check-config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok (4 listeners, 2 core groups)"),
        "{stdout}"
    );
}

/// The shipped default config loads once its development certificate exists, which is what
/// `scripts/run.sh` makes before serving it.
#[test]
fn the_default_config_loads_with_a_generated_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let default = format!("{}/config/edgecache.yaml", env!("CARGO_MANIFEST_DIR"));
    let copy = dir.path().join("edgecache.yaml");
    std::fs::copy(&default, &copy).expect("copy default config");
    let copy = copy.to_str().expect("utf-8");
    // The media directory the default serves /system/ from comes with it.
    std::fs::create_dir(dir.path().join("media")).expect("media dir");
    std::fs::copy(
        format!("{}/config/media/hello.txt", env!("CARGO_MANIFEST_DIR")),
        dir.path().join("media/hello.txt"),
    )
    .expect("copy media");

    let (code, _, stderr) = run_binary(&["check-config", copy]);
    assert_eq!(
        code, 64,
        "without its certificate the default must not load"
    );
    assert!(stderr.contains("file not found"), "{stderr}");

    let cert = dir.path().join("dev/localhost.pem");
    let key = dir.path().join("dev/localhost.key");
    let gen_cert_if_missing = || {
        let (code, _, stderr) = run_binary(&[
            "gen-cert",
            "--if-missing",
            "--cert",
            cert.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
        ]);
        assert_eq!(code, 0, "{stderr}");
    };
    gen_cert_if_missing();
    let first = std::fs::read(&cert).expect("cert written");
    // --if-missing leaves an existing pair alone.
    gen_cert_if_missing();
    assert_eq!(std::fs::read(&cert).expect("cert"), first);

    let (code, stdout, stderr) = run_binary(&["check-config", copy]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok (2 listeners, 1 core groups)"),
        "{stdout}"
    );
}

/// Addresses that overlap without being equal (a wildcard and a loopback on one port) pass
/// validation but cannot both be bound: a clear start error, not a panic in a service thread.
#[test]
fn overlapping_listen_addresses_fail_at_start_with_69() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::harness::free_address().port();
    let config = format!(
        "listeners:\n  - name: http\n    address: \"0.0.0.0:{port}\"\nadmin:\n  address: \"127.0.0.1:{port}\"\ncore:\n  groups:\n    web:\n      hosts: [\"127.0.0.1:3000\"]\n"
    );
    let path = dir.path().join("overlap.yaml");
    std::fs::write(&path, config).expect("write");
    let (code, _, stderr) = run_binary(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (listener admin)"
        )),
        "{stderr}"
    );
}

#[test]
fn check_certificate_refuses_a_pair_that_would_not_serve() {
    let dir = tempfile::tempdir().expect("dir");
    let good = TestCert::create(dir.path(), "good", &["media.example"]);
    let other = TestCert::create(dir.path(), "other", &["other.example"]);
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();

    let (code, stdout, stderr) = run_binary(&[
        "check-certificate",
        "--cert",
        &path(&good.cert),
        "--key",
        &path(&good.key),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok, expires in"), "{stdout}");

    let (code, _, stderr) = run_binary(&[
        "check-certificate",
        "--cert",
        &path(&good.cert),
        "--key",
        &path(&other.key),
    ]);
    assert_eq!(code, 64);
    assert!(stderr.contains("does not match certificate"), "{stderr}");

    // Expired last year.
    let mut params =
        rcgen::CertificateParams::new(vec!["old.example".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let (cert_path, key_path) = (dir.path().join("old.pem"), dir.path().join("old.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let (code, _, stderr) = run_binary(&[
        "check-certificate",
        "--cert",
        &path(&cert_path),
        "--key",
        &path(&key_path),
    ]);
    assert_eq!(code, 64);
    assert!(stderr.contains("expired"), "{stderr}");
}
