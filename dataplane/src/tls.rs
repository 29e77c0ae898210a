//! TLS for either side of a session, sans-IO: [`TlsLayer`] turns ciphertext read from a
//! socket into plaintext for the inspector, and plaintext for a peer into ciphertext to
//! write. It owns no socket and never blocks; the relay feeds it and drains it, so a
//! handshake runs inside the session's own task.
//!
//! [`TlsContext`] is what a config's `[tls]` section and its listeners' `upstream_tls`
//! become: one rustls server config (the certificate, `[[tls.sni]]` certificates chosen
//! by server name, rotating session tickets) and one client config per listener for
//! the upstream. It is built when a config is loaded and rebuilt on SIGHUP; a
//! certificate or key that fails to load keeps the previous context (see
//! [`TlsContext::reload`]).
//!
//! The crypto provider is *aws-lc-rs* (AWS-LC, BoringSSL's descendant): the same
//! AES-NI/PCLMULQDQ AES-GCM assembly as ring, and on x86-64 also assembly X25519 and
//! P-256 (s2n-bignum, BMI2/ADX) and a faster RSA, which is what a handshake spends its
//! time on. Timed in memory on the same AMD EPYC machine, one server handshake step
//! (the client's first flight: key exchange, and for a full handshake the signature)
//! took 63 us for a resumption against ring's 97, 86 us for a full handshake with an
//! ECDSA P-256 certificate against 116, and 380 us with RSA-2048 against 803. It
//! builds with a C compiler only (its `cc` build, no cmake, on Linux x86-64).

use std::fmt;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ResolvesServerCertUsingSni,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, RootCertStore, ServerConfig,
    ServerConnection,
};
use smtpgate_anycert::{AnyClientCertificate, AnyServerCertificate};
use smtpgate_policy::config::{Config, Tls, TlsVersion, UpstreamTls};

/// aws-lc-rs with AES-128-GCM/SHA-256 suites ahead of AES-256-GCM/SHA-384, then
/// ChaCha20-Poly1305. A TLS handshake hashes its transcript and derives every key
/// with the suite's hash, and SHA-256 runs on the CPU's SHA extensions (Intel since
/// Ice Lake, every AMD Zen) where SHA-512 has none (with ring it ran in portable code
/// on AMD, 5% of a STARTTLS session's CPU); AES-128 is also four rounds shorter per
/// block. Both sides use this order: the edge picks by it (server order), the
/// upstream leg offers it.
fn provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::cipher_suite as suite;
    Arc::new(CryptoProvider {
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
        ..aws_lc_rs::default_provider()
    })
}

// ---------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------

/// The TLS configs of one loaded config; shared by every core.
pub struct TlsContext {
    /// Present when `[tls]` is: the edge's certificates, for STARTTLS and implicit TLS.
    pub server: Option<Arc<ServerConfig>>,
    /// Per listener (same order as the config's): the upstream client config, `None`
    /// when `upstream_tls = off`.
    pub upstream: Vec<Option<Arc<ClientConfig>>>,
}

impl TlsContext {
    /// Reads every certificate, key and CA file the config names. The error names the
    /// file and what is wrong with it, one problem per line.
    pub fn load(config: &Config) -> Result<TlsContext, String> {
        Self::build(config, None)
    }

    /// Like [`TlsContext::load`], keeping `previous`'s ticket keys so that sessions
    /// resumed across a reload need no full handshake.
    pub fn reload(config: &Config, previous: &TlsContext) -> Result<TlsContext, String> {
        let ticketer = previous.server.as_ref().map(|s| s.ticketer.clone());
        Self::build(config, ticketer)
    }

