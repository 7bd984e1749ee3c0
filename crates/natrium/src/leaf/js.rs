//! JetStream across a leafnode connection, as nats-server keeps it apart: the plain API, KV and
//! object store subjects never cross (each side's JetStream answers its own clients), and a
//! server with a domain keeps requests for its own domain from leaving towards another domain.

/// What this server's JetStream is, for its leafnode connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafJetStream {
    /// JetStream is enabled on this server.
    pub enabled: bool,
    /// `jetstream { domain }`.
    pub domain: Option<String>,
}

/// Denied on every connection of a (non-system) account, both ways: messages, and interest
/// (nats-server's `denyAllClientJs`).
const CLIENT_DENY: [&str; 3] = ["$JS.API.>", "$KV.>", "$OBJ.>"];
/// Denied on a connection of the system account (nats-server's `denyAllJs`, and Natrium's
/// own replication subjects): Natrium never extends a JetStream over a leafnode connection.
const SYSTEM_DENY: [&str; 6] = ["$JSC.>", "$NRG.>", "$NRX.>", "$JS.API.>", "$KV.>", "$OBJ.>"];

/// The JetStream subjects a connection keeps from crossing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsDeny {
    /// Neither messages nor interest cross, either way.
    pub both: Vec<Box<[u8]>>,
    /// Messages that do not leave: requests to this server's own domain when the other side
    /// is of another domain (this server answers them).
    pub out: Vec<Box<[u8]>>,
}

impl LeafJetStream {
    /// The denies of a connection bound to an account (`system`: the system account) whose
    /// other side declared JetStream domain `theirs` (empty for none).
    pub fn deny(&self, system: bool, theirs: &str) -> JsDeny {
        let list: &[&str] = if system { &SYSTEM_DENY } else { &CLIENT_DENY };
        let both = list.iter().map(|s| s.as_bytes().into()).collect();
        let mut out = Vec::new();
        if let (true, Some(d), false) = (self.enabled, &self.domain, system) {
            if d != theirs {
                out.push(format!("$JS.{d}.API.>").into_bytes().into_boxed_slice());
            }
        }
        JsDeny { both, out }
    }

    /// The domain this server names in its INFO and CONNECT.
    pub fn domain_name(&self) -> String {
        self.domain.clone().unwrap_or_default()
    }
}

impl JsDeny {
    /// Whether interest in (or a message on) `subject` never crosses.
    pub fn blocks(&self, subject: &[u8]) -> bool {
        self.both
            .iter()
            .any(|d| natrium_subjects::matches(d, subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_api_never_crosses_and_a_domain_keeps_its_own_requests() {
        let js = LeafJetStream {
            enabled: true,
            domain: Some("hub".into()),
        };
        let d = js.deny(false, "edge");
        assert!(d.blocks(b"$JS.API.STREAM.INFO.X"));
        assert!(d.blocks(b"$KV.cfg.k"));
        assert!(d.blocks(b"$OBJ.b.c"));
        assert!(!d.blocks(b"$JS.hub.API.STREAM.INFO.X"));
        assert!(!d.blocks(b"$JS.ACK.S.C.1.1.1.1.1"));
        assert_eq!(d.out, vec![b"$JS.hub.API.>".to_vec().into_boxed_slice()]);
        // The same domain on both sides (a misconfiguration nats-server lets through).
        assert!(js.deny(false, "hub").out.is_empty());
        // Without JetStream or a domain nothing more is kept in.
        assert!(LeafJetStream::default().deny(false, "").out.is_empty());
        let s = js.deny(true, "edge");
        assert!(s.blocks(b"$NRX.x") && s.blocks(b"$JSC.x") && s.blocks(b"$NRG.x"));
        assert!(s.out.is_empty());
    }
}
