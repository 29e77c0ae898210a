//! TLS for `send` (`--starttls`, `--implicit-tls`) and `sink` (`--starttls`): a
//! [`Stream`] that is a plain TCP stream or a rustls session over one, and the configs
//! both ends use. Without `--tls-ca` the sender accepts any certificate (what MTAs do
//! with opportunistic STARTTLS); without `--tls-cert/--tls-key` the sink makes a
//! self-signed pair in memory at start.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_rustls::rustls::crypto::{ring, CryptoProvider};
use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use futures_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::TcpStream;
use smtpgate_anycert::AnyServerCertificate;

/// A connection before or after its TLS handshake.
pub enum Stream {
    Plain(TcpStream),
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Writes everything and pushes it onto the wire (TLS records are otherwise kept
    /// back when the socket would block).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        if !matches!(self, Stream::Plain(_)) {
            self.flush().await?;
        }
        Ok(())
    }

    /// The TCP stream, for a TLS handshake over it.
    pub fn into_plain(self) -> io::Result<TcpStream> {
        match self {
            Stream::Plain(tcp) => Ok(tcp),
            _ => Err(io::Error::other("TLS is already on")),
        }
    }

    /// Client handshake towards `address` (the name checked when verifying).
    pub async fn connect(self, config: &Arc<ClientConfig>, address: IpAddr) -> io::Result<Stream> {
        let tcp = self.into_plain()?;
        let name = ServerName::IpAddress(address.into());
        let tls = TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await?;
        Ok(Stream::Client(Box::new(tls)))
    }

    /// Server handshake.
    pub async fn accept(self, config: &Arc<ServerConfig>) -> io::Result<Stream> {
        let tcp = self.into_plain()?;
        let tls = TlsAcceptor::from(config.clone()).accept(tcp).await?;
        Ok(Stream::Server(Box::new(tls)))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The sender's config: verifying against the PEM CA file `ca`, or accepting any
/// certificate without one.
pub fn client_config(ca: Option<&Path>) -> io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let config = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
            if roots.add_parsable_certificates(certs).0 == 0 {
                return Err(io::Error::other(format!(
                    "{}: no usable CA certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(AnyServerCertificate::new(provider()))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The sink's config: the PEM pair given, or a self-signed one made now (for
/// `localhost` and 127.0.0.1).
pub fn server_config(cert_and_key: Option<(&Path, &Path)>) -> io::Result<Arc<ServerConfig>> {
    let (chain, key) = match cert_and_key {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| io::Error::other(format!("{}: {e}", key.display())))?;
            (chain, key)
        }
        None => {
            let pair = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .map_err(io::Error::other)?;
            let key = PrivateKeyDer::try_from(pair.signing_key.serialize_der())
                .map_err(io::Error::other)?;
            (vec![pair.cert.der().clone()], key)
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    config.ticketer = ring::Ticketer::new().map_err(io::Error::other)?;
    Ok(Arc::new(config))
}
