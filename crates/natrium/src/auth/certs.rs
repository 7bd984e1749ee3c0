//! What a client certificate says about its holder: the names `verify_and_map` maps to users
//! (email, DNS and URI SANs, the subject DN compared RDN by RDN), the key id `pinned_certs` lists
//! (SHA-256 of the SubjectPublicKeyInfo), and the fingerprints `/connz` reports.

/// One certificate a client presented: its subject and SHA-256 fingerprints (hex) of its
/// public key info and of the whole certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerCert {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub spki_sha256: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cert_sha256: String,
}

/// Subject and fingerprints of a DER certificate (only the certificate's hash if unparsable).
pub fn peer_cert(der: &[u8]) -> PeerCert {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der).ok();
    let tbs = cert.as_ref().map(|c| &c.tbs_certificate);
    PeerCert {
        subject: tbs.map_or_else(String::new, |t| t.subject.to_string()),
        spki_sha256: tbs
            .and_then(|t| t.subject_public_key_info.to_der().ok())
            .map_or_else(String::new, |spki| sha256_hex(&spki)),
        cert_sha256: sha256_hex(der),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The key id `pinned_certs` lists: the lower-case hex SHA-256 of the certificate's DER
/// SubjectPublicKeyInfo (`None` for an unparsable certificate).
pub fn key_id(der: &[u8]) -> Option<String> {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let spki = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    Some(sha256_hex(&spki))
}

/// Whether a client whose certificate has `key_id` passes `pinned` (one without fails).
pub fn is_pinned(pinned: &[String], key_id: Option<&str>) -> bool {
    key_id.is_some_and(|k| pinned.iter().any(|p| p == k))
}

/// The identities a client certificate offers, in the order `verify_and_map` tries them:
/// email SANs, DNS SANs, URI SANs, then the subject DN (RFC 4514 string, most specific first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub emails: Vec<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub dn: String,
}

/// Extracts the names of a DER certificate; an unparsable one offers none.
pub fn cert_names(der: &[u8]) -> CertNames {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return CertNames::default();
    };
    let tbs = &cert.tbs_certificate;
    let mut names = CertNames {
        dn: tbs.subject.to_string(),
        ..CertNames::default()
    };
    const SAN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.17");
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != SAN {
            continue;
        }
        let Ok(san) = SubjectAltName::from_der(ext.extn_value.as_bytes()) else {
            continue;
        };
        for n in san.0 {
            match n {
                GeneralName::Rfc822Name(s) => names.emails.push(s.to_string()),
                GeneralName::DnsName(s) => names.dns.push(s.to_string()),
                GeneralName::UniformResourceIdentifier(s) => names.uris.push(s.to_string()),
                _ => {}
            }
        }
    }
    names
}

/// Splits an RFC 4514 DN into its RDNs (on commas not escaped with `\`), normalising the
/// attribute type's case and the spaces around separators.
fn rdns(dn: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in dn.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            out.push(normalise_rdn(&cur));
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(normalise_rdn(&cur));
    }
    out
}

fn normalise_rdn(rdn: &str) -> String {
    let rdn = rdn.trim();
    match rdn.split_once('=') {
        Some((t, v)) => format!("{}={}", t.trim().to_ascii_uppercase(), v.trim()),
        None => rdn.to_string(),
    }
}

/// Whether a configured user name written as a DN names the certificate's subject: the same
/// RDNs, in the same or in any order.
pub fn dn_matches(configured: &str, cert_dn: &str) -> bool {
    if !configured.contains('=') || cert_dn.is_empty() {
        return false;
    }
    let mut a = rdns(configured);
    let mut b = rdns(cert_dn);
    if a == b {
        return true;
    }
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_comparison_ignores_order_and_spacing() {
        let cert = "CN=alice,OU=eng,O=Acme\\, Inc.,C=US";
        assert!(dn_matches("CN=alice,OU=eng,O=Acme\\, Inc.,C=US", cert));
        assert!(dn_matches("cn=alice, ou=eng, o=Acme\\, Inc., c=US", cert));
        assert!(dn_matches("C=US,O=Acme\\, Inc.,OU=eng,CN=alice", cert));
        assert!(!dn_matches("CN=bob,OU=eng,O=Acme\\, Inc.,C=US", cert));
        assert!(!dn_matches("alice", cert));
    }
}
