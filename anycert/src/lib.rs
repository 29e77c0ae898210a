//! rustls certificate verifiers for the cases where no certificate is to be trusted or
//! refused, only used: opportunistic TLS to an SMTP server (RFC 7435: encrypt
//! whatever the peer shows), and asking SMTP clients for a certificate only to
//! report whether they presented one. Either way the handshake's signatures are
//! still checked against the certificate shown, so the session key is the one its
//! holder agreed to. Shared by the dataplane, the load generator and the benches.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// A client's verifier that accepts whatever certificate the server shows.
#[derive(Debug)]
pub struct AnyServerCertificate(Signatures);

impl AnyServerCertificate {
    /// Signatures are checked with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<AnyServerCertificate> {
        Arc::new(AnyServerCertificate(Signatures(provider)))
    }
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// A server's verifier that asks clients for a certificate without requiring one,
/// and accepts any.
#[derive(Debug)]
pub struct AnyClientCertificate(Signatures);

impl AnyClientCertificate {
    /// Signatures are checked with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<AnyClientCertificate> {
        Arc::new(AnyClientCertificate(Signatures(provider)))
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// The handshake signature checks both verifiers make, with one provider's algorithms.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::ring;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(ring::default_provider())
    }

    fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let pair = rcgen::generate_simple_self_signed(vec!["mx.example".to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(pair.signing_key.serialize_der()).unwrap();
        (pair.cert.der().clone(), key)
    }

    /// Runs a handshake in memory between the two configs; says whether it completed.
    fn handshake(client: ClientConfig, server: ServerConfig) -> Result<ServerConnection, Error> {
        let name = ServerName::try_from("mx.example").unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name)?;
        let mut server = ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut flight = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut flight).unwrap();
            }
            server.read_tls(&mut flight.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut flight = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut flight).unwrap();
            }
            client.read_tls(&mut flight.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server);
            }
        }
        panic!("the handshake did not finish in ten round trips");
    }

    fn server_config(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> ServerConfig {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(AnyClientCertificate::new(provider()))
            .with_single_cert(vec![cert], key)
            .unwrap()
    }

    fn client_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(AnyServerCertificate::new(provider()))
    }

    #[test]
    fn any_self_signed_server_is_accepted_and_a_client_certificate_is_optional() {
        let (cert, key) = self_signed();
        let server = handshake(
            client_builder().with_no_client_auth(),
            server_config(cert, key),
        )
        .expect("a self-signed certificate no root vouches for is accepted");
        assert!(server.peer_certificates().is_none());
    }

    #[test]
    fn a_client_certificate_is_accepted_and_seen() {
        let (server_cert, server_key) = self_signed();
        let (client_cert, client_key) = self_signed();
        let client = client_builder()
            .with_client_auth_cert(vec![client_cert.clone()], client_key)
            .unwrap();
        let server = handshake(client, server_config(server_cert, server_key)).unwrap();
        assert_eq!(server.peer_certificates(), Some(&[client_cert][..]));
    }

    /// Serves one certificate while signing with another key.
    #[derive(Debug)]
    struct Mismatched(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Mismatched {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn a_server_that_does_not_hold_the_certificate_s_key_is_refused() {
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let signing_key = provider().key_provider.load_private_key(other_key).unwrap();
        let certified = rustls::sign::CertifiedKey::new(vec![cert], signing_key);
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Mismatched(Arc::new(certified))));
        let e = handshake(client_builder().with_no_client_auth(), server).unwrap_err();
        assert!(
            matches!(e, Error::InvalidCertificate(_) | Error::PeerMisbehaved(_)),
            "{e:?}"
        );
    }
}
