//! TLS client settings shared by the IMAP and SMTP connections: rustls with the ring
//! provider, trusting the webpki roots plus an optional extra CA file (a self-signed server).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lettre::transport::smtp::client::{Certificate, TlsParameters};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {}: {source}", path.display())]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {} is not PEM: {message}", path.display())]
    BadPem { path: PathBuf, message: String },
    #[error("CA file {} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("CA file {}: certificate {index} is not a usable trust anchor: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        index: usize,
        source: rustls::Error,
    },
    #[error("`{host}` is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName { host: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("SMTP TLS setup failed: {0}")]
    Smtp(String),
}

/// Builds the rustls client configuration: webpki roots plus the certificates in `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for (index, certificate) in read_ca_file(path)?.into_iter().enumerate() {
            roots
                .add(certificate)
                .map_err(|source| TlsError::BadCertificate {
                    path: path.to_owned(),
                    index,
                    source,
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A tokio-rustls connector over [`client_config`].
pub fn connector(extra_ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(client_config(extra_ca)?))
}

/// The name a server certificate is checked against: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName {
        host: host.to_owned(),
    })
}

/// lettre's TLS parameters for SMTP STARTTLS, with the same trust as [`client_config`].
///
/// lettre upgrades a STARTTLS connection itself and only accepts its own parameter
/// type, so the extra CA is handed to it rather than a rustls configuration.
pub fn smtp_tls_parameters(host: &str, extra_ca: Option<&Path>) -> Result<TlsParameters, TlsError> {
    server_name(host)?;
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(path) = extra_ca {
        // Reading through our own parser first gives the same precise errors as IMAP.
        read_ca_file(path)?;
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
            path: path.to_owned(),
            source,
        })?;
        let certificate = Certificate::from_pem(&pem).map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| TlsError::Smtp(e.to_string()))
}

/// Whether `host` names this machine, where a password may travel unencrypted.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_with_webpki_roots_only() {
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn a_missing_ca_file_names_the_file() {
        let error = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(matches!(error, TlsError::ReadCa { .. }), "{error:?}");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = client_config(Some(&path)).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
    }

    #[test]
    fn a_garbled_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = client_config(Some(&path)).unwrap_err();
        assert!(
            matches!(error, TlsError::BadCertificate { index: 0, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn server_names_accept_dns_names_and_ip_addresses() {
        assert!(matches!(
            server_name("mail.example.test").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("not a host").unwrap_err(),
            TlsError::ServerName { .. }
        ));
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("mail.example.test"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
