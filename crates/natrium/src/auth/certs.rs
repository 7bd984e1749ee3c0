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

/// Why a version 1 client certificate was not accepted (see [`verify_v1_chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("not a version 1 certificate")]
    NotVersion1,
    #[error("certificate is not valid DER")]
    Malformed,
    #[error("certificate expired or not valid yet")]
    NotValidNow,
    #[error("no trusted CA issued the certificate")]
    UnknownIssuer,
    #[error("certificate signature does not verify")]
    BadSignature,
    #[error("certificate signature algorithm not supported")]
    UnsupportedAlgorithm,
}

/// How many certificates a chain may have between the client's own and a trusted CA.
const MAX_INTERMEDIATES: usize = 6;

/// A parsed certificate and the exact bytes its issuer signed.
struct Parsed<'a> {
    cert: x509_cert::Certificate,
    tbs: &'a [u8],
}

fn parse(der: &[u8]) -> Result<Parsed<'_>, ChainError> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).map_err(|_| ChainError::Malformed)?;
    // Certificate ::= SEQUENCE { tbsCertificate, ... }: the signed bytes are the first element,
    // taken as they arrived (not re-encoded).
    let (outer, _) = tlv(der).ok_or(ChainError::Malformed)?;
    let inner = &der[outer..];
    let (h, len) = tlv(inner).ok_or(ChainError::Malformed)?;
    let tbs = inner.get(..h + len).ok_or(ChainError::Malformed)?;
    Ok(Parsed { cert, tbs })
}

/// The header length and content length of the DER element at the start of `b`.
fn tlv(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let len = b
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |acc, x| (acc << 8) | *x as usize);
    Some((2 + n, len))
}

/// The contents of a DER element (what rustls' algorithm identifiers hold).
fn contents(der: &[u8]) -> Option<&[u8]> {
    let (h, len) = tlv(der)?;
    der.get(h..h + len)
}

fn valid_at(c: &x509_cert::Certificate, now_secs: u64) -> bool {
    let v = &c.tbs_certificate.validity;
    let (from, to) = (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    );
    from <= now_secs && now_secs <= to
}

/// Whether `c` may issue certificates: version 3 with `basicConstraints` cA true (and, when
/// present, a key usage that includes keyCertSign), allowing `below` CAs under it.
fn is_ca(c: &x509_cert::Certificate, below: usize) -> bool {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
    const BASIC: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.19");
    const USAGE: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.15");
    let tbs = &c.tbs_certificate;
    if tbs.version != x509_cert::certificate::Version::V3 {
        return false;
    }
    let mut ca = false;
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id == BASIC {
            match BasicConstraints::from_der(ext.extn_value.as_bytes()) {
                Ok(b) => {
                    ca = b.ca
                        && b.path_len_constraint
                            .is_none_or(|max| below <= max as usize);
                }
                Err(_) => return false,
            }
        } else if ext.extn_id == USAGE {
            match KeyUsage::from_der(ext.extn_value.as_bytes()) {
                Ok(u) if u.key_cert_sign() => {}
                _ => return false,
            }
        }
    }
    ca
}

/// Whether `child` carries a valid signature by `issuer`'s key, with one of `algs`.
fn signed_by(
    child: &Parsed<'_>,
    issuer: &x509_cert::Certificate,
    algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
) -> Result<(), ChainError> {
    use x509_cert::der::Encode;
    let c = &child.cert;
    if c.signature_algorithm != c.tbs_certificate.signature {
        return Err(ChainError::Malformed);
    }
    let sig_der = c
        .signature_algorithm
        .to_der()
        .map_err(|_| ChainError::Malformed)?;
    let spki = &issuer.tbs_certificate.subject_public_key_info;
    let key_der = spki.algorithm.to_der().map_err(|_| ChainError::Malformed)?;
    let (Some(sig_alg), Some(key_alg), Some(key), Some(sig)) = (
        contents(&sig_der),
        contents(&key_der),
        spki.subject_public_key.as_bytes(),
        c.signature.as_bytes(),
    ) else {
        return Err(ChainError::Malformed);
    };
    let alg = algs
        .iter()
        .find(|a| &*a.signature_alg_id() == sig_alg && &*a.public_key_alg_id() == key_alg)
        .ok_or(ChainError::UnsupportedAlgorithm)?;
    alg.verify_signature(key, child.tbs, sig)
        .map_err(|_| ChainError::BadSignature)
}

