//! End to end over real TLS: the `portcullis` binary terminates HTTPS listeners with
//! certificates from Secrets, and `curl`, `openssl s_client` and a rustls client check what it
//! serves: the certificate picked by SNI (exact, wildcard, no hostname), every supported key
//! type and a chain with an intermediate, ALPN, the protocol versions, the 400 for cleartext,
//! the status of unusable certificate references, ReferenceGrants, a Secret rotated under
//! load, and one that turns bad while served; a request header sent too slowly over TLS (408);
//! and mirror copies to a BackendTLSPolicy backend going over TLS. The `openssl` and `curl` commands must be installed: without them the tests fail.

mod common;
mod tls_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls_support::{
    curl, curl_https, https_listener, https_listener_ref, read_response, rustls_client, s_client,
    secret, serial_and_fingerprint, tls_secret, Gateway, KeyType, Pki, RustlsConnection, NAMESPACE,
};

/// The Secret `name` in the Gateway's namespace holding `cert`, as a config file.
fn secret_file(name: &str, cert: &tls_support::Certificate) -> (String, String) {
    (
        format!("secret-{name}.yaml"),
        tls_secret(NAMESPACE, name, &cert.cert_pem, &cert.key_pem),
    )
}

#[test]
fn each_hostname_listener_on_one_port_serves_its_own_certificate_by_sni() {
    let pki = Pki::new();
    let a = pki.self_signed("a", KeyType::Rsa2048, &["a.example"]);
    let b = pki.self_signed("b", KeyType::EcdsaP256, &["b.example"]);
    let listeners =
        https_listener("a", Some("a.example"), "a") + &https_listener("b", Some("b.example"), "b");
    let gw = Gateway::start(&listeners, vec![secret_file("a", &a), secret_file("b", &b)]);
    gw.wait_for_condition("a", "Programmed", "True", "Programmed");
    gw.wait_for_condition("b", "Programmed", "True", "Programmed");

    for (host, cert) in [("a.example", &a), ("b.example", &b)] {
        // curl verifies the certificate against the one it was told to trust, by name.
        let r = curl_https(gw.https, host, "/who", &cert.cert_path, &[]);
        assert_eq!(r.code, 200, "{host}: {r:?}");
        let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(echoed["path"], "/who");
        assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
        // s_client shows which certificate came back.
        let h = s_client(gw.https, Some(host), &[]);
        assert!(h.completed, "{host}: {}", h.output);
        assert_eq!(
            h.leaf_der(),
            Some(cert.der.clone()),
            "{host}: wrong certificate"
        );
    }
    // SNI is compared without regard to case.
    let h = s_client(gw.https, Some("A.EXAMPLE"), &[]);
    assert_eq!(h.leaf_der(), Some(a.der.clone()), "{}", h.output);
    // Trusting a's certificate for b.example fails: b.example is not served a's certificate.
    let r = curl_https(gw.https, "b.example", "/", &a.cert_path, &[]);
    assert!(!r.exit_ok && r.code == 0, "{r:?}");
    assert!(r.stderr.contains("certificate"), "{r:?}");
    // A request whose Host names another listener than its SNI did is misdirected.
    let r = curl_https(
        gw.https,
        "a.example",
        "/",
        &a.cert_path,
        &["-H", "host: b.example"],
    );
    assert_eq!(r.code, 421, "{r:?}");
    // One whose Host names no listener at all is not misdirected but unknown: 404.
    let r = curl_https(
        gw.https,
        "a.example",
        "/",
        &a.cert_path,
        &["-H", "host: c.example"],
    );
    assert_eq!(r.code, 404, "{r:?}");
}

