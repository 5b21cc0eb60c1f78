//! rustls client configuration for the broker connection: CA pinning, client
//! certificates for mTLS, and errors a technician can act on.
//!
//! Invariants: only the configured CA is trusted unless `system_roots = true`;
//! the client key must match the client certificate; an expired or not-yet-
//! valid client certificate is refused at startup, not discovered as a broker
//! hang-up. PEM files are read with rustls-pki-types' `PemObject` (what
//! rustls-pemfile 2 delegates to; rustls-pemfile itself is marked unmaintained
//! in RustSec, so we use its successor API directly). Keys may be PKCS#8, RSA
//! (PKCS#1) or SEC1 EC. With `tls.server_name`, the broker's certificate is
//! verified against that name instead of `host` (a broker reached by its IP
//! address whose certificate names it by DNS); the name is checked when the
//! configuration is built.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;

use super::settings::TlsConfig;

/// Why a TLS configuration cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{key}: cannot read {path}: {reason}")]
    Read {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {path} holds no PEM certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("tls.ca: {path}: certificate rejected as a trust anchor: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("tls.key: {path} does not match the client certificate {cert}: {reason}")]
    KeyMismatch {
        path: PathBuf,
        cert: PathBuf,
        reason: String,
    },
    #[error("tls: no trust anchors: set tls.ca or tls.system_roots = true")]
    NoRoots,
    #[error("tls.server_name: {name:?} is not a DNS name or an IP address")]
    BadServerName { name: String },
    #[error("tls.key: {path} is readable by every user (mode {mode:03o}): run `chmod 600 {path}` (or 640 with the service's group)")]
    KeyReadableByAll { path: PathBuf, mode: u32 },
}

/// A private key must not be readable by every user; readable by the group
/// is allowed (a service group) but said once at startup.
fn check_key_mode(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // Reading it says why.
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Err(TlsError::KeyReadableByAll {
            path: path.into(),
            mode,
        });
    }
    if mode & 0o040 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:03o}"), "tls.key is readable by its group");
    }
    Ok(())
}

/// The pinned CA's chain check (webpki) with a different rule for the name:
/// the configured `tls.server_name` instead of the name the connection was
/// opened with (the broker), or no name at all (PostgreSQL's `verify-ca`).
#[derive(Debug)]
pub struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    /// `Some`: check this name; `None`: the chain only.
    name: Option<ServerName<'static>>,
}

impl PinnedVerifier {
    /// The chain against `roots`, whatever name the certificate holds.
    pub fn chain_only(roots: RootCertStore) -> Result<PinnedVerifier, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|_| TlsError::NoRoots)?;
        Ok(PinnedVerifier { inner, name: None })
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        connected_to: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(connected_to);
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) if self.name.is_none() => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        key,
        path: path.into(),
        reason: e.to_string(),
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            key,
            path: path.into(),
            reason: format!("not PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { key, path: path.into() });
    }
    Ok(certs)
}

/// The trust anchors of `tls`: the pinned CA, and the web roots if asked.
pub fn root_store(tls: &TlsConfig) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        for cert in read_certs("tls.ca", ca)? {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    if tls.system_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// A client configuration whose server certificates `verifier` judges
/// (`tls.ca` is the caller's to read), with the client certificate of
/// `tls`.
pub fn client_config_verified_by(
    tls: &TlsConfig,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    with_client_auth(tls, builder)
}

/// Builds the rustls client configuration; `now` checks the client certificate's validity.
pub fn client_config(tls: &TlsConfig, now: UnixTime) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(tls)?;
    let _ = now;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match &tls.server_name {
        None => versions.with_root_certificates(roots),
        Some(name) => {
            let name =
                ServerName::try_from(name.clone()).map_err(|_| TlsError::BadServerName { name: name.clone() })?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|_| TlsError::NoRoots)?;
            versions
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    inner,
                    name: Some(name),
                }))
        }
    };
    with_client_auth(tls, builder)
}

