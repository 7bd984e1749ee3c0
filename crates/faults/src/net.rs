//! The network between a cluster's nodes: one fault proxy per directed link (node `i` dials
//! node `j`'s route port through `link(i, j)`), and one per node in front of its client port.
//!
//! A route between two nodes runs over whichever of the two links its dialler used, so faults
//! are stated per direction of traffic ("bytes from `i` to `j`") and applied to both proxies of
//! the pair: up on the one `i` dialled, down on the one `j` dialled.

use std::net::SocketAddr;
use std::time::Duration;

use crate::proxy::{Faults, Flow, Proxy};

/// The proxies of an `n`-node cluster.
pub struct Net {
    n: usize,
    /// `links[i * n + j]` for `i != j`.
    links: Vec<Option<Proxy>>,
    clients: Vec<Proxy>,
}

impl Net {
    /// Binds every proxy (targets are set as nodes start).
    pub async fn bind(n: usize) -> std::io::Result<Net> {
        let mut links = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                links.push(if i == j {
                    None
                } else {
                    Some(Proxy::bind(None).await?)
                });
            }
        }
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(Proxy::bind(None).await?);
        }
        Ok(Net { n, links, clients })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The proxy node `i` dials to reach node `j`.
    pub fn link(&self, i: usize, j: usize) -> &Proxy {
        self.links[i * self.n + j]
            .as_ref()
            .expect("no link from a node to itself")
    }

    /// The proxy clients dial to reach node `i`.
    pub fn client(&self, i: usize) -> &Proxy {
        &self.clients[i]
    }

    /// The route URLs node `i` is configured with: one per peer, through the proxies.
    pub fn route_urls(&self, i: usize) -> Vec<String> {
        (0..self.n)
            .filter(|&j| j != i)
            .map(|j| format!("nats-route://{}", self.link(i, j).addr()))
            .collect()
    }

    /// Node `j` now listens for routes at `route` and for clients at `client`.
    pub fn node_started(&self, j: usize, route: SocketAddr, client: SocketAddr) {
        for i in 0..self.n {
            if i != j {
                self.link(i, j).set_target(Some(route));
            }
        }
        self.client(j).set_target(Some(client));
    }

    /// Node `j` is down: its proxies refuse until it is back (no stale target is dialled).
    pub fn node_stopped(&self, j: usize) {
        for i in 0..self.n {
            if i != j {
                self.link(i, j).set_target(None);
            }
        }
        self.client(j).set_target(None);
    }

    /// Applies `edit` to the faults of the traffic going from `from` to `to`.
    fn edit_direction(&self, from: usize, to: usize, edit: impl Fn(&mut Flow, &mut Duration)) {
        self.link(from, to)
            .update(|f| edit(&mut f.up, &mut f.up_delay));
        self.link(to, from)
            .update(|f| edit(&mut f.down, &mut f.down_delay));
    }

    /// Bytes from `from` to `to` are dropped; the other way still flows.
    pub fn drop_one_way(&self, from: usize, to: usize) {
        self.edit_direction(from, to, |flow, _| *flow = Flow::Drop);
    }

    /// Adds `d` of latency to the traffic from `from` to `to`.
    pub fn delay_one_way(&self, from: usize, to: usize, d: Duration) {
        self.edit_direction(from, to, |_, delay| *delay = d);
    }

    /// Adds `d` of latency both ways between `a` and `b`.
    pub fn delay(&self, a: usize, b: usize, d: Duration) {
        self.delay_one_way(a, b, d);
        self.delay_one_way(b, a, d);
    }

    /// Cuts `a` and `b` apart: connections reset, new ones refused, both links.
    pub fn cut(&self, a: usize, b: usize) {
        self.link(a, b).cut();
        self.link(b, a).cut();
    }

    /// Cuts every link between the two sides (nodes in neither are untouched).
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                if a != b {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Cuts node `i` off from every other node (its clients still reach it).
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.n).filter(|&j| j != i).collect();
        self.partition(&[i], &others);
    }

    /// Cuts node `i` off from its clients.
    pub fn cut_clients(&self, i: usize) {
        self.client(i).cut();
    }

    /// Every link and client proxy back to plain forwarding.
    pub fn heal(&self) {
        for p in self.links.iter().flatten() {
            p.heal();
        }
        for p in &self.clients {
            p.heal();
        }
    }

    /// True if no fault is set anywhere.
    pub fn is_healed(&self) -> bool {
        self.links
            .iter()
            .flatten()
            .chain(self.clients.iter())
            .all(|p| p.faults() == Faults::pass())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A target that answers each read with "pong".
    async fn ponger() -> SocketAddr {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(b"pong").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        a
    }

    #[tokio::test]
    async fn one_way_faults_apply_to_the_direction_on_both_links_of_a_pair() {
        let net = Net::bind(3).await.unwrap();
        assert_eq!(net.route_urls(0).len(), 2);
        net.node_started(1, ponger().await, ponger().await);
        net.node_started(0, ponger().await, ponger().await);
        net.drop_one_way(0, 1);
        // Node 0's dial to node 1: the request is dropped on the way up.
        let mut s = TcpStream::connect(net.link(0, 1).addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut b))
                .await
                .is_err()
        );
        // Node 1's dial to node 0: its request arrives, the answer (0 -> 1) is dropped.
        let mut s = TcpStream::connect(net.link(1, 0).addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut b))
                .await
                .is_err()
        );
        assert!(net.link(1, 0).stats().bytes_up >= 4);
        assert!(net.link(1, 0).stats().dropped_down >= 4);
        // Unrelated links are untouched.
        assert_eq!(net.link(0, 2).faults(), Faults::pass());
        assert!(!net.is_healed());
        net.heal();
        assert!(net.is_healed());
        let mut s = TcpStream::connect(net.link(0, 1).addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"pong");
    }

    #[tokio::test]
    async fn isolate_cuts_every_link_of_a_node_and_nothing_else() {
        let net = Net::bind(3).await.unwrap();
        net.isolate(2);
        for (i, j) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
            assert!(net.link(i, j).faults().refuse, "{i}->{j}");
        }
        for (i, j) in [(0, 1), (1, 0)] {
            assert!(!net.link(i, j).faults().refuse, "{i}->{j}");
        }
        assert!(!net.client(2).faults().refuse);
    }
}