#[test]
fn wildcard_listener_serves_subdomains_and_an_exact_listener_wins_over_it() {
    let pki = Pki::new();
    let wild = pki.self_signed("wild", KeyType::EcdsaP384, &["*.wild.example"]);
    let exact = pki.self_signed("exact", KeyType::Rsa2048, &["exact.wild.example"]);
    // The wildcard comes first in the manifest: precedence must not depend on order.
    let listeners = https_listener("wild", Some("*.wild.example"), "wild")
        + &https_listener("exact", Some("exact.wild.example"), "exact");
    let gw = Gateway::start(
        &listeners,
        vec![secret_file("wild", &wild), secret_file("exact", &exact)],
    );
    gw.wait_for_condition("wild", "Programmed", "True", "Programmed");
    gw.wait_for_condition("exact", "Programmed", "True", "Programmed");

    let r = curl_https(gw.https, "foo.wild.example", "/", &wild.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
    let r = curl_https(gw.https, "exact.wild.example", "/", &exact.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
    for (sni, cert) in [
        ("foo.wild.example", &wild),
        ("a.b.wild.example", &wild),
        ("exact.wild.example", &exact),
    ] {
        let h = s_client(gw.https, Some(sni), &[]);
        assert_eq!(h.leaf_der(), Some(cert.der.clone()), "{sni}: {}", h.output);
    }
    // `*.wild.example` does not match `wild.example`, and no listener is without a hostname.
    let h = s_client(gw.https, Some("wild.example"), &[]);
    assert!(!h.completed, "wild.example got a handshake: {}", h.output);
}

#[test]
fn rsa_ecdsa_p256_p384_and_ed25519_certificates_are_served_over_tls_1_2_and_1_3() {
    let pki = Pki::new();
    let rsa = pki.self_signed("rsa", KeyType::Rsa2048, &["rsa.example"]);
    let p256 = pki.self_signed("p256", KeyType::EcdsaP256, &["p256.example"]);
    let p384 = pki.self_signed("p384", KeyType::EcdsaP384, &["p384.example"]);
    let ed25519 = pki.self_signed("ed25519", KeyType::Ed25519, &["ed25519.example"]);
    // Keys as tools write them: PKCS#1 (`RSA PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`), PKCS#8.
    let rsa_pkcs1 = pki.traditional_key(&rsa);
    let p256_sec1 = pki.traditional_key(&p256);
    assert!(rsa_pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(p256_sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let secrets = vec![
        (
            "secret-rsa.yaml".to_string(),
            tls_secret(NAMESPACE, "rsa", &rsa.cert_pem, &rsa_pkcs1),
        ),
        (
            "secret-p256.yaml".to_string(),
            tls_secret(NAMESPACE, "p256", &p256.cert_pem, &p256_sec1),
        ),
        secret_file("p384", &p384),
        secret_file("ed25519", &ed25519),
    ];
    let cases = [
        ("rsa", &rsa, "rsa.example"),
        ("p256", &p256, "p256.example"),
        ("p384", &p384, "p384.example"),
        ("ed25519", &ed25519, "ed25519.example"),
    ];
    let listeners: String = cases
        .iter()
        .map(|(name, _, host)| https_listener(name, Some(host), name))
        .collect();
    let gw = Gateway::start(&listeners, secrets);
    for (name, cert, host) in cases {
        gw.wait_for_condition(name, "ResolvedRefs", "True", "ResolvedRefs");
        for version in ["1.2", "1.3"] {
            let tls = format!("--tlsv{version}");
            let r = curl_https(
                gw.https,
                host,
                "/",
                &cert.cert_path,
                &[&tls, "--tls-max", version],
            );
            assert_eq!(r.code, 200, "{name} over TLS {version}: {r:?}");
        }
        for flag in ["-tls1_2", "-tls1_3"] {
            let h = s_client(gw.https, Some(host), &[flag]);
            assert!(h.completed, "{name} {flag}: {}", h.output);
            assert_eq!(h.leaf_der(), Some(cert.der.clone()), "{name} {flag}");
        }
    }
}

/// A gateway with one HTTPS listener, `name`, for `name.example`, whose certificate the
/// returned root signed.
fn one_https_listener(name: &str) -> (Gateway, tls_support::Certificate) {
    one_https_listener_draining_for(name, "1s")
}

/// As [`one_https_listener`], with a drain timeout of `drain_timeout`.
fn one_https_listener_draining_for(
    name: &str,
    drain_timeout: &str,
) -> (Gateway, tls_support::Certificate) {
    let pki = Pki::new();
    let root = pki.ca("root", KeyType::EcdsaP256, None);
    let host = format!("{name}.example");
    let leaf = pki.leaf(name, KeyType::EcdsaP256, &[host.as_str()], &root);
    let gw = Gateway::start_draining_for(
        &https_listener(name, Some(&host), name),
        vec![(
            format!("secret-{name}.yaml"),
            tls_secret(NAMESPACE, name, &leaf.cert_pem, &leaf.key_pem),
        )],
        drain_timeout,
    );
    gw.wait_for_condition(name, "Programmed", "True", "Programmed");
    (gw, root)
}

/// A rustls client connection to `host` trusting only `root`, speaking `version`, offering the
/// ALPN protocol `alpn` (none when empty).
fn client_connection(
    root: &tls_support::Certificate,
    host: &str,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[u8],
) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(root.der.clone()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    rustls::ClientConnection::new(Arc::new(config), name).unwrap()
}

/// A socket that keeps what the server sends, to read the TLS records it came in.
struct Recording {
    tcp: std::net::TcpStream,
    received: Vec<u8>,
}

impl std::io::Read for Recording {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.received.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl std::io::Write for Recording {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// The content types of the TLS records in `bytes`, which hold whole records.
fn record_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        types.push(rest[0]);
        rest = &rest[(5 + len).min(rest.len())..];
    }
    types
}

/// A small response (header and body) is sealed into one TLS record and written at once: a
/// record for the header and another for the body would cost a system call and an encryption
/// more.
#[test]
fn a_small_response_is_one_tls_record() {
    use std::io::Write;
    let (gw, root) = one_https_listener("rec");

    // TLS 1.2, whose records show their content type (1.3 shows every one as application data).
    let conn = client_connection(&root, "rec.example", &rustls::version::TLS12, &[]);
    let tcp = std::net::TcpStream::connect(gw.https).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(
        conn,
        Recording {
            tcp,
            received: Vec::new(),
        },
    );
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    for _ in 0..3 {
        tls.sock.received.clear();
        tls.write_all(b"GET / HTTP/1.1\r\nhost: rec.example\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut tls), Ok(200));
        // 23: application data.
        assert_eq!(
            record_types(&tls.sock.received),
            [23],
            "{:?}",
            tls.sock.received
        );
    }
}

/// The frame types in `bytes`, HTTP/2 frames from their start, with their flags.
fn frame_types(bytes: &[u8]) -> Vec<(u8, u8)> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push((rest[3], rest[4]));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    types
}

/// An HTTP/2 client (by ALPN) whose preface comes in two TLS records owes only the preface
/// within the header deadline (2 s here): the frames after it are not an HTTP/1 header, and
/// the connection is not cut while it is in use.
#[test]
fn an_http2_preface_split_over_records_is_no_header_past_its_deadline() {
    use std::io::{Read, Write};
    let (gw, root) = one_https_listener("split");
    let conn = client_connection(&root, "split.example", &rustls::version::TLS13, b"h2");
    let tcp = std::net::TcpStream::connect(gw.https).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    tls.write_all(&preface[..5]).unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The rest, and an empty SETTINGS frame.
    tls.write_all(&[&preface[5..], &[0, 0, 0, 4, 0, 0, 0, 0, 0][..]].concat())
        .unwrap();
    tls.flush().unwrap();
    // PINGs, each answered with its ACK (type 6, flag 1), the last well past the deadline.
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    for ping in 1..=3 {
        tls.write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, ping])
            .unwrap();
        tls.flush().unwrap();
        let acks = |frames: &[u8]| frame_types(frames).iter().filter(|t| **t == (6, 1)).count();
        let deadline = Instant::now() + Duration::from_secs(5);
        while acks(&frames) < usize::from(ping) && Instant::now() < deadline {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => frames.extend_from_slice(&chunk[..n]),
            }
        }
        assert_eq!(
            acks(&frames),
            usize::from(ping),
            "{:?}",
            frame_types(&frames)
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// An HTTP/2 connection over TLS whose handshake ends after SIGTERM is told to go (GOAWAY) at
/// once, as one made before is, rather than served until the drain times out.
#[test]
fn an_http2_tls_connection_made_during_the_drain_gets_goaway() {
    use std::io::{Read, Write};
    let (gw, root) = one_https_listener("late");
    let conn = client_connection(&root, "late.example", &rustls::version::TLS13, b"h2");
    // Connected (accepted) before SIGTERM; the handshake comes after it.
    let tcp = std::net::TcpStream::connect(gw.https).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    gw.terminate();
    std::thread::sleep(Duration::from_millis(200));
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The preface, then an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    let goaway = |frames: &[u8]| frame_types(frames).iter().any(|(t, _)| *t == 7);
    while !goaway(&frames) {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => frames.extend_from_slice(&chunk[..n]),
        }
    }
    // 7: GOAWAY.
    assert!(goaway(&frames), "frame types {:?}", frame_types(&frames));
}

/// Connections that send part of a ClientHello and stop cost the gateway nothing while they
/// wait (it used to look at each one again every 2 ms), and one that gives up is let go at
/// once rather than at the handshake timeout.
#[test]
fn a_half_sent_client_hello_is_waited_for_without_spinning() {
    let (gw, _) = one_https_listener("half");
    let open = || -> u64 {
        gw.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_downstream_connections_open "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    let before = open();
    // A handshake record header announcing 200 bytes, and nothing more.
    let clients: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            use std::io::Write;
            let mut tcp = std::net::TcpStream::connect(gw.https).unwrap();
            tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8]).unwrap();
            tcp
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(open(), before + 200);
    let ticks = gw.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    // Looking at 200 connections every 2 ms took a tenth of a CPU and more; waiting takes
    // nothing (a tick is 10 ms).
    let spent = gw.cpu_ticks() - ticks;
    assert!(
        spent < 8,
        "{spent} ticks of CPU in 2 s with 200 half-sent hellos"
    );
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(3);
    while open() != before {
        assert!(
            Instant::now() < deadline,
            "{} connections still open",
            open()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Counted as clients that left, not as handshakes that timed out.
    let metrics = gw.metrics();
    assert!(
        metrics.contains("portcullis_tls_handshakes_total{result=\"closed\"} 200"),
        "{metrics}"
    );
}

/// Clients that send their ClientHello and go silent in the middle of the handshake do not
/// hold a stop: their handshakes end at the drain's grace (they used to run to their own 10 s
/// timeout, and the process waited for them).
#[test]
fn a_stalled_tls_handshake_ends_at_the_drains_grace() {
    use std::io::Write;
    // A drain timeout longer than the handshake timeout, as a production one is.
    let (mut gw, root) = one_https_listener_draining_for("stall", "30s");
    let clients: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut conn =
                client_connection(&root, "stall.example", &rustls::version::TLS13, b"http/1.1");
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            let mut tcp = std::net::TcpStream::connect(gw.https).unwrap();
            tcp.write_all(&hello).unwrap();
            tcp
        })
        .collect();
    // The hellos are read and answered; the handshakes wait for the clients' next flight.
    std::thread::sleep(Duration::from_millis(500));
    gw.terminate();
    // The drain's grace is 1 s; the handshake timeout is 10 s.
    assert!(
        gw.exits_within(Duration::from_secs(5)),
        "still running 5 s after SIGTERM with stalled handshakes:\n{}",
        gw.log()
    );
    drop(clients);
}

#[test]
fn intermediate_certificate_is_sent_after_the_leaf() {
    let pki = Pki::new();
    let root = pki.ca("root", KeyType::Rsa2048, None);
    let intermediate = pki.ca("intermediate", KeyType::EcdsaP384, Some(&root));
    let leaf = pki.leaf(
        "chain",
        KeyType::EcdsaP256,
        &["chain.example"],
        &intermediate,
    );
    let chain = format!("{}{}", leaf.cert_pem, intermediate.cert_pem);
    let gw = Gateway::start(
        &https_listener("chain", Some("chain.example"), "chain"),
        vec![(
            "secret-chain.yaml".to_string(),
            tls_secret(NAMESPACE, "chain", &chain, &leaf.key_pem),
        )],
    );
    gw.wait_for_condition("chain", "Programmed", "True", "Programmed");

    // Only the root is trusted: the intermediate has to come from the server.
    let r = curl_https(gw.https, "chain.example", "/", &root.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
    let root_file = root.cert_path.to_str().unwrap();
    let h = s_client(
        gw.https,
        Some("chain.example"),
        &[
            "-showcerts",
            "-CAfile",
            root_file,
            "-verify_hostname",
            "chain.example",
        ],
    );
    assert!(h.completed, "{}", h.output);
    assert_eq!(
        h.chain_pem(),
        vec![leaf.cert_pem.clone(), intermediate.cert_pem.clone()],
        "the server must send the leaf, then the intermediate"
    );
    assert_eq!(
        h.field("Verify return code:").as_deref(),
        Some("0 (ok)"),
        "{}",
        h.output
    );
    let mut conn = RustlsConnection::open(&rustls_client(&[&root]), gw.https, "chain.example")
        .expect("rustls verifies the chain up to the root");
    assert_eq!(conn.get("/", true), Ok(200));
}

#[test]
fn alpn_negotiates_http2_and_falls_back_to_http_1_1() {
    let pki = Pki::new();
    let cert = pki.self_signed("alpn", KeyType::EcdsaP256, &["alpn.example"]);
    let gw = Gateway::start(
        &https_listener("alpn", Some("alpn.example"), "alpn"),
        vec![secret_file("alpn", &cert)],
    );
    gw.wait_for_condition("alpn", "Programmed", "True", "Programmed");

    let r = curl_https(gw.https, "alpn.example", "/", &cert.cert_path, &["--http2"]);
    assert_eq!((r.code, r.http_version.as_str()), (200, "2"), "{r:?}");
    let r = curl_https(
        gw.https,
        "alpn.example",
        "/",
        &cert.cert_path,
        &["--http1.1"],
    );
    assert_eq!((r.code, r.http_version.as_str()), (200, "1.1"), "{r:?}");

    for (offer, chosen) in [
        ("h2", "h2"),
        ("http/1.1", "http/1.1"),
        ("http/1.1,h2", "h2"),
    ] {
        let h = s_client(gw.https, Some("alpn.example"), &["-alpn", offer]);
        assert!(h.completed, "{offer}: {}", h.output);
        assert_eq!(
            h.field("ALPN protocol:").as_deref(),
            Some(chosen),
            "offered {offer}"
        );
    }
    // Without ALPN the handshake still completes (HTTP/1.1 is assumed).
    let h = s_client(gw.https, Some("alpn.example"), &[]);
    assert!(h.completed, "{}", h.output);
    assert!(h.output.contains("No ALPN negotiated"), "{}", h.output);

    // The listener's certificate expiry is a metric to alert on: the test certificates are
    // valid for two days from now.
    let metrics = gw.metrics();
    let expiry: i64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("portcullis_listener_certificate_expiry_timestamp_seconds{")
                && l.contains("listener=\"alpn\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no expiry for listener alpn: {metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let in_two_days = now + 2 * 86_400;
    assert!(
        (in_two_days - 3_600..=in_two_days + 3_600).contains(&expiry),
        "{expiry} vs {now}"
    );
}

/// A TLS listener in Terminate mode hands the decrypted bytes to a TCP backend whose protocol
/// the gateway does not know: it picks no ALPN protocol, whatever the client offers, while an
/// HTTPS listener on the same port still picks `h2`.
#[test]
fn a_tls_terminate_listener_picks_no_alpn_protocol() {
    let pki = Pki::new();
    let web = pki.self_signed("web", KeyType::EcdsaP256, &["web.example"]);
    let tcp = pki.self_signed("tcp", KeyType::EcdsaP256, &["tcp.example"]);
    let listeners = https_listener("web", Some("web.example"), "web")
        + "  - {name: tcp, port: 443, protocol: TLS, hostname: tcp.example, \
           tls: {mode: Terminate, certificateRefs: [{name: tcp}]}, \
           allowedRoutes: {kinds: [{kind: TLSRoute}]}}\n";
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\n\
         metadata: {{name: tcp, namespace: {NAMESPACE}}}\n\
         spec:\n  parentRefs: [{{name: gw, sectionName: tcp}}]\n  hostnames: [tcp.example]\n\
         \x20 rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n"
    );
    let gw = Gateway::start(
        &listeners,
        vec![
            secret_file("web", &web),
            secret_file("tcp", &tcp),
            ("tlsroute.yaml".to_string(), route),
        ],
    );
    gw.wait_for_condition("tcp", "Programmed", "True", "Programmed");

    for offer in ["h2", "http/1.1,h2", "postgresql"] {
        let h = s_client(gw.https, Some("tcp.example"), &["-alpn", offer]);
        assert!(h.completed, "{offer}: {}", h.output);
        assert!(
            h.output.contains("No ALPN negotiated"),
            "{offer}: {}",
            h.output
        );
    }
    // curl offers h2 first; the backend, an HTTP/1.1 server behind the TCP route, answers it.
    let r = curl_https(gw.https, "tcp.example", "/", &tcp.cert_path, &[]);
    assert_eq!((r.code, r.http_version.as_str()), (200, "1.1"), "{r:?}");
    let h = s_client(gw.https, Some("web.example"), &["-alpn", "h2"]);
    assert_eq!(
        h.field("ALPN protocol:").as_deref(),
        Some("h2"),
        "{}",
        h.output
    );
}

/// A certificate past its validity parses, so its reference resolves; it is served as it is,
/// but the gateway warns of it, and its expiry is a metric to alert on before that happens.
#[test]
fn an_expired_certificate_is_warned_of_and_its_expiry_is_a_metric() {
    let pki = Pki::new();
    let old = pki.expired("old", "old.example");
    let gw = Gateway::start(
        &https_listener("old", Some("old.example"), "old"),
        vec![secret_file("old", &old)],
    );
    gw.wait_for_condition("old", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("old.example"), &old);
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains("expired or not yet valid"))
            .count()
    };
    assert_eq!(warned(&gw.log()), 1, "{}", gw.log());
    let metrics = gw.metrics();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("portcullis_listener_certificate_expiry_timestamp_seconds{")
            && l.contains("listener=\"old\"")
            && l.ends_with(" 1609459200")),
        "{metrics}"
    );
}

