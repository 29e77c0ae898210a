//! In-memory TLS: two layers wired to each other, no sockets.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};

use super::*;

/// A certificate and key written to a private temporary directory.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    cert_der: CertificateDer<'static>,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smtpgate-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_pair(dir: &Path, stem: &str, params: CertificateParams, key: &KeyPair) -> Pair {
    let cert = params.self_signed(key).unwrap();
    let pair = Pair {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        cert_der: cert.der().clone(),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

fn pair_for(dir: &Path, stem: &str, names: &[&str]) -> Pair {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    write_pair(
        dir,
        stem,
        CertificateParams::new(names).unwrap(),
        &KeyPair::generate().unwrap(),
    )
}

fn tls_section(main: &Pair, sni: Vec<(Vec<String>, &Pair)>) -> Tls {
    Tls {
        cert: main.cert.clone(),
        key: main.key.clone(),
        sni: sni
            .into_iter()
            .map(|(names, p)| smtpgate_policy::config::SniCertificate {
                names,
                cert: p.cert.clone(),
                key: p.key.clone(),
            })
            .collect(),
        protocols: TlsVersion::ALL.to_vec(),
    }
}

/// Moves ciphertext both ways until neither side has anything to send; returns the
/// plaintext each side received.
fn pump(client: &mut TlsLayer, server: &mut TlsLayer) -> Result<(Vec<u8>, Vec<u8>), TlsFailure> {
    pump_recording(client, server, &mut Vec::new())
}

/// [`pump`], keeping what each of the server's receives reported in `receipts`.
fn pump_recording(
    client: &mut TlsLayer,
    server: &mut TlsLayer,
    receipts: &mut Vec<Received>,
) -> Result<(Vec<u8>, Vec<u8>), TlsFailure> {
    let (mut at_client, mut at_server) = (BytesMut::new(), BytesMut::new());
    for _ in 0..20 {
        let mut moved = false;
        if let Some(bytes) = client.take_ciphertext() {
            receipts.push(server.receive(&bytes, &mut at_server)?);
            moved = true;
        }
        if let Some(bytes) = server.take_ciphertext() {
            client.receive(&bytes, &mut at_client)?;
            moved = true;
        }
        if !moved {
            break;
        }
    }
    Ok((at_client.to_vec(), at_server.to_vec()))
}

fn client_for(config: &Arc<ClientConfig>, name: &str) -> TlsLayer {
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsLayer::new(ClientConnection::new(config.clone(), name).unwrap().into())
}

/// The edge's server config with one certificate for mx.example.com, written to the
/// test's own directory.
fn edge_config(test: &str) -> Arc<ServerConfig> {
    edge_config_with(test, &TlsVersion::ALL)
}

/// An opportunistic upstream-style client and the edge, before their handshake.
fn fresh_session(test: &str) -> (TlsLayer, TlsLayer) {
    let client = TlsLayer::client(&opportunistic_client_config(), "127.0.0.1".parse().unwrap());
    (client, TlsLayer::server(&edge_config(test)))
}

/// [`edge_config`] accepting only `versions` (`[tls] protocols`).
fn edge_config_with(test: &str, versions: &[TlsVersion]) -> Arc<ServerConfig> {
    let main = pair_for(&temp_dir(test), "mx", &["mx.example.com"]);
    let mut section = tls_section(&main, vec![]);
    section.protocols = versions.to_vec();
    server_config(&section, None, SystemTime::now()).unwrap()
}

#[test]
fn a_handshake_in_memory_carries_plaintext_both_ways_and_reports_what_was_negotiated() {
    let (mut client, mut server) = fresh_session("basic");
    // Written before the handshake: held by rustls, sent once it completes.
    client.send(b"EHLO client.example\r\n");
    let (_, at_server) = pump(&mut client, &mut server).unwrap();
    assert_eq!(at_server, b"EHLO client.example\r\n");
    server.send(b"250 mx.example.com\r\n");
    let (at_client, _) = pump(&mut client, &mut server).unwrap();
    assert_eq!(at_client, b"250 mx.example.com\r\n");

    let established = server.take_established().expect("handshake done");
    assert_eq!(established.version, "TLSv1_3");
    assert!(
        established.cipher_suite.starts_with("TLS13_"),
        "{established:?}"
    );
    assert_eq!(established.sni, None, "an IP address is never sent as SNI");
    assert!(!established.peer_certificate);
    assert!(!established.resumed);
    assert_eq!(server.take_established(), None, "reported once");
    assert!(client.take_established().unwrap().peer_certificate);
}

/// Whether `piece` lies inside the `RECORD_ROOM` bytes that start at `start`.
fn within_room(piece: &[u8], start: *const u8) -> bool {
    let (at, start) = (piece.as_ptr() as usize, start as usize);
    at >= start && at + piece.len() <= start + RECORD_ROOM
}

#[test]
fn records_are_cut_from_one_allocation_each_way_while_nothing_holds_on_to_them() {
    let server_config = edge_config("reuse");
    let mut server = TlsLayer::server(&server_config);
    let mut client = client_for(&opportunistic_client_config(), "mx.example.com");
    // Where each layer's room starts, before anything is cut from it.
    let (sealed_room, plain_room) = (server.ciphertext.as_ptr(), client.ciphertext.as_ptr());
    client.send(b"EHLO client.example\r\n");
    pump(&mut client, &mut server).unwrap();
    server.send(b"250 mx.example.com\r\n");
    pump(&mut client, &mut server).unwrap();

    // Far more than one allocation holds, one exchange at a time, as the relay does:
    // each piece is written (dropped) before the next read or flush.
    let mut at_server = record_buffer();
    let received_room = at_server.as_ptr();
    for n in 0..300 {
        let command = format!("RCPT TO:<r{n}@example.com>\r\n");
        client.send(command.as_bytes());
        let sealed = client.take_ciphertext().unwrap();
        assert!(
            within_room(&sealed, plain_room),
            "exchange {n}: a new allocation"
        );
        server.receive(&sealed, &mut at_server).unwrap();
        let plaintext = cut(&mut at_server);
        assert_eq!(plaintext, command.as_bytes());
        assert!(
            within_room(&plaintext, received_room),
            "exchange {n}: a new allocation"
        );
        server.send(b"250 2.1.5 ok\r\n");
        let reply = server.take_ciphertext().unwrap();
        assert!(
            within_room(&reply, sealed_room),
            "exchange {n}: a new allocation"
        );
    }

    // A piece that outgrew the room (bulk) takes its allocation with it.
    client.send(&[b'x'; 3 * RECORD_ROOM]);
    let sealed = client.take_ciphertext().unwrap();
    assert!(sealed.len() > 3 * RECORD_ROOM);
    assert_eq!(client.ciphertext.capacity(), RECORD_ROOM, "a fresh room");
    server.receive(&sealed, &mut at_server).unwrap();
    assert_eq!(cut(&mut at_server), vec![b'x'; 3 * RECORD_ROOM]);
    assert_eq!(at_server.capacity(), RECORD_ROOM, "a fresh room");

    // Pieces still held (queued behind a blocked socket) are never overwritten.
    let held: Vec<Bytes> = (0..300)
        .map(|n| {
            client.send(format!("NOOP {n}\r\n").as_bytes());
            client.take_ciphertext().unwrap()
        })
        .collect();
    let mut noops = BytesMut::new();
    for sealed in &held {
        server.receive(sealed, &mut noops).unwrap();
    }
    let expected: String = (0..300).map(|n| format!("NOOP {n}\r\n")).collect();
    assert_eq!(noops, expected.as_bytes());
}

#[test]
fn one_receive_takes_the_plaintext_of_every_record_it_is_given() {
    let server_config = edge_config("records");
    let mut server = TlsLayer::server(&server_config);
    let mut client = client_for(&opportunistic_client_config(), "mx.example.com");
    client.send(b"EHLO client.example\r\n");
    pump(&mut client, &mut server).unwrap();
    let mut ciphertext = Vec::new();
    for line in [
        "MAIL FROM:<a@example.com>\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "DATA\r\n",
    ] {
        client.send(line.as_bytes());
        ciphertext.extend_from_slice(&client.take_ciphertext().unwrap());
    }
    let mut plaintext = BytesMut::from(&b"before|"[..]);
    server.receive(&ciphertext, &mut plaintext).unwrap();
    assert_eq!(
        plaintext,
        &b"before|MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"[..]
    );
}

#[test]
fn a_tls13_ticket_waits_for_the_servers_next_record_and_leaves_with_it() {
    let server_config = edge_config("ticket");
    let client_config = opportunistic_client_config();
    let mut server = TlsLayer::server(&server_config);
    let mut client = client_for(&client_config, "mx.example.com");
    client.send(b"EHLO client.example\r\n");
    let (_, at_server) = pump(&mut client, &mut server).unwrap();
    assert_eq!(at_server, b"EHLO client.example\r\n");
    assert!(!server.is_handshaking());
    assert!(server.conn.wants_write(), "rustls has the ticket to send");
    assert_eq!(
        server.take_ciphertext(),
        None,
        "the ticket waits for the EHLO reply"
    );
    server.send(b"250 mx.example.com\r\n");
    let flight = server.take_ciphertext().expect("ticket and reply");
    let mut records = 0;
    let mut rest = &flight[..];
    while rest.len() >= 5 {
        rest = &rest[5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]))..];
        records += 1;
    }
    assert_eq!(records, 2, "the ticket's record and the reply's");
    let mut at_client = BytesMut::new();
    client.receive(&flight, &mut at_client).unwrap();
    assert_eq!(&at_client[..], b"250 mx.example.com\r\n");
    assert_eq!(server.take_ciphertext(), None, "one write carried both");

    // The ticket arrived with the reply: the next session resumes from it.
    let mut server = TlsLayer::server(&server_config);
    let mut client = client_for(&client_config, "mx.example.com");
    client.send(b"x");
    pump(&mut client, &mut server).unwrap();
    assert!(server.take_established().unwrap().resumed);

    // A close sends the held ticket with close_notify; it is not lost behind a hold.
    server.close();
    assert!(server.take_ciphertext().is_some());
}

