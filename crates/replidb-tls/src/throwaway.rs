//! Throwaway certificates: a CA and, per name, a certificate it signs for
//! `localhost` and `127.0.0.1`, written as PEM files. For
//! `replidb playground --tls` and tests; never for production (the CA key
//! sits next to the certificates).

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::TlsError;

/// The files of a generated set.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The CA certificate (`ca.pem`): what clients pass as `--cacert` and
    /// nodes as `--tls-ca`.
    pub ca: PathBuf,
    /// Per name given: (certificate chain, private key) files.
    pub pairs: Vec<(PathBuf, PathBuf)>,
}

impl Generated {
    /// The certificate file of the `i`-th name.
    pub fn cert(&self, i: usize) -> &Path {
        &self.pairs[i].0
    }

    /// The key file of the `i`-th name.
    pub fn key(&self, i: usize) -> &Path {
        &self.pairs[i].1
    }
}

/// How long a generated certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From 2020 to 2100.
    Current,
    /// Expired at the end of 2021 (for tests of expiry).
    Expired,
}

/// Generate a CA and one certificate per name into `dir` (created if
/// missing): `ca.pem`, and `{name}.pem` / `{name}-key.pem`. Each
/// certificate is for `localhost` and `127.0.0.1`, usable as server and as
/// client (mutual TLS).
pub fn generate(dir: &Path, names: &[&str]) -> Result<Generated, TlsError> {
    generate_with(dir, names, Validity::Current)
}

/// [`generate`] with the leaf certificates' validity chosen.
pub fn generate_with(
    dir: &Path,
    names: &[&str],
    validity: Validity,
) -> Result<Generated, TlsError> {
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| TlsError::File {
            what: "generated file",
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        what: "directory",
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;

    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "replidb throwaway CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = date_time_ymd(2020, 1, 1);
    ca_params.not_after = date_time_ymd(2100, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen)?;
    let ca_path = dir.join("ca.pem");
    write(&ca_path, &ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut pairs = Vec::with_capacity(names.len());
    for name in names {
        let key = KeyPair::generate().map_err(gen)?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(gen)?;
        params.distinguished_name.push(DnType::CommonName, *name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        match validity {
            Validity::Current => {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2100, 1, 1);
            }
            Validity::Expired => {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 12, 31);
            }
        }
        let cert = params.signed_by(&key, &issuer).map_err(gen)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        pairs.push((cert_path, key_path));
    }
    Ok(Generated { ca: ca_path, pairs })
}