/// An intermediate sent with the leaf counts as the leaf does: one that expired makes the
/// chain out of date (clients that build their path through it refuse it), warned of and in
/// the expiry metric, though the leaf has years left.
#[test]
fn an_expired_intermediate_is_warned_of_and_its_expiry_is_the_metric() {
    let pki = Pki::new();
    let leaf = pki.self_signed("chain", KeyType::EcdsaP256, &["chain.example"]);
    let old = pki.expired("old-intermediate", "old.example");
    let gw = Gateway::start(
        &https_listener("chain", Some("chain.example"), "chain"),
        vec![(
            "secret-chain.yaml".to_string(),
            tls_secret(
                NAMESPACE,
                "chain",
                &format!("{}{}", leaf.cert_pem, old.cert_pem),
                &leaf.key_pem,
            ),
        )],
    );
    gw.wait_for_condition("chain", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("chain.example"), &leaf);
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("expired or not yet valid")),
        "{log}"
    );
    let metrics = gw.metrics();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("portcullis_listener_certificate_expiry_timestamp_seconds{")
            && l.contains("listener=\"chain\"")
            && l.ends_with(" 1609459200")),
        "{metrics}"
    );
}

/// Secrets with an encrypted key, an X.509 version 1 certificate or a key too small for the
/// gateway are refused with a message that says which, rather than "no items found", a key
/// that does not match, or a parse failure.
#[test]
fn unusable_keys_and_certificates_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    // Encrypted key, and a certificate made with it.
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-aes256",
        "-pass",
        "pass:secret",
        "-out",
        "enc.key",
    ]);
    run(&[
        "req",
        "-x509",
        "-key",
        "enc.key",
        "-passin",
        "pass:secret",
        "-subj",
        "/CN=enc",
        "-days",
        "2",
        "-out",
        "enc.crt",
    ]);
    // Version 1: signed from a request with no extensions.
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-noenc",
        "-keyout",
        "v1.key",
        "-subj",
        "/CN=v1",
        "-out",
        "v1.csr",
    ]);
    run(&[
        "x509", "-req", "-in", "v1.csr", "-key", "v1.key", "-days", "2", "-out", "v1.crt",
    ]);
    // RSA of 1024 bits.
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:1024",
        "-noenc",
        "-keyout",
        "small.key",
        "-subj",
        "/CN=small",
        "-days",
        "2",
        "-out",
        "small.crt",
    ]);
    let mut listeners = String::new();
    let mut files = Vec::new();
    for name in ["enc", "v1", "small"] {
        listeners += &https_listener(name, Some(&format!("{name}.example")), name);
        files.push((
            format!("secret-{name}.yaml"),
            tls_secret(
                NAMESPACE,
                name,
                &read(&format!("{name}.crt")),
                &read(&format!("{name}.key")),
            ),
        ));
    }
    let gw = Gateway::start(&listeners, files);
    for (name, says) in [
        ("enc", "tls.key is encrypted"),
        ("v1", "tls.crt certificate 1 is X.509 version 1"),
        ("small", "use RSA of 2048 bits or more"),
    ] {
        let c = gw.wait_for_condition(name, "ResolvedRefs", "False", "InvalidCertificateRef");
        assert!(c.message.contains(says), "{name}: {}", c.message);
    }
}

/// A route kind an HTTPS listener does not take is said alone: nothing is wrong with its
/// certificates, and the message does not say its "other certificates" are served.
#[test]
fn an_invalid_route_kind_on_an_https_listener_is_no_certificate_problem() {
    let pki = Pki::new();
    let cert = pki.self_signed("kinds", KeyType::EcdsaP256, &["kinds.example"]);
    let listener = "  - {name: kinds, port: 443, protocol: HTTPS, hostname: kinds.example, \
                    allowedRoutes: {kinds: [{kind: TLSRoute}, {kind: HTTPRoute}]}, \
                    tls: {mode: Terminate, certificateRefs: [{name: kinds}]}}\n";
    let gw = Gateway::start(listener, vec![secret_file("kinds", &cert)]);
    let c = gw.wait_for_condition("kinds", "ResolvedRefs", "False", "InvalidRouteKinds");
    assert!(!c.message.contains("certificates"), "{}", c.message);
    gw.wait_until_served(Some("kinds.example"), &cert);
}

#[test]
fn client_without_sni_gets_the_certificate_of_the_listener_without_hostname() {
    let pki = Pki::new();
    let named = pki.self_signed("named", KeyType::Rsa2048, &["named.example"]);
    let fallback = pki.self_signed("fallback", KeyType::Ed25519, &["127.0.0.1"]);
    let listeners = https_listener("named", Some("named.example"), "named")
        + &https_listener("fallback", None, "fallback");
    let gw = Gateway::start(
        &listeners,
        vec![
            secret_file("named", &named),
            secret_file("fallback", &fallback),
        ],
    );
    gw.wait_for_condition("fallback", "Programmed", "True", "Programmed");

    let h = s_client(gw.https, None, &[]);
    assert!(h.completed, "{}", h.output);
    assert_eq!(h.leaf_der(), Some(fallback.der.clone()));
    // curl sends no SNI to an IP address; the certificate names the address.
    let url = format!("https://{}/", gw.https);
    let r = curl(&url, &["--cacert", fallback.cert_path.to_str().unwrap()]);
    assert_eq!(r.code, 200, "{r:?}");
    // Its handshake chose the listener without a hostname: a Host that names the other
    // listener is misdirected there, as it is when the SNI names a third host.
    let cacert = ["--cacert", fallback.cert_path.to_str().unwrap()];
    for sni in [None, Some("other.example")] {
        let mut extra = vec!["-H", "Host: named.example", "-k"];
        let resolve = format!("other.example:{}:127.0.0.1", gw.https.port());
        let url = match sni {
            None => format!("https://{}/", gw.https),
            Some(name) => {
                extra.extend(["--resolve", &resolve]);
                format!("https://{name}:{}/", gw.https.port())
            }
        };
        extra.extend(cacert);
        let r = curl(&url, &extra);
        assert_eq!(r.code, 421, "SNI {sni:?}: {r:?}");
        // A gRPC request is told the same, not given a gRPC status that blames the route.
        extra.extend(["-H", "content-type: application/grpc"]);
        let r = curl(&url, &extra);
        assert_eq!(r.code, 421, "gRPC, SNI {sni:?}: {r:?}");
    }
    // A name that no listener has also lands on the listener without a hostname.
    let h = s_client(gw.https, Some("other.example"), &[]);
    assert_eq!(h.leaf_der(), Some(fallback.der.clone()), "{}", h.output);
    // The named listener keeps its own certificate.
    let h = s_client(gw.https, Some("named.example"), &[]);
    assert_eq!(h.leaf_der(), Some(named.der.clone()), "{}", h.output);
}