/// Whether `der` is a version 1 certificate (one without extensions, as `openssl x509 -req`
/// makes without an extensions file).
pub fn is_version_1(der: &[u8]) -> bool {
    use x509_cert::der::Decode;
    x509_cert::Certificate::from_der(der)
        .is_ok_and(|c| c.tbs_certificate.version == x509_cert::certificate::Version::V1)
}

/// Verifies a version 1 client certificate the way webpki verifies version 3 ones (which it
/// refuses to parse): valid now, and issued, through `intermediates` the client sent, by one of
/// the `anchors` (the `ca_file`'s certificates), every signature checked with `algs`. Every
/// issuer on the way, the anchor included, must be a proper CA (version 3, `basicConstraints`
/// cA, keyCertSign when a key usage is given, its path length respected) valid now. A version 1
/// certificate has no extensions, so no key usage or name constraint applies to it.
pub fn verify_v1_chain(
    leaf: &[u8],
    intermediates: &[&[u8]],
    anchors: &[&[u8]],
    now_secs: u64,
    algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
) -> Result<(), ChainError> {
    use x509_cert::der::Encode;
    let leaf = parse(leaf)?;
    if leaf.cert.tbs_certificate.version != x509_cert::certificate::Version::V1 {
        return Err(ChainError::NotVersion1);
    }
    if !valid_at(&leaf.cert, now_secs) {
        return Err(ChainError::NotValidNow);
    }
    let anchors: Vec<Parsed<'_>> = anchors.iter().filter_map(|d| parse(d).ok()).collect();
    let intermediates: Vec<Parsed<'_>> =
        intermediates.iter().filter_map(|d| parse(d).ok()).collect();
    let name = |n: &x509_cert::name::Name| n.to_der().ok();
    let mut current = &leaf;
    let mut err = ChainError::UnknownIssuer;
    for below in 0..=MAX_INTERMEDIATES {
        let issuer_name = name(&current.cert.tbs_certificate.issuer);
        let candidates = |list: &'_ [Parsed<'_>]| -> Vec<usize> {
            (0..list.len())
                .filter(|i| {
                    let c = &list[*i].cert;
                    name(&c.tbs_certificate.subject) == issuer_name
                        && is_ca(c, below)
                        && valid_at(c, now_secs)
                })
                .collect()
        };
        for i in candidates(&anchors) {
            match signed_by(current, &anchors[i].cert, algs) {
                Ok(()) => return Ok(()),
                Err(e) => err = e,
            }
        }
        let next = candidates(&intermediates).into_iter().find(|i| {
            !std::ptr::eq(&intermediates[*i], current)
                && signed_by(current, &intermediates[*i].cert, algs)
                    .map_err(|e| err = e)
                    .is_ok()
        });
        match next {
            Some(i) => current = &intermediates[i],
            None => return Err(err),
        }
    }
    Err(ChainError::UnknownIssuer)
}

/// Verifies a TLS handshake signature made with a version 1 client certificate's key: the
/// algorithms `mapping` lists for `scheme` whose key type is the certificate's (the first of
/// them only in TLS 1.3, as rustls does for version 3 certificates).
pub fn verify_v1_handshake(
    leaf: &[u8],
    message: &[u8],
    signature: &[u8],
    candidates: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
    tls13: bool,
) -> Result<(), ChainError> {
    use x509_cert::der::Encode;
    let leaf = parse(leaf)?;
    let spki = &leaf.cert.tbs_certificate.subject_public_key_info;
    let key_der = spki.algorithm.to_der().map_err(|_| ChainError::Malformed)?;
    let (Some(key_alg), Some(key)) = (contents(&key_der), spki.subject_public_key.as_bytes())
    else {
        return Err(ChainError::Malformed);
    };
    let candidates = if tls13 {
        &candidates[..candidates.len().min(1)]
    } else {
        candidates
    };
    let mut usable = candidates
        .iter()
        .filter(|a| &*a.public_key_alg_id() == key_alg)
        .peekable();
    if usable.peek().is_none() {
        return Err(ChainError::UnsupportedAlgorithm);
    }
    if usable.any(|a| a.verify_signature(key, message, signature).is_ok()) {
        Ok(())
    } else {
        Err(ChainError::BadSignature)
    }
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