#[test]
fn the_certificate_is_chosen_by_server_name_with_the_main_one_as_fallback() {
    let dir = temp_dir("sni");
    let main = pair_for(&dir, "mx", &["mx.example.com"]);
    let other = pair_for(&dir, "mx2", &["mx2.example.com"]);
    let config = server_config(
        &tls_section(&main, vec![(vec!["MX2.example.com".into()], &other)]),
        None,
        SystemTime::now(),
    )
    .unwrap();
    for (name, expected) in [
        ("mx2.example.com", &other.cert_der),
        ("unknown.example.com", &main.cert_der),
    ] {
        let mut server = TlsLayer::server(&config);
        let mut client = client_for(&opportunistic_client_config(), name);
        pump(&mut client, &mut server).unwrap();
        let Connection::Client(conn) = &client.conn else {
            unreachable!()
        };
        assert_eq!(&conn.peer_certificates().unwrap()[0], expected, "{name}");
        assert_eq!(
            server.take_established().unwrap().sni.as_deref(),
            Some(name)
        );
    }
}

#[test]
fn an_sni_name_the_certificate_does_not_cover_is_refused_naming_the_file() {
    let dir = temp_dir("sni-bad");
    let main = pair_for(&dir, "mx", &["mx.example.com"]);
    let other = pair_for(&dir, "mx2", &["mx2.example.com"]);
    let e = server_config(
        &tls_section(&main, vec![(vec!["mx3.example.com".into()], &other)]),
        None,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(
        e.contains("mx2.pem: not usable for the name `mx3.example.com`"),
        "{e}"
    );
}

#[test]
fn a_second_session_resumes_from_a_ticket_and_tickets_survive_a_reload() {
    let dir = temp_dir("resume");
    let main = pair_for(&dir, "mx", &["mx.example.com"]);
    let tls = tls_section(&main, vec![]);
    let first = server_config(&tls, None, SystemTime::now()).unwrap();
    let client_config = opportunistic_client_config();
    let handshake = |config: &Arc<ServerConfig>| {
        let mut server = TlsLayer::server(config);
        let mut client = client_for(&client_config, "mx.example.com");
        client.send(b"x");
        pump(&mut client, &mut server).unwrap();
        // The tickets arrive after the handshake; let the client read them.
        server.send(b"y");
        pump(&mut client, &mut server).unwrap();
        server.take_established().unwrap().resumed
    };
    assert!(!handshake(&first));
    assert!(
        handshake(&first),
        "the ticket from the first session is used"
    );
    let reloaded = server_config(&tls, Some(first.ticketer.clone()), SystemTime::now()).unwrap();
    assert!(
        handshake(&reloaded),
        "the ticket keys are kept across a reload"
    );
}

#[test]
fn verify_refuses_an_upstream_certificate_from_another_ca() {
    let dir = temp_dir("verify");
    let upstream = pair_for(&dir, "upstream", &["127.0.0.1"]);
    let stranger = pair_for(&dir, "stranger", &["127.0.0.1"]);
    let server_config =
        server_config(&tls_section(&upstream, vec![]), None, SystemTime::now()).unwrap();
    let address: IpAddr = "127.0.0.1".parse().unwrap();

    let trusting = verifying_client_config(Some(&upstream.cert)).unwrap();
    let mut client = TlsLayer::client(&trusting, address);
    let mut server = TlsLayer::server(&server_config);
    pump(&mut client, &mut server).expect("the right CA verifies");
    assert!(!client.is_handshaking());

    let wrong = verifying_client_config(Some(&stranger.cert)).unwrap();
    let mut client = TlsLayer::client(&wrong, address);
    let mut server = TlsLayer::server(&server_config);
    let failure = pump(&mut client, &mut server).unwrap_err();
    assert_eq!(failure.reason, FailureReason::BadCertificate, "{failure}");
    assert!(failure.in_handshake);
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_the_key_file() {
    let dir = temp_dir("mismatch");
    let a = pair_for(&dir, "a", &["a.example.com"]);
    let b = pair_for(&dir, "b", &["b.example.com"]);
    let e = load_pair(&a.cert, &b.key, &provider(), SystemTime::now()).unwrap_err();
    assert!(
        e.contains("b.key: this key does not belong to the certificate in"),
        "{e}"
    );
    assert!(e.contains("a.pem"), "{e}");
}

#[test]
fn expired_not_yet_valid_and_unreadable_files_are_refused_naming_the_file() {
    let dir = temp_dir("expiry");
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["old.example.com".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 2, 29);
    let old = write_pair(&dir, "old", params, &key);
    let e = load_pair(&old.cert, &old.key, &provider(), SystemTime::now()).unwrap_err();
    assert!(
        e.ends_with("old.pem: the certificate expired on 2020-02-29"),
        "{e}"
    );
    // The same pair is fine on a day inside its validity...
    let in_2019 = UNIX_EPOCH + Duration::from_secs(1_560_000_000);
    assert!(load_pair(&old.cert, &old.key, &provider(), in_2019).is_ok());
    // ... and not yet valid before it.
    let e = load_pair(&old.cert, &old.key, &provider(), UNIX_EPOCH).unwrap_err();
    assert!(e.contains("not valid before 2019-01-01"), "{e}");

    let missing = dir.join("missing.pem");
    let e = load_pair(&missing, &old.key, &provider(), SystemTime::now()).unwrap_err();
    assert!(
        e.starts_with(&format!("{}: cannot read", missing.display())),
        "{e}"
    );
    let e = load_pair(&old.key, &old.key, &provider(), SystemTime::now()).unwrap_err();
    assert!(e.contains("old.key: no CERTIFICATE block found"), "{e}");
    let e = load_pair(&old.cert, &old.cert, &provider(), SystemTime::now()).unwrap_err();
    assert!(e.contains("old.pem: cannot read a PEM private key"), "{e}");
}

#[test]
fn utc_dates_round_trip_through_days_from_civil() {
    for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (2049, 6, 15)] {
        let seconds = days_from_civil(y, m, d) * 86_400 + 3_599;
        assert_eq!(utc_date(seconds), format!("{y:04}-{m:02}-{d:02}"));
    }
    assert_eq!(
        der_time(0x17, b"491231235959Z"),
        Some(days_from_civil(2049, 12, 31) * 86_400 + 86_399)
    );
    assert_eq!(
        der_time(0x17, b"500101000000Z"),
        Some(days_from_civil(1950, 1, 1) * 86_400)
    );
    assert_eq!(
        der_time(0x18, b"20500101000000Z"),
        Some(days_from_civil(2050, 1, 1) * 86_400)
    );
    assert_eq!(der_time(0x18, b"2050"), None);
}

#[test]
fn garbage_from_a_client_is_a_protocol_failure_and_eof_mid_handshake_is_counted() {
    let config = edge_config("garbage");
    let mut server = TlsLayer::server(&config);
    let failure = server
        .receive(b"EHLO plaintext.example\r\n", &mut BytesMut::new())
        .unwrap_err();
    assert_eq!(failure.reason, FailureReason::Protocol, "{failure}");
    let server = TlsLayer::server(&config);
    assert_eq!(server.eof().unwrap_err().reason, FailureReason::Eof);
}

/// A client's ticket store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[test]
fn the_edge_picks_aes_128_gcm_sha256_by_its_own_order_and_issues_one_ticket_per_session() {
    let server_config = edge_config("suite");
    // rustls's stock client order puts AES-256-GCM/SHA-384 first, as OpenSSL's does.
    let stock_provider = Arc::new(aws_lc_rs::default_provider());
    assert_eq!(
        stock_provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let store = Arc::new(CountingTickets {
        inner: rustls::client::ClientSessionMemoryCache::new(16),
        tickets: Default::default(),
    });
    let mut stock = ClientConfig::builder_with_provider(stock_provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(AnyServerCertificate::new(stock_provider))
        .with_no_client_auth();
    stock.resumption = rustls::client::Resumption::store(store.clone());
    let stock = Arc::new(stock);

    let mut resumed = Vec::new();
    for session in 1..=3 {
        let mut server = TlsLayer::server(&server_config);
        let mut client = client_for(&stock, "mx.example.com");
        client.send(b"EHLO client.example\r\n");
        server.send(b"220 mx.example.com\r\n");
        pump(&mut client, &mut server).unwrap();
        let established = server.take_established().expect("handshake done");
        assert_eq!(established.cipher_suite, "TLS13_AES_128_GCM_SHA256");
        resumed.push(established.resumed);
        assert_eq!(
            store.tickets.load(std::sync::atomic::Ordering::Relaxed),
            session,
            "one ticket per session"
        );
    }
    assert_eq!(
        resumed,
        [false, true, true],
        "each ticket serves the next session"
    );
}

#[test]
fn tls_protocols_limit_what_the_edge_accepts_and_tls_1_2_sessions_resume_from_tickets() {
    let tls12 = edge_config_with("protocols-12", &[TlsVersion::Tls12]);
    let client = opportunistic_client_config();
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let mut server = TlsLayer::server(&tls12);
        let mut client = TlsLayer::client(&client, "127.0.0.1".parse().unwrap());
        client.send(b"EHLO client.example\r\n");
        let (_, at_server) = pump(&mut client, &mut server).unwrap();
        assert_eq!(at_server, b"EHLO client.example\r\n");
        let established = server.take_established().expect("handshake done");
        assert_eq!(established.version, "TLSv1_2");
        assert_eq!(
            established.cipher_suite,
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        );
        resumed.push(established.resumed);
    }
    assert_eq!(
        resumed,
        [false, true],
        "the second session resumes the first"
    );

    let tls13 = edge_config_with("protocols-13", &[TlsVersion::Tls13]);
    let tls12_client = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(AnyServerCertificate::new(provider()))
            .with_no_client_auth(),
    );
    let mut server = TlsLayer::server(&tls13);
    let mut client = TlsLayer::client(&tls12_client, "127.0.0.1".parse().unwrap());
    let failure = pump(&mut client, &mut server).expect_err("no version in common");
    assert_eq!(
        failure.reason,
        FailureReason::NoCommonParameters,
        "{failure}"
    );
    assert!(failure.in_handshake);
}

/// Runs a handshake to its end; returns what each of the server's receives reported.
fn server_receipts(client: &mut TlsLayer, server: &mut TlsLayer) -> Vec<Received> {
    let mut receipts = Vec::new();
    pump_recording(client, server, &mut receipts).unwrap();
    receipts
}

#[test]
fn the_edge_asks_for_an_immediate_ack_when_nothing_answers_the_clients_finished() {
    let acks = |config: &Arc<ServerConfig>, client: &Arc<ClientConfig>| {
        let mut server = TlsLayer::server(config);
        let mut client = TlsLayer::client(client, "127.0.0.1".parse().unwrap());
        let receipts = server_receipts(&mut client, &mut server);
        assert!(!server.is_handshaking() && !client.is_handshaking());
        receipts
            .iter()
            .map(|r| r.acknowledge_now)
            .collect::<Vec<_>>()
    };

    // TLS 1.3: the ticket waits for the reply to the client's next command, so the
    // client's Finished gets no answer; full and resumed alike.
    let tls13 = edge_config_with("ack-13", &[TlsVersion::Tls13]);
    let client = opportunistic_client_config();
    assert_eq!(acks(&tls13, &client), [false, true], "full handshake");
    assert_eq!(acks(&tls13, &client), [false, true], "resumed");

    // TLS 1.2: the server's Finished answers a full handshake's; a resumption ends
    // with the client's.
    let tls12 = edge_config_with("ack-12", &[TlsVersion::Tls12]);
    let client = opportunistic_client_config();
    assert_eq!(acks(&tls12, &client), [false, false], "full handshake");
    assert_eq!(acks(&tls12, &client), [false, true], "resumed");
}

#[test]
fn the_upstream_leg_asks_for_an_immediate_ack_of_tickets_that_come_alone() {
    let (mut client, mut server) = fresh_session("ack-tickets");
    server_receipts(&mut client, &mut server);
    assert!(!client.is_handshaking());
    // As an OpenSSL server sends them: the ticket on its own, before any reply.
    server.ticket_held = false;
    let ticket = server.take_ciphertext().expect("the session ticket");
    let mut plaintext = BytesMut::new();
    let received = client.receive(&ticket, &mut plaintext).unwrap();
    assert!(plaintext.is_empty());
    assert!(
        received.acknowledge_now,
        "a ticket alone is acknowledged at once"
    );

    server.send(b"250 mx.example.com\r\n");
    let reply = server.take_ciphertext().unwrap();
    let received = client.receive(&reply, &mut plaintext).unwrap();
    assert_eq!(&plaintext[..], b"250 mx.example.com\r\n");
    assert!(
        !received.acknowledge_now,
        "a reply is acknowledged by what answers it"
    );
}

#[test]
fn a_finished_that_brings_the_clients_next_command_needs_no_immediate_ack() {
    let (mut client, mut server) = fresh_session("ack-command");
    // As rustls clients do: the EHLO leaves with the Finished; its reply will ACK both.
    client.send(b"EHLO client.example\r\n");
    let receipts = server_receipts(&mut client, &mut server);
    assert!(!server.is_handshaking());
    assert!(receipts.iter().all(|r| !r.acknowledge_now), "{receipts:?}");
}