#[test]
fn client_without_sni_is_refused_when_every_listener_has_a_hostname() {
    let pki = Pki::new();
    let named = pki.self_signed("named", KeyType::EcdsaP256, &["named.example"]);
    let gw = Gateway::start(
        &https_listener("named", Some("named.example"), "named"),
        vec![secret_file("named", &named)],
    );
    gw.wait_for_condition("named", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("named.example"), &named);

    let h = s_client(gw.https, None, &[]);
    assert!(
        !h.completed,
        "a client without SNI got a handshake: {}",
        h.output
    );
    assert!(h.leaf_der().is_none(), "{}", h.output);
    // Each is told why by a TLS alert, not left with a reset connection.
    assert!(h.output.contains("handshake failure"), "{}", h.output);
    let h = s_client(gw.https, Some("unknown.example"), &[]);
    assert!(!h.completed, "an unknown SNI got a handshake: {}", h.output);
    assert!(h.output.contains("unrecognized name"), "{}", h.output);
    let url = format!("https://{}/", gw.https);
    let r = curl(&url, &["-k"]);
    assert!(!r.exit_ok && r.code == 0, "{r:?}");
}

#[test]
fn tls_1_0_and_1_1_are_refused_while_1_2_and_1_3_are_served() {
    let pki = Pki::new();
    let cert = pki.self_signed("versions", KeyType::Rsa2048, &["versions.example"]);
    let gw = Gateway::start(
        &https_listener("versions", Some("versions.example"), "versions"),
        vec![secret_file("versions", &cert)],
    );
    gw.wait_for_condition("versions", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("versions.example"), &cert);

    for flag in ["-tls1", "-tls1_1"] {
        // Security level 0 lets this client build an old ClientHello at all; -msg shows that
        // it was sent and that the server answered with an alert, so the refusal is the
        // server's, not the client's.
        let h = s_client(
            gw.https,
            Some("versions.example"),
            &[flag, "-cipher", "DEFAULT@SECLEVEL=0", "-msg"],
        );
        assert!(!h.completed, "{flag} was accepted: {}", h.output);
        assert!(
            h.output.contains(">>> ") && h.output.contains("ClientHello"),
            "{flag}: the client did not send a ClientHello: {}",
            h.output
        );
        assert!(
            h.output.contains("<<< ") && h.output.contains("Alert"),
            "{flag}: no alert from the server: {}",
            h.output
        );
        assert!(!h.output.contains("ServerHello"), "{}", h.output);
    }
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let h = s_client(gw.https, Some("versions.example"), &[flag]);
        assert!(h.completed, "{flag}: {}", h.output);
        assert_eq!(h.protocol().as_deref(), Some(name), "{}", h.output);
    }
    let r = curl_https(
        gw.https,
        "versions.example",
        "/",
        &cert.cert_path,
        &[
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            "--ciphers",
            "DEFAULT@SECLEVEL=0",
        ],
    );
    assert!(
        !r.exit_ok && r.code == 0,
        "curl over TLS 1.1 got an answer: {r:?}"
    );
}

#[test]
fn plain_http_on_a_tls_port_gets_400_this_port_expects_tls() {
    let pki = Pki::new();
    let cert = pki.self_signed("plain", KeyType::EcdsaP256, &["plain.example"]);
    let gw = Gateway::start(
        &https_listener("plain", None, "plain"),
        vec![secret_file("plain", &cert)],
    );
    gw.wait_for_condition("plain", "Programmed", "True", "Programmed");
    gw.wait_until_served(None, &cert);

    let url = format!("http://{}/some/path", gw.https);
    let r = curl(&url, &["-H", "host: plain.example"]);
    assert_eq!(r.code, 400, "{r:?}");
    assert!(r.body.contains("This port expects TLS"), "{r:?}");
    // The socket still serves TLS afterwards.
    let h = s_client(gw.https, None, &[]);
    assert!(h.completed, "{}", h.output);
}

