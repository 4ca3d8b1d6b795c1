//! HTTPS: certificates chosen by SNI, a default for clients without SNI, TLS 1.2 and 1.3,
//! ALPN h2 and http/1.1, all checked with real handshakes.

use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::ProtocolVersion;

use crate::harness::{https_client, tls_probe, Edge, EdgeSetup, Origin, TestCert};

struct TwoSites {
    _origin: Origin,
    edge: Edge,
    setup: EdgeSetup,
    main: TestCert,
    media: TestCert,
}

/// An edge serving hachyderm.example and media.hachyderm.example from different certificates.
async fn two_sites() -> TwoSites {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let main = TestCert::create(
        setup.dir.path(),
        "main",
        &["hachyderm.example", "*.apps.hachyderm.example"],
    );
    let media = TestCert::create(setup.dir.path(), "media", &["media.hachyderm.example"]);
    let config = setup.config(&[&main, &media], &[origin.address], "");
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    TwoSites {
        _origin: origin,
        edge,
        setup,
        main,
        media,
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_and_no_sni_gets_the_default() {
    let sites = two_sites().await;
    let https = sites.setup.https();
    let both = [&TLS12, &TLS13];
    let alpn: [&[u8]; 2] = [b"h2", b"http/1.1"];

    let main = tls_probe(https, Some("hachyderm.example"), &both, &alpn).await;
    assert_eq!(
        main.leaf_der, sites.main.der,
        "hachyderm.example got the wrong certificate"
    );
    let media = tls_probe(https, Some("media.hachyderm.example"), &both, &alpn).await;
    assert_eq!(
        media.leaf_der, sites.media.der,
        "media got the wrong certificate"
    );
    let wildcard = tls_probe(https, Some("x.apps.hachyderm.example"), &both, &alpn).await;
    assert_eq!(
        wildcard.leaf_der, sites.main.der,
        "wildcard name got the wrong certificate"
    );
    let uppercase = tls_probe(https, Some("MEDIA.Hachyderm.Example"), &both, &alpn).await;
    assert_eq!(
        uppercase.leaf_der, sites.media.der,
        "SNI must match case-insensitively"
    );

    let no_sni = tls_probe(https, None, &both, &alpn).await;
    assert_eq!(
        no_sni.leaf_der, sites.main.der,
        "no SNI must get the default certificate"
    );
    let unknown = tls_probe(https, Some("elsewhere.example"), &both, &alpn).await;
    assert_eq!(
        unknown.leaf_der, sites.main.der,
        "an unknown name must get the default certificate"
    );

    // Each certificate's expiry is exported, for alerts before it runs out.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as f64;
    for name in ["hachyderm.example", "media.hachyderm.example"] {
        let sample = format!(
            "edgecache_tls_certificate_expiry_timestamp_seconds{{listener=\"https\",name=\"{name}\"}}"
        );
        let expiry = sites.edge.metric(&sample).await;
        assert!(expiry.is_some_and(|e| e > now), "{name}: {expiry:?}");
    }
}

#[tokio::test]
async fn tls12_and_tls13_and_both_alpn_protocols_are_offered() {
    let sites = two_sites().await;
    let https = sites.setup.https();
    let h2_first: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let h1: [&[u8]; 1] = [b"http/1.1"];

    let v12 = tls_probe(https, Some("hachyderm.example"), &[&TLS12], &h2_first).await;
    assert_eq!(v12.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(v12.alpn.as_deref(), Some(&b"h2"[..]));
    let v13 = tls_probe(https, Some("hachyderm.example"), &[&TLS13], &h1).await;
    assert_eq!(v13.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(v13.alpn.as_deref(), Some(&b"http/1.1"[..]));

    let hellos = sites
        .edge
        .metric("edgecache_tls_client_hellos_total{listener=\"https\"}")
        .await
        .unwrap_or(0.0);
    assert!(hellos >= 2.0, "client hellos counted: {hellos}");
    // The server counts a handshake just after the client sees it finish: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (v13_count, v12_count) = loop {
        let count = |version: &'static str| {
            let sample = format!(
                "edgecache_tls_handshakes_total{{listener=\"https\",version=\"{version}\"}}"
            );
            let edge = &sites.edge;
            async move { edge.metric(&sample).await.unwrap_or(0.0) }
        };
        let counts = (count("TLSv1_3").await, count("TLSv1_2").await);
        if (counts.0 >= 1.0 && counts.1 >= 1.0) || std::time::Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        v13_count >= 1.0 && v12_count >= 1.0,
        "handshakes counted: 1.3={v13_count} 1.2={v12_count}"
    );
}

#[tokio::test]
async fn verified_https_requests_work_over_h2_and_http1() {
    let sites = two_sites().await;
    let https = sites.setup.https();
    let names = ["hachyderm.example", "media.hachyderm.example"];
    let roots = [sites.main.pem.as_str(), sites.media.pem.as_str()];

    let h2 = https_client(&roots, &names, https, false);
    for name in names {
        let resp = h2
            .get(format!("https://{name}:{}/api/v1/instance", https.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("h2 request to {name}: {e}"));
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["uri"], "/api/v1/instance");
        // The core sees the client's host name, and that it came in over TLS.
        let host = crate::harness::seen_headers(&body, "host");
        assert_eq!(host, vec![format!("{name}:{}", https.port())]);
        assert_eq!(
            crate::harness::seen_headers(&body, "x-forwarded-proto"),
            vec!["https"]
        );
    }

    let h1 = https_client(&roots, &names, https, true);
    let resp = h1
        .get(format!(
            "https://media.hachyderm.example:{}/system/a.png",
            https.port()
        ))
        .send()
        .await
        .expect("http/1.1 request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
}
