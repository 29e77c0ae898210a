//! How long TLS handshakes stall the other sessions of a shard, and what one handshake
//! step costs. Driven by `benches/tls-stall.sh`; two modes:
//!
//! `probe TARGET CLIENTS SECONDS ROUNDS`: one probe session (plaintext, through the
//! relay like any other) sends NOOP after NOOP, one at a time, and records how long
//! each reply took. Each round runs three phases of SECONDS: no other load (`idle`),
//! then CLIENTS threads doing new connection + STARTTLS + full handshake + EHLO + QUIT
//! as fast as they can with resumption off (`full`), then the same with session
//! tickets kept between connections (`resumed`). Prints one line per phase and round:
//! handshakes/s, resumed share, and the probe's reply latency (p50, p99, p99.9, max).
//! With `TLS_STALL_DEBUG` set, also the five slowest replies of each phase with their
//! sample numbers, on stderr.
//!
//! `steps CERT KEY HANDSHAKES`: in memory, no sockets: a rustls server configured as
//! smtpgate's edge (client certificates asked for but optional, session tickets, server
//! order of cipher suites; the same settings as `dataplane/src/tls.rs`) handshakes with
//! a client, and every call that advances the server (`process_new_packets` plus
//! `write_tls`) is timed: the longest of them is what one handshake can hold the shard
//! for. Full and resumed handshakes, median and max per step, for each crypto provider
//! rustls is built with here (aws-lc-rs, smtpgate's, and ring), in alternating rounds
//! of HANDSHAKES/4 so that both see the same machine load.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection, StreamOwned,
};
use smtpgate_anycert::{AnyClientCertificate, AnyServerCertificate};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tls_stall probe TARGET CLIENTS SECONDS ROUNDS | steps CERT KEY HANDSHAKES";
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["probe", target, clients, seconds, rounds] => probe(
            target.parse().expect("TARGET is ip:port"),
            clients.parse().expect("CLIENTS is a number"),
            Duration::from_secs_f64(seconds.parse().expect("SECONDS is a number")),
            rounds.parse().expect("ROUNDS is a number"),
        ),
        ["steps", cert, key, handshakes] => steps(
            Path::new(cert),
            Path::new(key),
            handshakes.parse().expect("HANDSHAKES is a number"),
        ),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------
// probe
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Load {
    Idle,
    FullHandshakes,
    ResumedHandshakes,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::FullHandshakes => "full",
            Load::ResumedHandshakes => "resumed",
        }
    }
}

fn probe(target: SocketAddr, clients: usize, phase: Duration, rounds: usize) {
    println!(
        "{:<8} {:>5} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "load", "round", "hs/s", "resumed", "noops", "p50_us", "p99_us", "p999_us", "max_us"
    );
    for round in 0..rounds {
        for load in [Load::Idle, Load::FullHandshakes, Load::ResumedHandshakes] {
            run_phase(target, clients, phase, round, load);
        }
    }
}