    fn build(
        config: &Config,
        ticketer: Option<Arc<dyn ProducesTickets>>,
    ) -> Result<TlsContext, String> {
        let mut problems = Vec::new();
        let server = match &config.tls {
            Some(tls) => match server_config(tls, ticketer, SystemTime::now()) {
                Ok(server) => Some(server),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
            None => None,
        };
        let mut upstream = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let client = match listener.upstream_tls {
                UpstreamTls::Off => Ok(None),
                UpstreamTls::Opportunistic => Ok(Some(opportunistic_client_config())),
                UpstreamTls::Verify => {
                    verifying_client_config(listener.upstream_ca.as_deref()).map(Some)
                }
            };
            match client {
                Ok(client) => upstream.push(client),
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(TlsContext { server, upstream })
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// The edge's server config: `[tls]` cert and key, the `[[tls.sni]]` certificates, the
/// `[tls] protocols` (TLS 1.2 and 1.3 unless the file says otherwise), the cipher suite
/// chosen by [`provider`]'s order, session tickets (keys rotated every 6 hours) and a
/// session cache.
fn server_config(
    tls: &Tls,
    ticketer: Option<Arc<dyn ProducesTickets>>,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let default = Arc::new(load_pair(&tls.cert, &tls.key, &provider, now)?);
    let mut by_name = ResolvesServerCertUsingSni::new();
    for entry in &tls.sni {
        let pair = load_pair(&entry.cert, &entry.key, &provider, now)?;
        for name in &entry.names {
            by_name
                .add(&name.to_ascii_lowercase(), pair.clone())
                .map_err(|e| {
                    format!(
                        "{}: not usable for the name `{name}`: {e}",
                        entry.cert.display()
                    )
                })?;
        }
    }
    // Clients are asked for a certificate (not required, any accepted) so the TLS
    // event can say whether one was presented; none is authenticated by it.
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls
        .protocols
        .iter()
        .map(|version| match version {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_client_cert_verifier(AnyClientCertificate::new(provider))
        .with_cert_resolver(Arc::new(SniOrDefault { by_name, default }));
    config.ticketer = match ticketer {
        Some(ticketer) => ticketer,
        None => aws_lc_rs::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?,
    };
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    config.ignore_client_order = true;
    // One TLS 1.3 ticket per session, not rustls's two: a sending MTA resumes with one
    // and gets a fresh one each time, and every ticket costs a key derivation, a seal
    // and a record.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// Reads a PEM certificate chain and its PEM private key (PKCS#8; PKCS#1 and SEC1 are
/// read too) and checks that they belong together and that the certificate is valid
/// `now`. Every error names the file it is about.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<CertifiedKey, String> {
    let cert_name = cert_path.display();
    let key_name = key_path.display();
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert_name}: cannot read a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert_name}: no CERTIFICATE block found"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{key_name}: cannot read a PEM private key: {e}"))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_name}: unusable private key: {e}"))?;
    let pair = CertifiedKey::new(chain, key);
    pair.keys_match().map_err(|_| {
        format!("{key_name}: this key does not belong to the certificate in {cert_name}")
    })?;
    let (not_before, not_after) = validity(&pair.cert[0])
        .ok_or_else(|| format!("{cert_name}: cannot read the certificate's validity period"))?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > not_after {
        return Err(format!(
            "{cert_name}: the certificate expired on {}",
            utc_date(not_after)
        ));
    }
    if now < not_before {
        return Err(format!(
            "{cert_name}: the certificate is not valid before {}",
            utc_date(not_before)
        ));
    }
    Ok(pair)
}

/// Serves the `[[tls.sni]]` certificate for the name the client asked for, else the
/// `[tls]` one (also to clients that send no name, as most MTAs do).
#[derive(Debug)]
struct SniOrDefault {
    by_name: ResolvesServerCertUsingSni,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniOrDefault {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.by_name
            .resolve(hello)
            .or_else(|| Some(self.default.clone()))
    }
}

/// Upstream TLS without certificate checks (RFC 7435 opportunistic security): the
/// handshake's signatures are still verified, so the session key is the one the
/// certificate's holder agreed.
fn opportunistic_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = AnyServerCertificate::new(provider.clone());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Upstream TLS that checks the upstream's certificate against `ca` (PEM) or, without
/// it, the system's trust store (read with rustls-native-certs: the roots the
/// operator's distribution maintains, not a list compiled into the binary). The name
/// checked is the upstream's IP address, the only name the config has for it.
fn verifying_client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: cannot read PEM certificates: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{}: no usable CA certificate", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "upstream_tls = verify: no system CA certificates found; set upstream_ca"
                        .to_string(),
                );
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What one session may do with TLS, resolved at accept from its listener.
#[derive(Clone, Default)]
pub struct SessionTls {
    /// The edge's server config, for STARTTLS `inspect` and implicit TLS.
    pub server: Option<Arc<ServerConfig>>,
    /// The client config towards the upstream (`None` for `upstream_tls = off`) and
    /// the upstream's address, the name its certificate is checked against.
    pub upstream: Option<(Arc<ClientConfig>, IpAddr)>,
    /// TLS from the client's first byte.
    pub implicit: bool,
}

