//! The controller's own certificate authority.
//!
//! Created on first start in `<data-dir>/ca/` (`ca.pem`, `ca.key` mode 0600) and reused after.
//! It signs agent client certificates from their CSRs, and the gateway's server certificate
//! (made fresh on every start, so its SANs follow the current addresses).

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// How long an agent's client certificate is valid.
pub const CLIENT_CERT_DAYS: i64 = 365;
/// How long the gateway's server certificate is valid (re-made at each start).
const SERVER_CERT_DAYS: i64 = 397;
const CA_YEARS: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the CA in {path} cannot be loaded: {message}")]
    Load { path: String, message: String },
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

/// A certificate the CA issued.
pub struct Issued {
    pub cert_pem: String,
    pub fingerprint: String,
    pub not_after_ms: i64,
}

impl Ca {
    /// Load the CA from `dir`, or create it there if it does not exist yet.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CaError::Io { path, source }
        };
        if cert_path.exists() {
            let cert_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let load_err = |message: String| CaError::Load {
                path: dir.display().to_string(),
                message,
            };
            let key = KeyPair::from_pem(&key_pem).map_err(|e| load_err(e.to_string()))?;
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| load_err(e.to_string()))?;
            let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| load_err(e.to_string()))?;
            return Ok(Ca {
                issuer,
                cert_pem,
                cert_der,
            });
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Spark Control CA");
        dn.push(DnType::OrganizationName, "Spark Control");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * CA_YEARS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
        fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: the pin carried by join tokens.
    pub fn fingerprint(&self) -> String {
        spark_common::sha256_hex(&self.cert_der)
    }

    /// Sign an agent's CSR. Only the CSR's public key is used: the subject is the node id,
    /// the usage is TLS client authentication, nothing the agent asked for beyond its key.
    pub fn sign_client(&self, csr_pem: &str, node_id: &str) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationName, "Spark Control agents");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(CLIENT_CERT_DAYS);
        params.serial_number = Some(random_serial());
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(Issued {
            fingerprint: spark_common::sha256_hex(signed.der()),
            cert_pem: signed.pem(),
            not_after_ms: (now + Duration::days(CLIENT_CERT_DAYS)).unix_timestamp() * 1000,
        })
    }

    /// A fresh server certificate for the gateway, valid for `dns_names` and `ips`. Returns the
    /// chain (leaf, CA: agents pin the CA by hash on first contact) and the key.
    pub fn server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Spark Control agent gateway");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(SERVER_CERT_DAYS);
        params.serial_number = Some(random_serial());
        for name in dns_names {
            if let Ok(n) = name.clone().try_into() {
                params.subject_alt_names.push(SanType::DnsName(n));
            }
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and not shortened by DER
    SerialNumber::from_slice(&bytes)
}

/// Write a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path()).unwrap();
        let b = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_garbage_csr() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let err = ca.sign_client("not a csr", "n-1").err().unwrap();
        assert!(err.to_string().contains("signing request"), "{err}");
    }
}