fn run_phase(target: SocketAddr, clients: usize, phase: Duration, round: usize, load: Load) {
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let client_config = match load {
        Load::Idle => None,
        Load::FullHandshakes => Some(client_config(Resumption::disabled())),
        Load::ResumedHandshakes => Some(client_config(Resumption::default())),
    };
    let mut loaders = Vec::new();
    if let Some(config) = client_config {
        for _ in 0..clients {
            let (stop, handshakes, resumed, config) = (
                stop.clone(),
                handshakes.clone(),
                resumed.clone(),
                config.clone(),
            );
            loaders.push(thread::spawn(move || {
                // The clients' own handshake work (they verify a signature per full
                // handshake) yields to the relay and the probe: what the probe waits
                // for is then the shard, not this process's threads.
                // SAFETY: setpriority on the calling thread (who = 0) changes nothing
                // but its own nice value.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                while !stop.load(Ordering::Relaxed) {
                    match handshake_session(target, &config) {
                        Ok(kind) => {
                            handshakes.fetch_add(1, Ordering::Relaxed);
                            if kind == Some(HandshakeKind::Resumed) {
                                resumed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            eprintln!("handshake session: {e}");
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            }));
        }
        // Let the loaders reach full speed before the probe starts counting.
        thread::sleep(Duration::from_millis(300));
    }
    let started = Instant::now();
    let latencies = noop_probe(target, phase).expect("the probe session");
    let elapsed = started.elapsed().as_secs_f64();
    let done_handshakes = handshakes.load(Ordering::Relaxed);
    let done_resumed = resumed.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        let _ = loader.join();
    }
    if std::env::var_os("TLS_STALL_DEBUG").is_some() {
        let mut worst: Vec<(u32, usize)> = latencies.iter().copied().zip(0..).collect();
        worst.sort_unstable_by(|a, b| b.cmp(a));
        eprintln!(
            "{}: worst (us, index of {}): {:?}",
            load.name(),
            latencies.len(),
            &worst[..worst.len().min(5)]
        );
    }
    let (p50, p99, p999, max) = percentiles(latencies.clone());
    let resumed_share = if done_handshakes == 0 {
        "-".to_string()
    } else {
        format!(
            "{:.0}%",
            100.0 * done_resumed as f64 / done_handshakes as f64
        )
    };
    println!(
        "{:<8} {:>5} {:>8.0} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        load.name(),
        round + 1,
        done_handshakes as f64 / elapsed,
        resumed_share,
        latencies.len(),
        p50,
        p99,
        p999,
        max
    );
}

/// One plaintext session sending NOOPs back to back for `phase`: each reply's latency in
/// microseconds.
fn noop_probe(target: SocketAddr, phase: Duration) -> io::Result<Vec<u32>> {
    let stream = TcpStream::connect(target)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    read_reply(&mut reader)?;
    writer.write_all(b"EHLO probe.smtpgate.test\r\n")?;
    read_reply(&mut reader)?;
    let mut latencies = Vec::with_capacity(1 << 16);
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let sent = Instant::now();
        writer.write_all(b"NOOP\r\n")?;
        let code = read_reply(&mut reader)?;
        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if code != 250 {
            return Err(io::Error::other(format!("NOOP answered {code}")));
        }
    }
    writer.write_all(b"QUIT\r\n")?;
    let _ = read_reply(&mut reader);
    Ok(latencies)
}

/// A new connection through STARTTLS to the EHLO after it; how the handshake went.
fn handshake_session(
    target: SocketAddr,
    config: &Arc<ClientConfig>,
) -> io::Result<Option<HandshakeKind>> {
    let stream = TcpStream::connect(target)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    expect(read_reply(&mut reader)?, 220, "greeting")?;
    writer.write_all(b"EHLO load.smtpgate.test\r\n")?;
    expect(read_reply(&mut reader)?, 250, "EHLO")?;
    writer.write_all(b"STARTTLS\r\n")?;
    expect(read_reply(&mut reader)?, 220, "STARTTLS")?;
    if !reader.buffer().is_empty() {
        return Err(io::Error::other("bytes after the 220 to STARTTLS"));
    }
    let name = ServerName::IpAddress(target.ip().into());
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let kind = tls.conn.handshake_kind();
    tls.write_all(b"EHLO load.smtpgate.test\r\n")?;
    let mut tls_reader = BufReader::new(tls);
    expect(read_reply(&mut tls_reader)?, 250, "EHLO after STARTTLS")?;
    tls_reader.get_mut().write_all(b"QUIT\r\n")?;
    let _ = read_reply(&mut tls_reader);
    Ok(kind)
}

fn expect(code: u16, want: u16, what: &str) -> io::Result<()> {
    if code == want {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what} answered {code}")))
    }
}

/// Reads one SMTP reply (all its lines); its code.
fn read_reply<R: Read>(reader: &mut BufReader<R>) -> io::Result<u16> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 {
            return Err(io::Error::other("short reply line"));
        }
        if line[3] != b'-' {
            let code = std::str::from_utf8(&line[..3])
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other("reply without a code"))?;
            return Ok(code);
        }
    }
}

/// (p50, p99, p99.9, max) of microsecond samples.
fn percentiles(mut samples: Vec<u32>) -> (u32, u32, u32, u32) {
    if samples.is_empty() {
        return (0, 0, 0, 0);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(0.999), *samples.last().unwrap())
}

fn client_config(resumption: Resumption) -> Arc<ClientConfig> {
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(AnyServerCertificate::new(provider))
        .with_no_client_auth();
    config.resumption = resumption;
    Arc::new(config)
}

// ---------------------------------------------------------------------------------
// steps
// ---------------------------------------------------------------------------------

/// A crypto provider to time the edge's handshake steps with.
#[derive(Clone, Copy)]
enum Provider {
    AwsLcRs,
    Ring,
}

impl Provider {
    const ALL: [Provider; 2] = [Provider::AwsLcRs, Provider::Ring];

    fn name(self) -> &'static str {
        match self {
            Provider::AwsLcRs => "aws-lc-rs",
            Provider::Ring => "ring",
        }
    }
}

