//! replidb-tls: TLS for every listener and client of replidb.
//!
//! - [`server_config`]: a node's (or router's) rustls server configuration
//!   from `--tls-cert` / `--tls-key`, requiring client certificates signed
//!   by `--tls-ca` with `--tls-client-auth` (mutual TLS between nodes).
//! - [`client_config`]: what a node, the router, the Rust client and the
//!   CLI use to reach an `https://` node: trust exactly the CA file given
//!   (`--tls-ca`, `--cacert`), and present a certificate when the server
//!   asks for one.
//! - [`looks_like_tls`]: a listener tells a plain-HTTP client from a TLS
//!   one by the first byte, so it can answer a clear `400` instead of a
//!   handshake error the client cannot read.
//! - [`throwaway`]: a CA and a certificate for `localhost`/`127.0.0.1`
//!   (`replidb playground --tls`, tests), made with `rcgen`.
//!
//! Every configuration uses one crypto provider, *ring*
//! ([`provider`]), passed explicitly: nothing depends on a process-wide
//! default being installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use rustls::pki_types::ServerName;
/// A server-side TLS stream (what [`TlsAcceptor::accept`] yields).
pub use tokio_rustls::server::TlsStream as ServerTlsStream;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

pub mod throwaway;

/// The one crypto provider of every TLS configuration replidb builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make [`provider`] the process-wide default too, for libraries that
/// build a TLS client without being handed a configuration (reqwest
/// clients in the etcd coordinator and the playground). Idempotent; the
/// binary calls it first thing.
pub fn install_default_provider() {
    // Err only means a default is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// ALPN: replidb speaks HTTP/1.1 only (the replication stream is an
/// HTTP/1.1 upgrade).
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Files of a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key (`--tls-key`; PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates trusted for peers (`--tls-ca`).
    pub ca: Option<PathBuf>,
    /// Require a client certificate signed by `ca` (`--tls-client-auth`).
    pub client_auth: bool,
}

/// Why a TLS configuration could not be built. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no PEM object of the kind.
    #[error("{what} {path}: {message}")]
    File {
        /// Which file: "certificate", "private key", "CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, an unusable CA...).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: &'static str,
        /// The cause.
        source: rustls::Error,
    },
    /// `--tls-client-auth` without `--tls-ca`: there is nothing to verify
    /// client certificates against.
    #[error("--tls-client-auth needs --tls-ca: the CA that signs the nodes' certificates")]
    ClientAuthNeedsCa,
    /// A certificate could not be generated (throwaway certificates).
    #[error("generating a certificate: {0}")]
    Generate(String),
}

fn file_error(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Every certificate in the PEM file `path`. Errors when there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error("certificate", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("certificate", path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            "certificate",
            path,
            "no PEM certificate in the file",
        ));
    }
    Ok(certs)
}

/// The first private key in the PEM file `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("private key", path, e))
}

/// A root store holding every certificate of the PEM file `path`.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path).map_err(|e| match e {
        TlsError::File { path, message, .. } => TlsError::File {
            what: "CA",
            path,
            message,
        },
        other => other,
    })? {
        roots.add(cert).map_err(|e| file_error("CA", path, e))?;
    }
    Ok(Arc::new(roots))
}

/// The server configuration of a listener.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "TLS protocol versions",
            source,
        })?;
    let builder = if files.client_auth {
        let ca = files.ca.as_ref().ok_or(TlsError::ClientAuthNeedsCa)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            load_roots(ca)?,
            provider(),
        )
        .build()
        .map_err(|e| file_error("CA", ca, e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            context: "--tls-cert and --tls-key",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration for reaching `https://` nodes: trust the CA
/// file `ca`, and present `identity` (certificate chain and key files)
/// when the server asks (mutual TLS).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "TLS protocol versions",
            source,
        })?
        .with_root_certificates(load_roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsError::Rustls {
                context: "client certificate",
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration of a client given no CA: it trusts nobody,
/// so an `https://` URL fails with "invalid peer certificate:
/// UnknownIssuer" — a clear error, never a silent trust in whatever
/// answers. (`http://` URLs never use it.)
pub fn client_config_without_ca() -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            context: "TLS protocol versions",
            source,
        })?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration for `ca` (and `identity`), or one that trusts
/// nobody when there is no CA: see [`client_config`] and
/// [`client_config_without_ca`].
pub fn client_config_for(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    match ca {
        Some(ca) => client_config(ca, identity),
        None => client_config_without_ca(),
    }
}

/// Whether the first byte a client sent starts a TLS record (a handshake,
/// `0x16`). A plain-HTTP request starts with a method's first letter.
pub fn looks_like_tls(first_byte: u8) -> bool {
    first_byte == 0x16
}

/// The answer a TLS listener writes, unencrypted, to a client that spoke
/// plain HTTP to it, before closing.
pub const PLAIN_HTTP_TO_TLS_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 90\r\n\r\n{\"error\":{\"code\":\"tls_required\",\"message\":\"this node serves HTTPS: use an https:// URL\"}}\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_answer_has_the_right_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_TO_TLS_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
    }

    #[test]
    fn configs_build_from_throwaway_files_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let set = throwaway::generate(dir.path(), &["n1"]).unwrap();
        let files = TlsFiles {
            cert: set.cert(0).to_path_buf(),
            key: set.key(0).to_path_buf(),
            ca: Some(set.ca.clone()),
            client_auth: true,
        };
        server_config(&files).unwrap();
        client_config(&set.ca, Some((set.cert(0), set.key(0)))).unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_certs(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let e = server_config(&TlsFiles {
            ca: None,
            ..files.clone()
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::ClientAuthNeedsCa));
        // A key that is not the certificate's.
        let other = throwaway::generate(&dir.path().join("other"), &["n2"]).unwrap();
        let e = server_config(&TlsFiles {
            key: other.key(0).to_path_buf(),
            client_auth: false,
            ..files
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--tls-key"), "{e}");
    }

    #[test]
    fn tls_is_told_from_plain_http_by_the_first_byte() {
        assert!(looks_like_tls(0x16));
        for b in b"GPDHOC" {
            assert!(!looks_like_tls(*b));
        }
    }
}