// ---------------------------------------------------------------------------------
// The per-side layer
// ---------------------------------------------------------------------------------

/// What a record buffer ([`record_buffer`]) holds in one allocation: SMTP's commands
/// and replies, and a small message's records, many times over.
const RECORD_ROOM: usize = 4096;

/// A buffer records are appended to and [`cut`] from: plaintext for the inspector,
/// ciphertext for a socket. Each piece cut shares its allocation, and once every piece
/// has been written and dropped, the next append takes the room back from the start
/// instead of allocating (`BytesMut::reserve` reclaims a buffer it holds alone).
pub fn record_buffer() -> BytesMut {
    BytesMut::with_capacity(RECORD_ROOM)
}

/// What `buf` holds, as `Bytes`, leaving `buf` empty and ready for the next records.
/// A piece larger than [`RECORD_ROOM`] (bulk) grew the allocation: it leaves with
/// that piece rather than staying with the session, and `buf` starts afresh.
pub fn cut(buf: &mut BytesMut) -> Bytes {
    let piece = buf.split().freeze();
    if piece.len() > RECORD_ROOM {
        *buf = record_buffer();
    }
    piece
}

/// TLS on one side of a session: ciphertext in, plaintext out, and back.
pub struct TlsLayer {
    conn: Connection,
    /// Ciphertext copied out of rustls for the socket, cut off by
    /// [`TlsLayer::take_ciphertext`].
    ciphertext: BytesMut,
    /// The established event was taken (it is reported once).
    reported: bool,
    /// The TLS 1.3 session ticket a server queues when the client's Finished arrives
    /// waits for the next record to the client (in SMTP there always is one: the reply
    /// to the client's new EHLO, or the greeting), so that both leave in one write
    /// instead of two: one send, one segment, one wake-up of the client fewer.
    ticket_held: bool,
    /// Plaintext was queued during the handshake: it leaves as soon as the handshake
    /// completes, with the ticket.
    sent_during_handshake: bool,
}

/// What the TLS-established event says about a side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Established {
    pub version: &'static str,
    pub cipher_suite: &'static str,
    /// The name the client asked for (server side only).
    pub sni: Option<String>,
    /// The peer sent a certificate (server side: the client did).
    pub peer_certificate: bool,
    /// A session resumed from a ticket or the cache: no full handshake.
    pub resumed: bool,
}

/// Why a handshake or a TLS session failed, as counted in `/status` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The peer sent a fatal alert.
    PeerAlert,
    /// The upstream's certificate did not verify.
    BadCertificate,
    /// No protocol version, cipher suite or key exchange in common.
    NoCommonParameters,
    /// Not TLS, or TLS out of order.
    Protocol,
    /// The peer closed the connection in the middle of the handshake.
    Eof,
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        FailureReason::PeerAlert,
        FailureReason::BadCertificate,
        FailureReason::NoCommonParameters,
        FailureReason::Protocol,
        FailureReason::Eof,
        FailureReason::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureReason::PeerAlert => "peer_alert",
            FailureReason::BadCertificate => "bad_certificate",
            FailureReason::NoCommonParameters => "no_common_parameters",
            FailureReason::Protocol => "protocol",
            FailureReason::Eof => "eof",
            FailureReason::Other => "other",
        }
    }

    fn of(error: &rustls::Error) -> FailureReason {
        use rustls::Error as E;
        match error {
            E::AlertReceived(_) => FailureReason::PeerAlert,
            E::InvalidCertificate(_) | E::NoCertificatesPresented => FailureReason::BadCertificate,
            E::PeerIncompatible(_) => FailureReason::NoCommonParameters,
            E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::InvalidMessage(_)
            | E::PeerMisbehaved(_)
            | E::DecryptError => FailureReason::Protocol,
            _ => FailureReason::Other,
        }
    }
}