#[test]
fn unusable_certificate_secrets_are_invalid_certificate_refs_and_other_listeners_keep_serving() {
    let pki = Pki::new();
    let good = pki.self_signed("good", KeyType::Rsa2048, &["good.example"]);
    let fixed = pki.self_signed("later", KeyType::EcdsaP256, &["opaque.example"]);
    let p521 = pki.self_signed("p521", KeyType::EcdsaP521, &["p521.example"]);
    let bad: Vec<(&str, String)> = vec![
        (
            "opaque",
            secret(
                NAMESPACE,
                "opaque",
                "Opaque",
                &[
                    ("tls.crt", fixed.cert_pem.as_bytes()),
                    ("tls.key", fixed.key_pem.as_bytes()),
                ],
            ),
        ),
        (
            "no-key",
            secret(
                NAMESPACE,
                "no-key",
                "kubernetes.io/tls",
                &[("tls.crt", good.cert_pem.as_bytes())],
            ),
        ),
        (
            "not-pem",
            tls_secret(NAMESPACE, "not-pem", "hello", &good.key_pem),
        ),
        (
            "p521",
            tls_secret(NAMESPACE, "p521", &p521.cert_pem, &p521.key_pem),
        ),
    ];
    let mut listeners = https_listener("good", Some("good.example"), "good");
    for (name, _) in &bad {
        listeners += &https_listener(name, Some(&format!("{name}.example")), name);
    }
    // A reference to a Secret that does not exist.
    listeners += &https_listener("missing", Some("missing.example"), "missing");
    let mut files_ = vec![secret_file("good", &good)];
    for (name, text) in &bad {
        files_.push((format!("secret-{name}.yaml"), text.clone()));
    }
    let gw = Gateway::start(&listeners, files_);

    gw.wait_for_condition("good", "ResolvedRefs", "True", "ResolvedRefs");
    gw.wait_for_condition("good", "Programmed", "True", "Programmed");
    for name in ["opaque", "no-key", "not-pem", "p521", "missing"] {
        let c = gw.wait_for_condition(name, "ResolvedRefs", "False", "InvalidCertificateRef");
        assert!(
            c.message.contains(name),
            "{name}: the message should name the Secret: {c:?}"
        );
        let h = s_client(gw.https, Some(&format!("{name}.example")), &[]);
        assert!(
            !h.completed,
            "{name}: served without a certificate: {}",
            h.output
        );
    }
    let r = curl_https(gw.https, "good.example", "/", &good.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");

    // Fixing a Secret is picked up without a restart.
    gw.write(
        "secret-opaque.yaml",
        &tls_secret(NAMESPACE, "opaque", &fixed.cert_pem, &fixed.key_pem),
    );
    gw.wait_for_condition("opaque", "ResolvedRefs", "True", "ResolvedRefs");
    gw.wait_until_served(Some("opaque.example"), &fixed);
    let r = curl_https(gw.https, "opaque.example", "/", &fixed.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
    let r = curl_https(gw.https, "good.example", "/", &good.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
}

/// Starts a gateway with one listener whose Secret holds `cert_pem` and `key_pem`, and checks
/// that the listener reports InvalidCertificateRef instead of serving handshakes that fail.
fn assert_secret_is_rejected(cert_pem: &str, key_pem: &str) {
    let pki = Pki::new();
    let good = pki.self_signed("good", KeyType::EcdsaP256, &["good.example"]);
    let listeners = https_listener("good", Some("good.example"), "good")
        + &https_listener("bad", Some("bad.example"), "bad");
    let gw = Gateway::start(
        &listeners,
        vec![
            secret_file("good", &good),
            (
                "secret-bad.yaml".to_string(),
                tls_secret(NAMESPACE, "bad", cert_pem, key_pem),
            ),
        ],
    );
    gw.wait_for_condition("good", "Programmed", "True", "Programmed");
    let r = curl_https(gw.https, "good.example", "/", &good.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
    let seen = gw.condition("bad", "ResolvedRefs");
    assert!(
        seen.as_ref()
            .is_some_and(|c| c.status == "False" && c.reason == "InvalidCertificateRef"),
        "the listener should be ResolvedRefs=False/InvalidCertificateRef, is {seen:?}"
    );
    let h = s_client(gw.https, Some("bad.example"), &[]);
    assert!(!h.completed, "bad.example got a handshake: {}", h.output);
}

#[test]
fn certificate_with_a_key_that_does_not_match_is_an_invalid_certificate_ref() {
    let pki = Pki::new();
    let cert = pki.self_signed("cert", KeyType::Rsa2048, &["bad.example"]);
    let other = pki.self_signed("other", KeyType::Rsa2048, &["bad.example"]);
    assert_secret_is_rejected(&cert.cert_pem, &other.key_pem);
}

#[test]
fn certificate_block_that_is_not_x509_is_an_invalid_certificate_ref() {
    let pki = Pki::new();
    let key = pki.self_signed("key", KeyType::EcdsaP256, &["bad.example"]);
    let not_x509 =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    assert_secret_is_rejected(not_x509, &key.key_pem);
}

#[test]
fn cross_namespace_certificate_ref_needs_a_reference_grant() {
    let pki = Pki::new();
    let local = pki.self_signed("local", KeyType::EcdsaP256, &["local.example"]);
    let shared = pki.self_signed("shared", KeyType::Rsa2048, &["shared.example"]);
    let listeners = https_listener("local", Some("local.example"), "local")
        + &https_listener_ref("shared", Some("shared.example"), "shared", Some("certs"));
    let grant = |to_name: Option<&str>| {
        let name = to_name.map_or(String::new(), |n| format!(", name: {n}"));
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
             metadata: {{name: gateways-use-certs, namespace: certs}}\n\
             spec:\n  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {NAMESPACE}}}]\n  \
             to: [{{group: \"\", kind: Secret{name}}}]\n"
        )
    };
    let gw = Gateway::start(
        &listeners,
        vec![
            secret_file("local", &local),
            (
                "secret-shared.yaml".to_string(),
                tls_secret("certs", "shared", &shared.cert_pem, &shared.key_pem),
            ),
        ],
    );

    // No ReferenceGrant: not permitted, not served; the other listener serves.
    gw.wait_for_condition("shared", "ResolvedRefs", "False", "RefNotPermitted");
    gw.wait_until_served(Some("local.example"), &local);
    let h = s_client(gw.https, Some("shared.example"), &[]);
    assert!(!h.completed, "served without a grant: {}", h.output);

    // A grant for another Secret of that namespace does not cover this one.
    gw.write("grant.yaml", &grant(Some("other")));
    std::thread::sleep(Duration::from_millis(750));
    gw.wait_for_condition("shared", "ResolvedRefs", "False", "RefNotPermitted");
    let h = s_client(gw.https, Some("shared.example"), &[]);
    assert!(
        !h.completed,
        "served with a grant for another Secret: {}",
        h.output
    );

    // A grant for the Secret: resolved and served.
    gw.write("grant.yaml", &grant(Some("shared")));
    gw.wait_for_condition("shared", "ResolvedRefs", "True", "ResolvedRefs");
    gw.wait_until_served(Some("shared.example"), &shared);
    let r = curl_https(gw.https, "shared.example", "/", &shared.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");

    // Withdrawing the grant withdraws the certificate from the next handshake on.
    gw.remove("grant.yaml");
    gw.wait_for_condition("shared", "ResolvedRefs", "False", "RefNotPermitted");
    tls_support::eventually("shared.example is refused again", || {
        (!s_client(gw.https, Some("shared.example"), &[]).completed).then_some(())
    });
    let r = curl_https(gw.https, "local.example", "/", &local.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
}

/// What one load worker saw: per request, the generation of the certificate served (its index
/// in the rotation), or the error.
type Outcomes = Vec<Result<usize, String>>;

#[test]
fn a_secret_that_turns_bad_leaves_its_last_certificate_served() {
    const HOST: &str = "keep.example";
    let pki = Pki::new();
    let ca = pki.ca("keep-ca", KeyType::EcdsaP256, None);
    let good = pki.leaf("keep-good", KeyType::EcdsaP256, &[HOST], &ca);
    let other = pki.leaf("keep-other", KeyType::EcdsaP256, &[HOST], &ca);
    let gw = Gateway::start(
        &https_listener("keep", Some(HOST), "keep"),
        vec![(
            "secret-keep.yaml".to_string(),
            tls_secret(NAMESPACE, "keep", &good.cert_pem, &good.key_pem),
        )],
    );
    gw.wait_for_condition("keep", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some(HOST), &good);

    // The certificate with another certificate's key: well-formed, but not a usable pair.
    gw.write(
        "secret-keep.yaml",
        &tls_secret(NAMESPACE, "keep", &good.cert_pem, &other.key_pem),
    );
    let resolved = gw.wait_for_condition("keep", "ResolvedRefs", "False", "InvalidCertificateRef");
    assert!(
        resolved
            .message
            .contains("the last valid certificate it held is served"),
        "{}",
        resolved.message
    );
    let programmed = gw.condition("keep", "Programmed").unwrap();
    assert_eq!(programmed.status, "True", "{programmed:?}");
    let client = rustls_client(&[&ca]);
    let mut conn = RustlsConnection::open(&client, gw.https, HOST).expect("handshake");
    assert_eq!(conn.leaf_der(), good.der);
    assert_eq!(conn.get("/", true), Ok(200));

    // Fixed, with a new certificate: that one is served and the condition clears.
    gw.write(
        "secret-keep.yaml",
        &tls_secret(NAMESPACE, "keep", &other.cert_pem, &other.key_pem),
    );
    gw.wait_for_condition("keep", "ResolvedRefs", "True", "ResolvedRefs");
    gw.wait_until_served(Some(HOST), &other);
}

/// Every certificateRef keeps its last certificate when its Secret turns bad, not only the
/// first: on a wildcard listener with one certificate per name, breaking the second Secret
/// leaves its name served its own certificate, not the first one's (a name mismatch).
#[test]
fn a_second_secret_that_turns_bad_leaves_its_last_certificate_served() {
    let pki = Pki::new();
    let ca = pki.ca("pair-ca", KeyType::EcdsaP256, None);
    let a = pki.leaf("pair-a", KeyType::EcdsaP256, &["a.pair.example"], &ca);
    let b = pki.leaf("pair-b", KeyType::EcdsaP256, &["b.pair.example"], &ca);
    let listener = "  - {name: pair, port: 443, protocol: HTTPS, hostname: \"*.pair.example\", \
                    tls: {mode: Terminate, certificateRefs: [{name: pair-a}, {name: pair-b}]}}\n";
    let gw = Gateway::start(
        listener,
        vec![
            (
                "secret-a.yaml".to_string(),
                tls_secret(NAMESPACE, "pair-a", &a.cert_pem, &a.key_pem),
            ),
            (
                "secret-b.yaml".to_string(),
                tls_secret(NAMESPACE, "pair-b", &b.cert_pem, &b.key_pem),
            ),
        ],
    );
    gw.wait_for_condition("pair", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("b.pair.example"), &b);

    gw.write(
        "secret-b.yaml",
        &tls_secret(NAMESPACE, "pair-b", &b.cert_pem, &a.key_pem),
    );
    gw.wait_for_condition("pair", "ResolvedRefs", "False", "InvalidCertificateRef");
    let client = rustls_client(&[&ca]);
    for (host, cert) in [("b.pair.example", &b), ("a.pair.example", &a)] {
        let mut conn = RustlsConnection::open(&client, gw.https, host).expect("handshake");
        assert_eq!(conn.leaf_der(), cert.der, "{host}");
        assert_eq!(conn.get("/", true), Ok(200), "{host}");
    }
}

/// The listener's condition names the first problem in the order written: a later Secret
/// that turns bad, and is stood in for, does not hide an earlier reference's missing
/// ReferenceGrant.
#[test]
fn a_stand_in_for_a_later_secret_leaves_an_earlier_problem_said() {
    let pki = Pki::new();
    let a = pki.self_signed("first-a", KeyType::EcdsaP256, &["a.first.example"]);
    let b = pki.self_signed("first-b", KeyType::EcdsaP256, &["b.first.example"]);
    let listener = "  - {name: first, port: 443, protocol: HTTPS, hostname: \"*.first.example\", \
                    tls: {mode: Terminate, certificateRefs: [{name: elsewhere, namespace: other}, \
                    {name: first-a}, {name: first-b}]}}\n";
    let gw = Gateway::start(
        listener,
        vec![
            (
                "secret-a.yaml".to_string(),
                tls_secret(NAMESPACE, "first-a", &a.cert_pem, &a.key_pem),
            ),
            (
                "secret-b.yaml".to_string(),
                tls_secret(NAMESPACE, "first-b", &b.cert_pem, &b.key_pem),
            ),
        ],
    );
    gw.wait_for_condition("first", "ResolvedRefs", "False", "RefNotPermitted");
    gw.wait_until_served(Some("b.first.example"), &b);
    let generation = || {
        let metrics = gw.metrics();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_config_generation "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("a config generation")
    };
    let before = generation();
    gw.write(
        "secret-b.yaml",
        &tls_secret(NAMESPACE, "first-b", &b.cert_pem, &a.key_pem),
    );
    // Once the bad Secret is read (its stand-in served), the condition is still the grant's.
    tls_support::eventually("the bad Secret is read", || {
        (generation() > before).then_some(())
    });
    let resolved = gw.condition("first", "ResolvedRefs").unwrap();
    assert_eq!(resolved.reason, "RefNotPermitted", "{resolved:?}");
    gw.wait_until_served(Some("b.first.example"), &b);
}

#[test]
fn rotated_certificate_is_served_from_the_next_handshake_without_failed_requests() {
    const HOST: &str = "rotate.example";
    let pki = Pki::new();
    let ca = pki.ca("rotation-ca", KeyType::EcdsaP256, None);
    // Each generation has a new key, and the key type changes too.
    let generations = Arc::new(vec![
        pki.leaf("gen0", KeyType::Rsa2048, &[HOST], &ca),
        pki.leaf("gen1", KeyType::EcdsaP256, &[HOST], &ca),
        pki.leaf("gen2", KeyType::Rsa2048, &[HOST], &ca),
        pki.leaf("gen3", KeyType::EcdsaP384, &[HOST], &ca),
    ]);
    let secret_of = |g: usize| {
        let cert = &generations[g];
        tls_secret(NAMESPACE, "rotate", &cert.cert_pem, &cert.key_pem)
    };
    let gw = Gateway::start(
        &https_listener("rotate", Some(HOST), "rotate"),
        vec![("secret-rotate.yaml".to_string(), secret_of(0))],
    );
    gw.wait_for_condition("rotate", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some(HOST), &generations[0]);
    let client = rustls_client(&[&ca]);
    let generation_of = {
        let generations = generations.clone();
        move |der: &[u8]| generations.iter().position(|c| c.der == der)
    };

    // A keep-alive connection opened before the rotation, used again after it.
    let mut kept = RustlsConnection::open(&client, gw.https, HOST).expect("connect before");
    assert_eq!(kept.get("/", false), Ok(200));

    // Load: two workers, each a loop of requests on new connections, until `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, client, generation_of) =
                (stop.clone(), client.clone(), generation_of.clone());
            let addr = gw.https;
            std::thread::spawn(move || {
                let mut seen: Outcomes = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let outcome = RustlsConnection::open(&client, addr, HOST).and_then(|mut c| {
                        let generation = generation_of(&c.leaf_der())
                            .ok_or_else(|| "an unknown certificate".to_string())?;
                        match c.get("/", true)? {
                            200 => Ok(generation),
                            code => Err(format!("status {code}")),
                        }
                    });
                    seen.push(outcome);
                }
                seen
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(800));
    let mut slowest = Duration::ZERO;
    for generation in 1..generations.len() {
        let written = Instant::now();
        gw.write("secret-rotate.yaml", &secret_of(generation));
        // The next handshakes must present the new certificate within a few polls.
        loop {
            let conn = RustlsConnection::open(&client, gw.https, HOST).expect("probe handshake");
            if generation_of(&conn.leaf_der()) == Some(generation) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "generation {generation} was not served 5 s after the Secret changed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        slowest = slowest.max(written.elapsed());
        std::thread::sleep(Duration::from_millis(700));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let per_worker: Vec<Outcomes> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let total: usize = per_worker.iter().map(Vec::len).sum();
    let failures: Vec<&String> = per_worker
        .iter()
        .flatten()
        .filter_map(|o| o.as_ref().err())
        .collect();
    eprintln!(
        "rotation: {total} requests on new connections, {} failed, slowest change-to-served \
         {slowest:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during rotation, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total >= 40, "the load barely ran: {total} requests");
    let last = generations.len() - 1;
    for (i, seen) in per_worker.iter().enumerate() {
        let served: Vec<usize> = seen
            .iter()
            .filter_map(|o| o.as_ref().ok().copied())
            .collect();
        // Each worker's handshakes follow the Secret: never back to an older certificate.
        assert!(
            served.windows(2).all(|w| w[0] <= w[1]),
            "worker {i} saw an older certificate after a newer one: {served:?}"
        );
        assert_eq!(
            served.last(),
            Some(&last),
            "worker {i} never saw the last certificate"
        );
    }

    // The connection opened before the rotation keeps its session and serves requests.
    assert_eq!(kept.leaf_der(), generations[0].der);
    assert_eq!(kept.get("/", true), Ok(200));

    // Afterwards the new certificate, by serial and fingerprint.
    let h = s_client(gw.https, Some(HOST), &[]);
    let served = h.chain_pem().into_iter().next().expect("a certificate");
    let (serial, fingerprint) = serial_and_fingerprint(&served);
    assert_eq!(serial, generations[last].serial);
    assert_eq!(fingerprint, generations[last].fingerprint);
    assert_ne!(fingerprint, generations[0].fingerprint);
    let r = curl_https(gw.https, HOST, "/", &ca.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
}

/// A listener port switching from TLS to cleartext is reopened at once: the old socket is
/// closed before the new one is bound, so the new one never waits for the bind retry (and its
/// listener is never reported as pending in between).
#[test]
fn a_port_switching_between_tls_and_cleartext_is_reopened_without_a_pending_bind() {
    let pki = Pki::new();
    let cert = pki.self_signed("web", KeyType::EcdsaP256, &["web.example"]);
    let gw = Gateway::start(
        &https_listener("web", None, "web"),
        vec![secret_file("web", &cert)],
    );
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    gw.write(
        "gateway.yaml",
        &common::manifests::gateway(
            NAMESPACE,
            "gw",
            "  - {name: web, port: 443, protocol: HTTP}\n",
        ),
    );
    let url = format!("http://{}/", gw.https);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if curl(&url, &[]).code == 200 {
            break;
        }
        let programmed = gw.condition("web", "Programmed");
        assert!(
            programmed.as_ref().is_none_or(|c| c.reason != "Pending"),
            "the cleartext socket waited for a bind retry: {programmed:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the port never served cleartext HTTP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A keep-alive connection made in cleartext is not served by the HTTPS listener that takes
/// its port over: its next request is sent to connect afresh (421) and the connection closes,
/// rather than the HTTPS listener's routes being served to it without TLS.
#[test]
fn a_cleartext_connection_is_not_served_once_its_port_is_https() {
    use std::io::Write as _;
    let pki = Pki::new();
    let cert = pki.self_signed("web", KeyType::EcdsaP256, &["web.example"]);
    let gw = Gateway::start(
        "  - {name: web, port: 443, protocol: HTTP}\n",
        vec![secret_file("web", &cert)],
    );
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    let mut plain = std::net::TcpStream::connect(gw.https).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: web.example\r\n\r\n";
    plain.write_all(request).unwrap();
    assert_eq!(read_response(&mut plain), Ok(200));

    gw.write(
        "gateway.yaml",
        &common::manifests::gateway(NAMESPACE, "gw", &https_listener("web", None, "web")),
    );
    gw.wait_until_served(Some("web.example"), &cert);
    let next = plain
        .write_all(request)
        .map_err(|e| e.to_string())
        .and_then(|()| read_response(&mut plain));
    assert!(
        matches!(next, Err(_) | Ok(421)),
        "{next:?} on a cleartext connection to a port now served over TLS"
    );
    if next.is_ok() {
        let mut rest = Vec::new();
        let closed = std::io::Read::read_to_end(&mut plain, &mut rest);
        assert!(
            closed.as_ref().is_ok_and(|_| rest.is_empty()),
            "{closed:?} {rest:?}"
        );
    }
}

/// A TLS connection made to an HTTPS listener is not served once its port passes TLS through
/// instead: its next request is sent to connect afresh (421), or finds the connection closed.
#[test]
fn a_terminated_connection_is_not_served_once_its_port_passes_tls_through() {
    let pki = Pki::new();
    let ca = pki.ca("pass-ca", KeyType::EcdsaP256, None);
    let cert = pki.leaf("pass", KeyType::EcdsaP256, &["pass.example"], &ca);
    let gw = Gateway::start(
        &https_listener("web", Some("pass.example"), "web"),
        vec![secret_file("web", &cert)],
    );
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("pass.example"), &cert);
    let config = rustls_client(&[&ca]);
    let mut open = RustlsConnection::open(&config, gw.https, "pass.example").unwrap();
    assert_eq!(open.get("/", false), Ok(200));

    gw.write(
        "gateway.yaml",
        &common::manifests::gateway(
            NAMESPACE,
            "gw",
            "  - {name: web, port: 443, protocol: TLS, tls: {mode: Passthrough}}\n",
        ),
    );
    gw.wait_for_condition("web", "ResolvedRefs", "True", "ResolvedRefs");
    tls_support::eventually("the port passes TLS through", || {
        RustlsConnection::open(&config, gw.https, "pass.example")
            .is_err()
            .then_some(())
    });
    let next = open.get("/", false);
    assert!(
        matches!(next, Err(_) | Ok(421)),
        "{next:?} on a terminated connection to a port that now passes TLS through"
    );
}

/// Secret data written as `base64` prints it, wrapped at 76 columns in a block scalar, is read
/// as the API server reads it: the line breaks are skipped.
#[test]
fn secret_data_wrapped_over_lines_is_read() {
    use base64::Engine as _;
    let pki = Pki::new();
    let cert = pki.self_signed("web", KeyType::EcdsaP256, &["web.example"]);
    let wrapped = |pem: &str| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(pem);
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!("|\n    {}\n", lines.join("\n    "))
    };
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: web, namespace: {NAMESPACE}}}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}  tls.key: {}",
        wrapped(&cert.cert_pem),
        wrapped(&cert.key_pem)
    );
    let gw = Gateway::start(
        &https_listener("web", Some("web.example"), "web"),
        vec![("secret-web.yaml".to_string(), secret)],
    );
    gw.wait_for_condition("web", "ResolvedRefs", "True", "ResolvedRefs");
    gw.wait_until_served(Some("web.example"), &cert);
}

/// A listener with several certificateRefs serves each client the one that names its SNI and
/// that it can verify: an RSA and an ECDSA certificate for one name, chosen by the signature
/// schemes the client offers, and a certificate per name on a wildcard listener.
#[test]
fn a_listener_with_several_certificates_serves_each_client_one_it_can_use() {
    let pki = Pki::new();
    let rsa = pki.self_signed("rsa", KeyType::Rsa2048, &["web.example"]);
    let ecdsa = pki.self_signed("ecdsa", KeyType::EcdsaP256, &["web.example"]);
    let other = pki.self_signed("other", KeyType::EcdsaP256, &["other.example"]);
    let listener = "  - {name: web, port: 443, protocol: HTTPS, tls: {mode: Terminate, \
                    certificateRefs: [{name: rsa}, {name: ecdsa}, {name: other}]}}\n";
    let gw = Gateway::start(
        listener,
        vec![
            secret_file("rsa", &rsa),
            secret_file("ecdsa", &ecdsa),
            secret_file("other", &other),
        ],
    );
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    let served = |sni: &str, extra: &[&str]| {
        let h = s_client(gw.https, Some(sni), extra);
        assert!(h.completed, "{sni} {extra:?}: {}", h.output);
        h.leaf_der()
    };
    // Offering either, the first certificateRef that names the host.
    assert_eq!(served("web.example", &[]), Some(rsa.der.clone()));
    // A client that verifies only ECDSA signatures gets the ECDSA certificate; one that
    // verifies only RSA ones gets the RSA certificate.
    for version in ["-tls1_2", "-tls1_3"] {
        assert_eq!(
            served("web.example", &[version, "-sigalgs", "ECDSA+SHA256"]),
            Some(ecdsa.der.clone()),
            "{version}"
        );
        assert_eq!(
            served("web.example", &[version, "-sigalgs", "RSA-PSS+SHA256"]),
            Some(rsa.der.clone()),
            "{version}"
        );
    }
    // Another name: the certificate that names it, though it is not the first.
    assert_eq!(served("other.example", &[]), Some(other.der.clone()));
    // A name none covers: the first, as with one certificateRef.
    assert_eq!(served("none.example", &[]), Some(rsa.der.clone()));

    // One Secret goes bad (a certificate with another's key): the listener goes on serving
    // the others and the last valid certificate of the broken one (a client that verifies
    // only ECDSA still has one to verify), and says which one is broken.
    gw.write(
        "secret-ecdsa.yaml",
        &tls_secret(NAMESPACE, "ecdsa", &ecdsa.cert_pem, &rsa.key_pem),
    );
    let resolved = gw.wait_for_condition("web", "ResolvedRefs", "False", "InvalidCertificateRef");
    assert!(
        resolved.message.contains("ecdsa")
            && resolved
                .message
                .contains("the last valid certificate it held is served"),
        "{}",
        resolved.message
    );
    let programmed = gw.condition("web", "Programmed").unwrap();
    assert_eq!(programmed.status, "True", "{programmed:?}");
    assert_eq!(served("web.example", &[]), Some(rsa.der.clone()));
    assert_eq!(
        served("web.example", &["-tls1_3", "-sigalgs", "ECDSA+SHA256"]),
        Some(ecdsa.der.clone())
    );
    assert_eq!(served("other.example", &[]), Some(other.der.clone()));

    // The Secret fixed, and the first one deleted: the listener serves the others, and says
    // which one is gone.
    gw.write("secret-ecdsa.yaml", &secret_file("ecdsa", &ecdsa).1);
    gw.wait_for_condition("web", "ResolvedRefs", "True", "ResolvedRefs");
    gw.remove("secret-rsa.yaml");
    let resolved = gw.wait_for_condition("web", "ResolvedRefs", "False", "InvalidCertificateRef");
    assert!(
        resolved.message.contains("rsa does not exist")
            && resolved.message.contains("other certificates"),
        "{}",
        resolved.message
    );
    let programmed = gw.condition("web", "Programmed").unwrap();
    assert_eq!(programmed.status, "True", "{programmed:?}");
    assert_eq!(served("web.example", &[]), Some(ecdsa.der.clone()));
    assert_eq!(served("other.example", &[]), Some(other.der.clone()));
}

/// A client certificate for TLS backends (`spec.tls.backend.clientCertificateRef`) whose key
/// does not belong to it is an invalid reference, as a listener's would be: presented, it would
/// fail every new connection to every TLS backend.
#[test]
fn a_backend_client_certificate_with_a_key_that_does_not_match_is_refused() {
    tls_support::require_tools();
    let pki = Pki::new();
    let cert = pki.self_signed("client", KeyType::EcdsaP256, &["client.example"]);
    let other = pki.self_signed("other", KeyType::EcdsaP256, &["client.example"]);
    let dir = tempfile::tempdir().unwrap();
    let gateway = common::manifests::gateway(
        NAMESPACE,
        "gw",
        "  - {name: web, port: 80, protocol: HTTP}\n",
    )
    .replace(
        "  listeners:\n",
        "  tls: {backend: {clientCertificateRef: {name: client}}}\n  listeners:\n",
    );
    assert!(gateway.contains("clientCertificateRef"), "{gateway}");
    std::fs::write(
        dir.path().join("all.yaml"),
        [
            common::manifests::gateway_class(),
            gateway,
            "---\n".to_string(),
            tls_secret(NAMESPACE, "client", &cert.cert_pem, &other.key_pem),
        ]
        .concat(),
    )
    .unwrap();
    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    check.args(["check", "--json"]).arg(dir.path());
    let out = tls_support::run(check, b"", Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("InvalidClientCertificateRef"), "{text}");
    assert!(
        text.contains("tls.key does not belong to the certificate in tls.crt"),
        "{text}"
    );
}

/// A TLS backend for `cert` on a port of 127.0.0.1 it returns: it keeps the header of every
/// request it reads and answers each `200 ok`, keeping the connection open for more. A client
/// that does not speak TLS to it fails the handshake and leaves nothing kept.
fn serve_tls_keeping_heads(
    cert: &tls_support::Certificate,
) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = kept.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let (config, keep) = (config.clone(), keep.clone());
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head: Vec<u8> = pending.drain(..end + 4).collect();
                    keep.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).to_ascii_lowercase());
                    if tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .and_then(|()| tls.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, kept)
}

/// A BackendTLSPolicy and the ConfigMap of its CA, `ca`, for Service `service`, verifying the
/// name `hostname`.
fn backend_tls_policy(service: &str, ca: &tls_support::Certificate, hostname: &str) -> String {
    let pem = serde_json::to_string(&ca.cert_pem).unwrap();
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {service}-ca, namespace: {NAMESPACE}}}\n\
         data:\n  ca.crt: {pem}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\n\
         metadata: {{name: {service}-tls, namespace: {NAMESPACE}}}\n\
         spec:\n  targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n  \
         validation:\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: {service}-ca}}]\n    \
         hostname: {hostname}\n"
    )
}