fn steps(cert: &Path, key: &Path, handshakes: usize) {
    const ROUNDS: usize = 4;
    let kinds = [
        ("full", Resumption::disabled(), HandshakeKind::Full),
        ("resumed", Resumption::default(), HandshakeKind::Resumed),
    ];
    // (provider, kind) -> per step -> samples
    let mut samples: Vec<Vec<Vec<u32>>> = vec![Vec::new(); Provider::ALL.len() * kinds.len()];
    let servers: Vec<Arc<ServerConfig>> = Provider::ALL
        .iter()
        .map(|&p| edge_server_config(cert, key, p))
        .collect();
    for _ in 0..ROUNDS {
        for (p, server) in servers.iter().enumerate() {
            for (k, (_, resumption, want)) in kinds.iter().enumerate() {
                let client = client_config(resumption.clone());
                // One unmeasured handshake leaves a ticket for the first resumed one.
                handshake_in_memory(server, &client);
                let per_step = &mut samples[p * kinds.len() + k];
                for _ in 0..handshakes.div_ceil(ROUNDS) {
                    let (times, kind_seen) = handshake_in_memory(server, &client);
                    assert_eq!(kind_seen, Some(*want), "{} handshake expected", kinds[k].0);
                    for (i, t) in times.into_iter().enumerate() {
                        if per_step.len() <= i {
                            per_step.push(Vec::new());
                        }
                        per_step[i].push(t);
                    }
                }
            }
        }
    }
    println!(
        "{:<10} {:<8} {:>4} {:>10} {:>10} {:>12}",
        "provider", "kind", "step", "median_us", "max_us", "what"
    );
    for (p, provider) in Provider::ALL.iter().enumerate() {
        for (k, (kind, _, _)) in kinds.iter().enumerate() {
            for (i, times) in std::mem::take(&mut samples[p * kinds.len() + k])
                .into_iter()
                .enumerate()
            {
                let what = match i {
                    0 => "ClientHello",
                    1 => "Finished",
                    _ => "more",
                };
                let (p50, _, _, max) = percentiles(times);
                println!(
                    "{:<10} {kind:<8} {:>4} {p50:>10} {max:>10} {what:>12}",
                    provider.name(),
                    i + 1
                );
            }
        }
    }
}

/// One handshake between `server` and `client` in memory: the time of every server
/// step (a flight of client records in, the answer out), and the handshake kind.
fn handshake_in_memory(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (Vec<u32>, Option<HandshakeKind>) {
    let mut server = ServerConnection::new(server.clone()).expect("server connection");
    let name = ServerName::try_from("mx.bench.test").expect("a DNS name");
    let mut client = ClientConnection::new(client.clone(), name).expect("client connection");
    let mut times = Vec::new();
    let mut wire = Vec::new();
    for _ in 0..10 {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client write");
        }
        if !wire.is_empty() {
            let started = Instant::now();
            let mut input = &wire[..];
            while !input.is_empty() {
                server.read_tls(&mut input).expect("server read");
                server.process_new_packets().expect("server process");
            }
            let mut answer = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut answer).expect("server write");
            }
            times.push(started.elapsed().as_micros() as u32);
            let mut input = &answer[..];
            while !input.is_empty() {
                client.read_tls(&mut input).expect("client read");
                client.process_new_packets().expect("client process");
            }
        }
        if !server.is_handshaking() && !client.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    (times, server.handshake_kind())
}

/// The edge's server config as smtpgate builds it for `[tls]`, on `provider`.
fn edge_server_config(cert: &Path, key: &Path, provider: Provider) -> Arc<ServerConfig> {
    macro_rules! ordered {
        ($module:ident) => {{
            use $module::cipher_suite as suite;
            CryptoProvider {
                cipher_suites: vec![
                    suite::TLS13_AES_128_GCM_SHA256,
                    suite::TLS13_AES_256_GCM_SHA384,
                    suite::TLS13_CHACHA20_POLY1305_SHA256,
                    suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                    suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                    suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                ],
                ..$module::default_provider()
            }
        }};
    }
    let (crypto, ticketer) = match provider {
        Provider::AwsLcRs => (ordered!(aws_lc_rs), aws_lc_rs::Ticketer::new()),
        Provider::Ring => (ordered!(ring), ring::Ticketer::new()),
    };
    let crypto = Arc::new(crypto);
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .expect("a PEM certificate chain");
    let key = PrivateKeyDer::from_pem_file(key).expect("a PEM private key");
    let mut config = ServerConfig::builder_with_provider(crypto.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default versions")
        .with_client_cert_verifier(AnyClientCertificate::new(crypto))
        .with_single_cert(chain, key)
        .expect("a usable certificate and key");
    config.ticketer = ticketer.expect("ticketer");
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    config.ignore_client_order = true;
    config.send_tls13_tickets = 1;
    Arc::new(config)
}