/// A TLS session that cannot go on.
#[derive(Debug)]
pub struct TlsFailure {
    pub reason: FailureReason,
    /// During the handshake (counted) or after it.
    pub in_handshake: bool,
    pub detail: String,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = if self.in_handshake {
            "TLS handshake"
        } else {
            "TLS"
        };
        write!(f, "{when} failed ({}): {}", self.reason.name(), self.detail)
    }
}

/// What one [`TlsLayer::receive`] produced besides plaintext.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The peer sent close_notify: no more plaintext will come.
    pub closed: bool,
    /// What came in wants no answer, and the peer may be waiting for its
    /// acknowledgement: the socket should acknowledge now. A client's Finished that
    /// nothing answers at once (a TLS 1.3 ticket held, a TLS 1.2 resumption): a client
    /// with Nagle's algorithm on (OpenSSL's default: Python, Postfix) holds its next
    /// command, written separately, until the Finished is acknowledged, and the
    /// kernel's delayed ACK would wait 40 ms. A server's session tickets: the same on
    /// the upstream leg.
    pub acknowledge_now: bool,
}

impl TlsLayer {
    /// The server side of a client's session (after its STARTTLS, or from the first
    /// byte with implicit TLS).
    pub fn server(config: &Arc<ServerConfig>) -> TlsLayer {
        let conn = ServerConnection::new(config.clone()).expect("a valid server config");
        TlsLayer::new(conn.into())
    }

    /// The client side towards the upstream at `address`.
    pub fn client(config: &Arc<ClientConfig>, address: IpAddr) -> TlsLayer {
        let conn = ClientConnection::new(config.clone(), ServerName::IpAddress(address.into()))
            .expect("a valid client config and an IP address name");
        TlsLayer::new(conn.into())
    }

    fn new(mut conn: Connection) -> TlsLayer {
        // Plaintext written during the handshake (the client's new EHLO) waits inside
        // rustls; the relay's backpressure already bounds how much that can be.
        conn.set_buffer_limit(None);
        TlsLayer {
            conn,
            ciphertext: record_buffer(),
            reported: false,
            ticket_held: false,
            sent_during_handshake: false,
        }
    }

    /// Still handshaking: plaintext written now waits inside until it completes.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Feeds ciphertext read from the socket; appends the plaintext it carried.
    pub fn receive(
        &mut self,
        mut ciphertext: &[u8],
        plaintext: &mut BytesMut,
    ) -> Result<Received, TlsFailure> {
        let mut received = Received::default();
        let was_handshaking = self.conn.is_handshaking();
        let tickets_before = self.tickets_received();
        let plaintext_before = plaintext.len();
        while !ciphertext.is_empty() {
            self.conn.read_tls(&mut ciphertext).map_err(|e| {
                self.ticket_held = false;
                self.failure(FailureReason::Other, e.to_string())
            })?;
            let state = self.conn.process_new_packets().map_err(|e| {
                // The alert rustls queued goes out at once.
                self.ticket_held = false;
                let reason = FailureReason::of(&e);
                self.failure(reason, e.to_string())
            })?;
            received.closed |= state.peer_has_closed();
            // Copied straight from rustls's records into `plaintext` (no zeroed room
            // to read into): WouldBlock or an empty chunk once they are all taken.
            plaintext.reserve(state.plaintext_bytes_to_read());
            let mut reader = self.conn.reader();
            while let Ok(chunk) = reader.fill_buf() {
                if chunk.is_empty() {
                    break;
                }
                let taken = chunk.len();
                plaintext.extend_from_slice(chunk);
                reader.consume(taken);
            }
        }
        let server_done = was_handshaking
            && !self.conn.is_handshaking()
            && matches!(self.conn, Connection::Server(_));
        // Only a TLS 1.3 server has nothing but tickets to send once the client's
        // Finished is in (a TLS 1.2 server still owes its own Finished then).
        if server_done
            && !self.sent_during_handshake
            && self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
        {
            self.ticket_held = true;
        }
        // Acknowledged at once (see `Received::acknowledge_now`): the client's
        // Finished when nothing goes back, and a TLS 1.3 server's tickets (OpenSSL
        // writes two, each in a write of its own). Plaintext that came along gets a
        // reply, which carries the acknowledgement.
        received.acknowledge_now = (server_done || self.tickets_received() > tickets_before)
            && plaintext.len() == plaintext_before
            && (self.ticket_held || !self.conn.wants_write());
        Ok(received)
    }