/// Two Services on the same TLS endpoint, under policies that trust different CAs: a connection
/// opened (and verified) for the one is never reused for the other, whose CA does not vouch for
/// the backend's certificate.
#[test]
fn a_backend_connection_verified_against_one_ca_is_not_reused_under_another() {
    let pki = Pki::new();
    let front = pki.self_signed("front", KeyType::EcdsaP256, &["app.example"]);
    let ca = pki.ca("backend-ca", KeyType::EcdsaP256, None);
    let other_ca = pki.ca("other-ca", KeyType::EcdsaP256, None);
    let leaf = pki.leaf("backend", KeyType::EcdsaP256, &["backend.internal"], &ca);
    let (port, heads) = serve_tls_keeping_heads(&leaf);
    let route = |name: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [app.example]\n  rules:\n  \
             - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]\n    \
             backendRefs: [{{name: {name}, port: 80}}]\n"
        )
    };
    let manifests = [
        route("trusted"),
        common::manifests::backend(NAMESPACE, "trusted", port),
        backend_tls_policy("trusted", &ca, "backend.internal"),
        route("untrusted"),
        common::manifests::backend(NAMESPACE, "untrusted", port),
        backend_tls_policy("untrusted", &other_ca, "backend.internal"),
    ]
    .concat();
    let gw = Gateway::start(
        &https_listener("web", None, "front"),
        vec![
            secret_file("front", &front),
            ("backends.yaml".to_string(), manifests),
        ],
    );
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    let get = |path: &str| curl_https(gw.https, "app.example", path, &front.cert_path, &[]);
    let r = get("/trusted/1");
    assert_eq!((r.code, r.body.as_str()), (200, "ok"), "{r:?}");
    // The connection just verified for `trusted` is idle in the pool: `untrusted` may not
    // take it, and a connection of its own fails verification.
    for _ in 0..3 {
        let r = get("/untrusted/1");
        assert_eq!(r.code, 502, "{r:?}");
    }
    assert_eq!(get("/trusted/2").code, 200);
    let seen = heads.lock().unwrap().clone();
    assert!(
        seen.iter().all(|h| h.starts_with("get /trusted/")),
        "{seen:?}"
    );
}

