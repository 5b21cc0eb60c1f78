//! TLS to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` in the connection string, carried out with rustls (ring) under
//! tokio-postgres, which itself knows only disable/prefer/require.
//!
//! Invariants:
//! - The modes mean what libpq documents: `disable` never encrypts;
//!   `prefer` (the default, as in libpq) and `require` encrypt without
//!   checking who answers, except that `require` with `sslrootcert` checks
//!   the chain as `verify-ca` does (libpq's rule); `verify-ca` checks the
//!   server's chain against `sslrootcert` only; `verify-full` also checks
//!   that the certificate names the host connected to. The verifying modes
//!   trust `sslrootcert` alone (CA pinning) and refuse to start without it.
//! - `sslcert` and `sslkey` go together: the client certificate is
//!   presented for `cert` authentication; a key readable by every user is
//!   refused, as for the broker.
//! - The four keys are taken out of the string before tokio-postgres reads
//!   the rest, so everything else keeps tokio-postgres' own meaning and
//!   errors.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Why the TLS part of a connection string cannot be used.
#[derive(Debug, Error)]
pub enum PgTlsError {
    #[error("sslmode: '{0}': use disable, prefer, require, verify-ca or verify-full")]
    Mode(String),
    #[error("sslmode={0} checks the server's certificate: set sslrootcert to the CA that signed it")]
    NoRoot(&'static str),
    #[error("sslcert and sslkey go together: set both or neither")]
    HalfPair,
    #[error("{0}")]
    Files(#[from] crate::mqtt::tls::TlsError),
    #[error("the connection string: {0}")]
    Syntax(String),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Splits `url` into the string tokio-postgres reads and the TLS settings.
pub fn split(url: &str) -> Result<(String, PgTls), PgTlsError> {
    let mut tls = PgTls {
        mode: SslMode::Prefer,
        root: None,
        cert: None,
        key: None,
    };
    let mut take = |k: &str, v: &str| -> Result<bool, PgTlsError> {
        match k {
            "sslmode" => {
                tls.mode = match v {
                    "disable" => SslMode::Disable,
                    "prefer" | "allow" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => return Err(PgTlsError::Mode(other.to_string())),
                }
            }
            "sslrootcert" => tls.root = Some(v.into()),
            "sslcert" => tls.cert = Some(v.into()),
            "sslkey" => tls.key = Some(v.into()),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(url)? {
            if !take(&k, &v)? {
                kept.push(format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")));
            }
        }
        kept.join(" ")
    };
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(PgTlsError::HalfPair);
    }
    if tls.mode == SslMode::Require && tls.root.is_some() {
        tls.mode = SslMode::VerifyCa;
    }
    match (tls.mode, &tls.root) {
        (SslMode::VerifyCa, None) => return Err(PgTlsError::NoRoot("verify-ca")),
        (SslMode::VerifyFull, None) => return Err(PgTlsError::NoRoot("verify-full")),
        _ => {}
    }
    Ok((rest, tls))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `key=value` list: values bare or single-quoted with `\` escapes.
fn key_values(s: &str) -> Result<Vec<(String, String)>, PgTlsError> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(PgTlsError::Syntax(format!("'{key}' has no value (key=value)")));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    Some('\\') => value.extend(it.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(PgTlsError::Syntax(format!("the value of '{key}' is not closed with '"))),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                value.push(if c == '\\' { it.next().unwrap_or('\\') } else { c });
            }
        }
        out.push((key, value));
    }
}

/// Accepts any server certificate but still checks the handshake's
/// signatures (`prefer`, `require`: encrypted, not authenticated).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls client configuration of `tls` (its files read and checked
/// now), or `None` for `disable`.
pub fn client_config(tls: &PgTls) -> Result<Option<Arc<ClientConfig>>, PgTlsError> {
    use crate::mqtt::settings::TlsConfig;
    if tls.mode == SslMode::Disable {
        return Ok(None);
    }
    // The broker's builder reads and checks the files: CA, pair, key mode.
    let files = TlsConfig {
        ca: tls.root.clone(),
        system_roots: false,
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        server_name: None,
    };
    if tls.mode == SslMode::VerifyFull {
        return Ok(Some(crate::mqtt::tls::client_config(&files, UnixTime::now())?));
    }
    // The CA is read once: the chain's anchors for verify-ca, a check of
    // the file for the modes that do not verify (libpq reads it too).
    let roots = tls
        .root
        .is_some()
        .then(|| crate::mqtt::tls::root_store(&files))
        .transpose()?;
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, roots) {
        (SslMode::VerifyCa, Some(roots)) => Arc::new(crate::mqtt::tls::PinnedVerifier::chain_only(roots)?),
        (SslMode::VerifyCa, None) => return Err(PgTlsError::NoRoot("verify-ca")),
        _ => Arc::new(AnyServer(Arc::new(rustls::crypto::ring::default_provider()))),
    };
    let config = crate::mqtt::tls::client_config_verified_by(&files, verifier)?;
    Ok(Some(config))
}

/// tokio-postgres' TLS connector over rustls.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{domain:?} is not a host name")))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
            name,
        })
    }
}

/// One TLS handshake to a server.
pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { Ok(RustlsStream(self.connector.connect(self.name, stream).await?)) })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM's channel binding needs the hash of the server certificate's
        // own signature algorithm; without it, SCRAM runs unbound, as
        // libpq's default (channel_binding=prefer) allows.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssl_keys_are_taken_out_of_either_form_and_the_rest_is_kept() {
        let (rest, tls) =
            split("host=db.plant user=spb sslmode=verify-full sslrootcert='/etc/spb/ca dir/ca.pem' dbname=plant")
                .expect("valid");
        assert_eq!(rest, "host='db.plant' user='spb' dbname='plant'");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(
            tls.root.as_deref(),
            Some(std::path::Path::new("/etc/spb/ca dir/ca.pem"))
        );
        rest.parse::<tokio_postgres::Config>()
            .expect("tokio-postgres reads the rest");
        let (rest, tls) =
            split("postgres://spb@db.plant/plant?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .expect("valid");
        assert_eq!(rest, "postgres://spb@db.plant/plant?application_name=x");
        assert_eq!(
            (tls.mode, tls.root.as_deref()),
            (SslMode::VerifyCa, Some(std::path::Path::new("/etc/ca.pem")))
        );
        let (_, tls) = split("host=db").expect("valid");
        assert_eq!(tls.mode, SslMode::Prefer, "libpq's default");
        let (_, tls) = split("host=db sslmode=require sslrootcert=/ca.pem").expect("valid");
        assert_eq!(
            tls.mode,
            SslMode::VerifyCa,
            "libpq: require with a root certificate verifies the chain"
        );
    }

    #[test]
    fn a_verifying_mode_without_a_ca_or_half_a_key_pair_is_refused_with_the_key_to_fix() {
        let e = |s: &str| split(s).expect_err(s).to_string();
        assert!(e("host=db sslmode=verify-full").contains("set sslrootcert"));
        assert!(e("host=db sslmode=maybe").contains("'maybe': use disable, prefer"));
        assert!(e("host=db sslcert=/c.pem").contains("sslcert and sslkey go together"));
        assert!(e("host=db dbname='plant").contains("not closed"));
        let missing = client_config(
            &split("host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem")
                .expect("valid")
                .1,
        )
        .expect_err("unreadable CA")
        .to_string();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
    }
}