    /// TLS 1.3 session tickets a client side has received from its server so far.
    fn tickets_received(&self) -> u32 {
        match &self.conn {
            Connection::Client(client) => client.tls13_tickets_received(),
            Connection::Server(_) => 0,
        }
    }

    /// The peer's connection ended (TCP EOF): a failure when it was mid-handshake.
    pub fn eof(&self) -> Result<(), TlsFailure> {
        if self.conn.is_handshaking() {
            Err(self.failure(FailureReason::Eof, "connection closed".to_string()))
        } else {
            Ok(())
        }
    }

    /// Queues plaintext for the peer; it leaves as ciphertext from
    /// [`TlsLayer::take_ciphertext`] (after the handshake, if one is under way).
    pub fn send(&mut self, plaintext: &[u8]) {
        self.ticket_held = false;
        self.sent_during_handshake |= self.conn.is_handshaking();
        // With no buffer limit the writer takes everything.
        let _ = self.conn.writer().write_all(plaintext);
    }

    /// Sends close_notify (before a clean close of the connection).
    pub fn close(&mut self) {
        self.ticket_held = false;
        self.conn.send_close_notify();
    }

    /// Everything rustls has to send (handshake messages, records), or `None`; a TLS
    /// 1.3 server's session ticket waits for the next plaintext sent, or the close.
    pub fn take_ciphertext(&mut self) -> Option<Bytes> {
        if self.ticket_held || !self.conn.wants_write() {
            return None;
        }
        let mut out = (&mut self.ciphertext).writer();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        (!self.ciphertext.is_empty()).then(|| cut(&mut self.ciphertext))
    }

    /// Once, right after the handshake completes: what was negotiated.
    pub fn take_established(&mut self) -> Option<Established> {
        if self.reported || self.conn.is_handshaking() {
            return None;
        }
        self.reported = true;
        let (sni, peer_certificate) = match &self.conn {
            Connection::Server(server) => (
                server.server_name().map(str::to_string),
                server.peer_certificates().is_some_and(|c| !c.is_empty()),
            ),
            Connection::Client(client) => (
                None,
                client.peer_certificates().is_some_and(|c| !c.is_empty()),
            ),
        };
        Some(Established {
            version: self
                .conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown"),
            cipher_suite: self
                .conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            sni,
            peer_certificate,
            resumed: self.conn.handshake_kind() == Some(HandshakeKind::Resumed),
        })
    }

    fn failure(&self, reason: FailureReason, detail: String) -> TlsFailure {
        TlsFailure {
            reason,
            in_handshake: self.conn.is_handshaking(),
            detail,
        }
    }
}

// ---------------------------------------------------------------------------------
// Certificate validity (for expiry checks and messages)
// ---------------------------------------------------------------------------------

/// `(notBefore, notAfter)` of a DER X.509 certificate, in seconds since the epoch:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } }`.
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (_, certificate, _) = der_item(cert)?;
    let (_, mut tbs, _) = der_item(certificate)?;
    let (tag, _, rest) = der_item(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // explicit version
    }
    for _ in 0..3 {
        let (_, _, rest) = der_item(tbs)?; // serial, signature algorithm, issuer
        tbs = rest;
    }
    let (_, validity, _) = der_item(tbs)?;
    let (before_tag, before, rest) = der_item(validity)?;
    let (after_tag, after, _) = der_item(rest)?;
    Some((der_time(before_tag, before)?, der_time(after_tag, after)?))
}

/// One DER TLV: (tag, contents, what follows).
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        rest = &rest[count..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18).
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as i64)
        })
    };
    let (year, rest) = match tag {
        0x17 if text.len() >= 12 => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() >= 14 => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| digits(&rest[i..i + 2]);
    let days = days_from_civil(year, field(0)?, field(2)?);
    Some(days * 86_400 + field(4)? * 3600 + field(6)? * 60 + field(8)?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (UTC) of seconds since the epoch.
fn utc_date(seconds: i64) -> String {
    let z = seconds.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests;
