//! Test certificates made with rcgen: a CA written as PEM files into a temporary directory, and
//! the server and client certificates it signs.

use std::path::PathBuf;

use natrium::options::TlsOptions;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A CA that signs server and client certificates, written as PEM files into a directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_key) = make_ca("natrium test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        Pki { dir, ca, ca_key }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Signs a certificate; returns (cert path, key path).
    pub fn issue(&self, name: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign");
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    pub fn server_cert(&self) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue("server", p)
    }

    /// A client certificate with subject `dn` (attribute, value pairs) and optional email SAN.
    pub fn client_cert(
        &self,
        name: &str,
        dn: &[(DnType, &str)],
        email: Option<&str>,
    ) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut d = DistinguishedName::new();
        for (t, v) in dn {
            d.push(t.clone(), *v);
        }
        p.distinguished_name = d;
        if let Some(e) = email {
            p.subject_alt_names = vec![SanType::Rfc822Name(e.try_into().expect("ia5"))];
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, p)
    }

    pub fn tls(&self) -> TlsOptions {
        let (cert_file, key_file) = self.server_cert();
        TlsOptions {
            cert_file,
            key_file,
            ca_file: Some(self.ca_file()),
            ..TlsOptions::default()
        }
    }
}

pub fn make_ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("self-signed");
    (cert, key)
}