/// The client certificate and key of `tls`, or none.
fn with_client_auth(
    tls: &TlsConfig,
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = match (&tls.cert, &tls.key) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs("tls.cert", cert_path)?;
            // Validity is not judged here: a box without a real-time clock
            // boots at 1970 and must poll and store from its first second.
            // `certificate_problem` says it, at --check-config and at each connect.
            check_key_mode(key_path)?;
            let key_bytes = std::fs::read(key_path).map_err(|e| TlsError::Read {
                key: "tls.key",
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
            let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Read {
                key: "tls.key",
                path: key_path.clone(),
                reason: format!("no PKCS#8, RSA or EC private key in PEM: {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::KeyMismatch {
                    path: key_path.clone(),
                    cert: cert_path.clone(),
                    reason: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A rustls server configuration for an HTTPS listener (the uplink's
/// command API): its certificate and key, and the CA whose client
/// certificates it verifies. A client without a certificate is let through
/// the handshake (it may still hold an API token); one with a certificate
/// that `client_ca` did not sign is refused by the handshake.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in read_certs("commands.https_client_ca", client_ca)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: client_ca.into(),
            reason: e.to_string(),
        })?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::BadCa {
            path: client_ca.into(),
            reason: e.to_string(),
        })?;
    let chain = read_certs("commands.https_cert", cert_path)?;
    check_key_mode(key_path)?;
    let key_bytes = std::fs::read(key_path).map_err(|e| TlsError::Read {
        key: "commands.https_key",
        path: key_path.into(),
        reason: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Read {
        key: "commands.https_key",
        path: key_path.into(),
        reason: format!("no PKCS#8, RSA or EC private key in PEM: {e}"),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| TlsError::NoRoots)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::KeyMismatch {
            path: key_path.into(),
            cert: cert_path.into(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// The subject's common name (CN) of a DER certificate.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    der::subject_cn(cert)
}

/// What is wrong with the client certificate's validity at `now`, if
/// anything ("expired on …", "is not valid yet (valid from …)"); its expiry
/// when that is less than `warn_days` away (a warning, the second value).
pub fn certificate_problem(
    tls: &TlsConfig,
    now: UnixTime,
    warn_days: u64,
) -> Result<(Option<String>, Option<String>), TlsError> {
    let Some(cert_path) = &tls.cert else {
        return Ok((None, None));
    };
    let chain = read_certs("tls.cert", cert_path)?;
    if let Err(problem) = check_validity(&chain[0], now) {
        return Ok((
            Some(format!(
                "the client certificate {cert} {problem}",
                cert = cert_path.display()
            )),
            None,
        ));
    }
    let soon = der::validity(chain[0].as_ref()).and_then(|(_, not_after)| {
        (not_after.saturating_sub(now.as_secs()) < warn_days * 86_400).then(|| {
            format!(
                "the client certificate {} expires on {}",
                cert_path.display(),
                der::format_time(not_after)
            )
        })
    });
    Ok((None, soon))
}

/// What `--check-config` finds in the servers' TLS settings, as (errors,
/// warnings) naming each `mqtt.servers[i]` key: files that cannot be read,
/// a key that does not match its certificate, a client certificate that is
/// not valid at `now_ms` (a warning with a clock before 2020, a box without
/// a real-time clock, and with `at_boot`, where the program should start
/// anyway), one that expires within 30 days (a warning).
pub fn check_servers(
    servers: &[super::settings::ServerConfig],
    now_ms: u64,
    at_boot: bool,
) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_millis(now_ms));
    for (i, s) in servers.iter().enumerate() {
        let Some(t) = &s.tls else { continue };
        if let Err(e) = client_config(t, now) {
            errors.push(format!("mqtt.servers[{i}].{e}"));
            continue;
        }
        match certificate_problem(t, now, 30) {
            Ok((Some(problem), _)) if at_boot => warnings.push(format!(
                "mqtt.servers[{i}].tls.cert: {problem}: the program starts (the gateway polls and stores), but cannot connect until it is replaced"
            )),
            Ok((Some(problem), _)) if clock_is_plausible(now.as_secs()) => {
                errors.push(format!("mqtt.servers[{i}].tls.cert: {problem}"))
            }
            Ok((Some(problem), _)) => warnings.push(format!(
                "mqtt.servers[{i}].tls.cert: {problem}; the system clock says {} (not set yet?)",
                format_time(now.as_secs())
            )),
            Ok((None, Some(soon))) => warnings.push(format!("mqtt.servers[{i}].tls.cert: {soon}")),
            Ok((None, None)) => {}
            Err(e) => errors.push(format!("mqtt.servers[{i}].{e}")),
        }
    }
    (errors, warnings)
}

/// `secs` since the epoch as a UTC date and time, for messages.
pub fn format_time(secs: u64) -> String {
    der::format_time(secs)
}

/// Whether a clock reading (seconds since the epoch) can be trusted to judge
/// a certificate: before 2020 it is a box that booted without a real-time clock.
pub fn clock_is_plausible(now_secs: u64) -> bool {
    now_secs >= 1_577_836_800
}

/// Reads notBefore/notAfter from a certificate's DER and checks `now` is inside.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), String> {
    let (not_before, not_after) = der::validity(cert.as_ref()).ok_or("could not be parsed (not X.509 DER)")?;
    let now = now.as_secs();
    if now < not_before {
        return Err(format!(
            "is not valid yet (valid from {})",
            der::format_time(not_before)
        ));
    }
    if now > not_after {
        return Err(format!("expired on {}", der::format_time(not_after)));
    }
    Ok(())
}

/// Just enough DER to find a certificate's validity period.
mod der {
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&l0, rest) = rest.split_first()?;
        let (len, rest) = if l0 < 0x80 {
            (usize::from(l0), rest)
        } else {
            let n = usize::from(l0 & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    /// (notBefore, notAfter) in Unix seconds.
    pub fn validity(cert: &[u8]) -> Option<(u64, u64)> {
        let (_, certificate, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(certificate)?;
        let mut rest = tbs;
        let (tag, _, r) = tlv(rest)?;
        if tag == 0xa0 {
            rest = r; // explicit version
        }
        for _ in 0..3 {
            rest = tlv(rest)?.2; // serial, signature algorithm, issuer
        }
        let (_, validity, _) = tlv(rest)?;
        let (t1, nb, r) = tlv(validity)?;
        let (t2, na, _) = tlv(r)?;
        Some((time(t1, nb)?, time(t2, na)?))
    }

    /// The subject's CN: the Name after the validity, a SEQUENCE of SETs
    /// of (OID, value); CN is OID 2.5.4.3.
    pub fn subject_cn(cert: &[u8]) -> Option<String> {
        let (_, certificate, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(certificate)?;
        let mut rest = tbs;
        let (tag, _, r) = tlv(rest)?;
        if tag == 0xa0 {
            rest = r;
        }
        for _ in 0..4 {
            rest = tlv(rest)?.2; // serial, signature algorithm, issuer, validity
        }
        let (_, mut rdns, _) = tlv(rest)?;
        while !rdns.is_empty() {
            let (_, set, next) = tlv(rdns)?;
            rdns = next;
            let (_, atv, _) = tlv(set)?;
            let (_, oid, value) = tlv(atv)?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, v, _) = tlv(value)?;
                return std::str::from_utf8(v).ok().map(str::to_string);
            }
        }
        None
    }

    fn time(tag: u8, s: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(s).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 => {
                let y: i64 = s.get(..2)?.parse().ok()?;
                (if y >= 50 { 1900 + y } else { 2000 + y }, s.get(2..)?)
            }
            0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
        let days = crate::clock::days_from_civil(year, n(0)?, n(2)?);
        u64::try_from(days * 86400 + n(4)? * 3600 + n(6)? * 60 + n(8)?).ok()
    }

    pub fn format_time(secs: u64) -> String {
        let (y, m, d) = crate::clock::civil_from_days((secs / 86400) as i64);
        format!("{y:04}-{m:02}-{d:02} UTC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(dir: &Path, not_after: time::OffsetDateTime) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["gw-01".to_string()]).expect("params");
        params.not_after = not_after;
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        let (ca_p, cert_p, key_p) = (dir.join("ca.pem"), dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&ca_p, ca.pem()).expect("write");
        std::fs::write(&cert_p, cert.pem()).expect("write");
        write_key(&key_p, key.serialize_pem());
        (ca_p, cert_p, key_p)
    }

    /// A private key as a careful installer leaves it: mode 600.
    fn write_key(path: &Path, pem: String) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, pem).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[test]
    fn a_client_key_readable_by_every_user_is_refused_with_the_chmod_to_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let (ca, cert, key) = pki(dir.path(), time::OffsetDateTime::now_utc() + time::Duration::days(30));
        for (mode, ok) in [(0o600, true), (0o640, true), (0o644, false), (0o604, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let r = client_config(&tls(ca.clone(), cert.clone(), key.clone()), UnixTime::now());
            assert_eq!(r.is_ok(), ok, "mode {mode:o}");
            if !ok {
                let e = r.expect_err("refused").to_string();
                assert!(e.contains("readable by every user") && e.contains("chmod 600"), "{e}");
            }
        }
    }

    fn tls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> TlsConfig {
        TlsConfig {
            ca: Some(ca),
            system_roots: false,
            cert: Some(cert),
            key: Some(key),
            server_name: None,
        }
    }

    /// A TLS handshake in memory between `client` (connecting to
    /// 127.0.0.1, as rumqttc does with `host`) and a server presenting
    /// `cert`; the client's error if it fails.
    fn handshake(client: Arc<ClientConfig>, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Result<(), String> {
        let server_cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
                )
                .expect("server config");
        let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut c = rustls::ClientConnection::new(client, ip).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server_cfg)).expect("server");
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).map_err(|e| e.to_string())?;
            }
            s.process_new_packets().map_err(|e| format!("server: {e}"))?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).map_err(|e| e.to_string())?;
            }
            c.process_new_packets().map_err(|e| e.to_string())?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    #[test]
    fn tls_server_name_is_the_name_the_brokers_certificate_is_checked_against() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        // The broker's certificate names it by DNS only; we reach it by IP.
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = rcgen::CertificateParams::new(vec!["broker.plant.test".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("leaf");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write");
        let cfg = |name: Option<&str>| TlsConfig {
            ca: Some(ca_path.clone()),
            system_roots: false,
            cert: None,
            key: None,
            server_name: name.map(str::to_string),
        };
        let named = client_config(&cfg(Some("broker.plant.test")), UnixTime::now()).expect("config");
        assert_eq!(handshake(named, &cert, &key), Ok(()));
        let by_ip = client_config(&cfg(None), UnixTime::now()).expect("config");
        let e = handshake(by_ip, &cert, &key).expect_err("the certificate does not name 127.0.0.1");
        assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
        let wrong = client_config(&cfg(Some("other.plant.test")), UnixTime::now()).expect("config");
        assert!(
            handshake(wrong, &cert, &key).is_err(),
            "a wrong server_name is refused too"
        );
        assert!(matches!(
            client_config(&cfg(Some("not a name!")), UnixTime::now()),
            Err(TlsError::BadServerName { .. })
        ));
    }

    #[test]
    fn valid_pki_builds_a_client_config() {
        let dir = tempfile::tempdir().expect("tmp");
        let (ca, cert, key) = pki(dir.path(), time::OffsetDateTime::now_utc() + time::Duration::days(30));
        assert!(client_config(&tls(ca, cert, key), UnixTime::now()).is_ok());
    }

    #[test]
    fn an_expired_client_certificate_is_reported_with_its_date_but_does_not_stop_the_config() {
        let dir = tempfile::tempdir().expect("tmp");
        let (ca, cert, key) = pki(
            dir.path(),
            time::OffsetDateTime::from_unix_timestamp(1_600_000_000).expect("ts"),
        );
        let t = tls(ca, cert, key);
        assert!(client_config(&t, UnixTime::now()).is_ok(), "polling and storing go on");
        let (problem, _) = certificate_problem(&t, UnixTime::now(), 30).expect("readable");
        let problem = problem.expect("expired");
        assert!(problem.contains("expired on 2020-09-13 UTC"), "{problem}");
    }

    #[test]
    fn a_certificate_not_yet_valid_at_1970_is_reported_and_one_expiring_soon_warned() {
        let dir = tempfile::tempdir().expect("tmp");
        let (ca, cert, key) = pki(dir.path(), time::OffsetDateTime::now_utc() + time::Duration::days(10));
        let t = tls(ca, cert, key);
        let boot = UnixTime::since_unix_epoch(std::time::Duration::from_secs(60));
        assert!(!clock_is_plausible(60) && clock_is_plausible(1_800_000_000));
        let (problem, _) = certificate_problem(&t, boot, 30).expect("readable");
        assert!(problem.expect("not yet valid").contains("is not valid yet (valid from"));
        let (problem, soon) = certificate_problem(&t, UnixTime::now(), 30).expect("readable");
        assert_eq!(problem, None);
        assert!(soon.expect("within 30 days").contains("expires on"));
        assert_eq!(certificate_problem(&t, UnixTime::now(), 5).expect("readable").1, None);
    }

    #[test]
    fn key_that_does_not_match_the_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let (ca, cert, _) = pki(dir.path(), time::OffsetDateTime::now_utc() + time::Duration::days(30));
        let other = dir.path().join("other.key");
        write_key(&other, rcgen::KeyPair::generate().expect("key").serialize_pem());
        let err = client_config(&tls(ca, cert, other), UnixTime::now())
            .expect_err("mismatch")
            .to_string();
        assert!(err.contains("does not match the client certificate"), "{err}");
    }

    #[test]
    fn missing_key_file_names_the_key_and_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let (ca, cert, _) = pki(dir.path(), time::OffsetDateTime::now_utc() + time::Duration::days(30));
        let err = client_config(&tls(ca, cert, dir.path().join("nope.key")), UnixTime::now())
            .expect_err("missing")
            .to_string();
        assert!(
            err.starts_with("tls.key: cannot read") && err.contains("nope.key"),
            "{err}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let cfg = TlsConfig {
            ca: Some(empty),
            system_roots: false,
            cert: None,
            key: None,
            server_name: None,
        };
        assert!(matches!(
            client_config(&cfg, UnixTime::now()),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    /// A self-signed certificate for a key openssl writes in its traditional
    /// format (PKCS#1 "RSA PRIVATE KEY" or SEC1 "EC PRIVATE KEY").
    fn openssl_pair(dir: &Path, kind: &str) -> (PathBuf, PathBuf) {
        let key = dir.join(format!("{kind}.key"));
        let cert = dir.join(format!("{kind}.pem"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl is installed (make deps)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let k = key.to_str().expect("utf-8 path");
        match kind {
            "rsa" => run(&["genrsa", "-traditional", "-out", k, "2048"]),
            _ => run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", k]),
        }
        let c = cert.to_str().expect("utf-8 path");
        run(&[
            "req",
            "-new",
            "-x509",
            "-key",
            k,
            "-out",
            c,
            "-days",
            "2",
            "-subj",
            "/CN=gw-01",
        ]);
        (cert, key)
    }

    #[test]
    fn rsa_pkcs1_and_sec1_ec_client_keys_are_accepted() {
        let dir = tempfile::tempdir().expect("tmp");
        for (kind, header) in [("rsa", "BEGIN RSA PRIVATE KEY"), ("ec", "BEGIN EC PRIVATE KEY")] {
            let (cert, key) = openssl_pair(dir.path(), kind);
            assert!(
                std::fs::read_to_string(&key).expect("key").contains(header),
                "{kind} key format"
            );
            let cfg = tls(cert.clone(), cert, key);
            assert!(client_config(&cfg, UnixTime::now()).is_ok(), "{kind} key accepted");
        }
    }

    #[test]
    fn der_dates_parse_utctime_and_generalizedtime() {
        assert_eq!(der::format_time(0), "1970-01-01 UTC");
        assert_eq!(der::format_time(1_700_000_000), "2023-11-14 UTC");
    }

    #[test]
    fn the_subject_cn_is_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["hmi.plant".to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Plant");
        params.distinguished_name.push(rcgen::DnType::CommonName, "hmi-01");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(subject_cn(cert.der()), Some("hmi-01".to_string()));
        let mut none = rcgen::CertificateParams::new(vec!["x".to_string()]).expect("params");
        none.distinguished_name = rcgen::DistinguishedName::new();
        let cert = none.self_signed(&key).expect("cert");
        assert_eq!(subject_cn(cert.der()), None);
        assert_eq!(subject_cn(b"garbage"), None);
    }
}