/// A RequestMirror to a Service that a BackendTLSPolicy names sends its copies over TLS, with
/// the policy's hostname as SNI and its CA verifying the mirror's certificate, as the real
/// request would go: never the request in clear text to a backend that asked for TLS.
#[test]
fn mirror_copies_to_a_backend_tls_policy_service_go_over_tls() {
    let pki = Pki::new();
    let front = pki.self_signed("front", KeyType::EcdsaP256, &["app.example"]);
    let ca = pki.ca("mirror-ca", KeyType::EcdsaP256, None);
    let mirror_cert = pki.leaf("mirror", KeyType::EcdsaP256, &["mirror.internal"], &ca);
    let (mirror_port, copies) = serve_tls_keeping_heads(&mirror_cert);
    let manifests = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: mirrored, namespace: {NAMESPACE}}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [app.example]\n  rules:\n  \
         - filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: copy, port: 80}}}}}}]\n    \
         backendRefs: [{{name: echo, port: 80}}]\n\
         {copy}{policy}",
        copy = common::manifests::backend(NAMESPACE, "copy", mirror_port),
        policy = backend_tls_policy("copy", &ca, "mirror.internal"),
    );
    let gw = Gateway::start(
        &https_listener("web", None, "front"),
        vec![
            secret_file("front", &front),
            ("mirrored.yaml".to_string(), manifests),
        ],
    );
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    let r = curl_https(gw.https, "app.example", "/copied", &front.cert_path, &[]);
    assert_eq!(r.code, 200, "{r:?}");
    let head = tls_support::eventually("a copy over TLS", || {
        copies.lock().unwrap().first().cloned()
    });
    assert!(head.starts_with("get /copied http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: app.example"), "{head}");
}

/// A gateway with one HTTPS listener `name` for host `name.example`, serving a self-signed
/// certificate from the Secret `name`, ready.
fn one_named_listener(name: &str) -> Gateway {
    let pki = Pki::new();
    let host = format!("{name}.example");
    let cert = pki.self_signed(name, KeyType::EcdsaP256, &[&host]);
    let gw = Gateway::start(
        &https_listener(name, Some(&host), name),
        vec![secret_file(name, &cert)],
    );
    gw.wait_for_condition(name, "Programmed", "True", "Programmed");
    gw.wait_until_served(Some(&host), &cert);
    gw
}

/// `openssl s_client` connected to `addr` with SNI `sni`, offering ALPN `alpn`: what is
/// written to its stdin goes over TLS as it is, and its stdout gives what comes back.
fn tls_pipe(addr: std::net::SocketAddr, sni: &str, alpn: &str) -> std::process::Child {
    std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .args(["-servername", sni, "-alpn", alpn])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Over TLS as in cleartext, a request header has a deadline for the whole of it (the gateway
/// here runs with `--request-header-timeout 2s`): a client sending a line every 400 ms gets
/// 408 and the connection closes, long before the header would be complete.
#[test]
fn a_request_header_sent_too_slowly_over_tls_gets_408() {
    use std::io::{Read as _, Write as _};
    let gw = one_named_listener("slow");
    let mut client = tls_pipe(gw.https, "slow.example", "http/1.1");
    let mut stdin = client.stdin.take().unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nhost: slow.example\r\n");
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(400));
            if stdin.write_all(b"x-drip: 1\r\n").is_err() {
                break;
            }
        }
    });
    let mut answer = String::new();
    let _ = client.stdout.take().unwrap().read_to_string(&mut answer);
    let took = started.elapsed();
    let _ = client.kill();
    let _ = client.wait();
    let _ = writer.join();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_secs(7), "{took:?}");

    // A client that settles on HTTP/2 and then sends no preface is closed at the same deadline
    // (Pingora would wait for the preface for good).
    let mut idle = tls_pipe(gw.https, "slow.example", "h2");
    let stdin = idle.stdin.take().unwrap();
    let mut stdout = idle.stdout.take().unwrap();
    let (closed, closing) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = stdout.read_to_end(&mut Vec::new());
        let _ = closed.send(());
    });
    let waited = closing.recv_timeout(Duration::from_secs(7));
    drop(stdin);
    let _ = idle.kill();
    let _ = idle.wait();
    assert!(
        waited.is_ok(),
        "an HTTP/2 connection without a preface is still open after 7 s"
    );
}

/// Turns client certificate validation on for the Gateway of `gw` (whose `listeners` are
/// given again), trusting `client_ca`, by rewriting its files.
fn require_client_certificates(
    gw: &Gateway,
    listeners: &str,
    client_ca: &tls_support::Certificate,
) {
    let pem = serde_json::to_string(&client_ca.cert_pem).unwrap();
    gw.write(
        "client-ca.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: client-ca, namespace: {NAMESPACE}}}\n\
             data:\n  ca.crt: {pem}\n"
        ),
    );
    gw.write(
        "gateway.yaml",
        &format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: gw, namespace: {NAMESPACE}}}\n\
             spec:\n  gatewayClassName: portcullis\n  tls:\n    frontend:\n      default:\n        \
             validation:\n          caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: client-ca}}]\n  \
             listeners:\n{listeners}"
        ),
    );
}

/// Client certificate validation turned on for a port applies to the connections already open
/// on it, not only to new ones: a keep-alive connection made without a certificate is closed
/// before its next request rather than served, and the client's next connection must pass the
/// new validation.
#[test]
fn connections_validated_before_a_client_certificate_change_take_no_more_requests() {
    let pki = Pki::new();
    let ca = pki.ca("ca", KeyType::EcdsaP256, None);
    let cert = pki.leaf("web", KeyType::EcdsaP256, &["web.example"], &ca);
    let client_ca = pki.ca("client-ca", KeyType::EcdsaP256, None);
    let listeners = https_listener("web", Some("web.example"), "web");
    let gw = Gateway::start(&listeners, vec![secret_file("web", &cert)]);
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("web.example"), &cert);

    let config = rustls_client(&[&ca]);
    let mut open = RustlsConnection::open(&config, gw.https, "web.example").unwrap();
    assert_eq!(open.get("/", false), Ok(200));

    require_client_certificates(&gw, &listeners, &client_ca);
    // New connections without a certificate are refused once the change is served...
    tls_support::eventually("a new connection needs a client certificate", || {
        RustlsConnection::open(&config, gw.https, "web.example")
            .and_then(|mut c| c.get("/", true))
            .is_err()
            .then_some(())
    });
    // ...and the connection opened before takes no further request: it is sent to make a new
    // one (421) and closed, or found closed already.
    let next = open.get("/", false);
    assert!(
        matches!(next, Err(_) | Ok(421)),
        "{next:?} on a connection validated before"
    );
}

/// `GET /` for `web.example` over `openssl s_client` with `args` (a saved session to resume,
/// or where to save it): what it printed, the handshake and the answer.
fn get_over_openssl(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let mut command = std::process::Command::new("openssl");
    command
        .args(["s_client", "-ign_eof", "-connect", &addr.to_string()])
        .args(["-servername", "web.example"])
        .args(args);
    let out = tls_support::run(
        command,
        b"GET / HTTP/1.1\r\nhost: web.example\r\nconnection: close\r\n\r\n",
        Duration::from_secs(20),
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A TLS session made before client certificate validation was turned on is not resumed after
/// it (a resumed session skips the client's certificate): the client makes a full handshake and
/// must show a certificate. Over TLS 1.3 and TLS 1.2 alike.
#[test]
fn a_session_made_before_client_validation_is_not_resumed_after_it() {
    let pki = Pki::new();
    let cert = pki.self_signed("web", KeyType::EcdsaP256, &["web.example"]);
    let client_ca = pki.ca("client-ca", KeyType::EcdsaP256, None);
    let listeners = https_listener("web", Some("web.example"), "web");
    let gw = Gateway::start(&listeners, vec![secret_file("web", &cert)]);
    gw.wait_for_condition("web", "Programmed", "True", "Programmed");
    gw.wait_until_served(Some("web.example"), &cert);
    let dir = tempfile::tempdir().unwrap();
    let saved = |version: &str| {
        dir.path()
            .join(format!("{version}.pem"))
            .display()
            .to_string()
    };
    for version in ["-tls1_3", "-tls1_2"] {
        let out = get_over_openssl(gw.https, &[version, "-sess_out", &saved(version)]);
        assert!(out.contains("HTTP/1.1 200"), "{version}: {out}");
        // Resumption works while nothing changes.
        let out = get_over_openssl(gw.https, &[version, "-sess_in", &saved(version)]);
        assert!(out.contains("Reused,"), "{version}: {out}");
        assert!(out.contains("HTTP/1.1 200"), "{version}: {out}");
        let out = get_over_openssl(gw.https, &[version, "-sess_out", &saved(version)]);
        assert!(out.contains("HTTP/1.1 200"), "{version}: {out}");
    }

    require_client_certificates(&gw, &listeners, &client_ca);
    tls_support::eventually("a new connection needs a client certificate", || {
        let out = get_over_openssl(gw.https, &["-tls1_3"]);
        (!out.contains("HTTP/1.1 200")).then_some(())
    });
    for version in ["-tls1_3", "-tls1_2"] {
        let out = get_over_openssl(gw.https, &[version, "-sess_in", &saved(version)]);
        assert!(
            !out.contains("HTTP/1.1 200"),
            "{version}: resumed and served: {out}"
        );
        assert!(!out.contains("Reused,"), "{version}: {out}");
    }
}

/// An HTTP/1.0 request may come without Host: over TLS, the SNI it was sent with names its
/// host, so it is served by the listener the handshake chose, not refused as misdirected.
#[test]
fn an_http_1_0_request_without_host_is_routed_by_its_sni() {
    use std::io::Read as _;
    let gw = one_named_listener("named");
    let mut client = tls_pipe(gw.https, "named.example", "http/1.1");
    {
        use std::io::Write as _;
        let mut stdin = client.stdin.take().unwrap();
        stdin.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        // stdin stays open until the answer is read: s_client quits at its end.
        let mut answer = String::new();
        let _ = client.stdout.take().unwrap().read_to_string(&mut answer);
        drop(stdin);
        let _ = client.kill();
        let _ = client.wait();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
}
