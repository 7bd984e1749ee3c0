//! A TCP proxy between two servers that a test cuts and restores (a route or a leafnode
//! link going down while both ends stay up).

use tokio::net::TcpStream;

/// A TCP proxy between two nodes that the test cuts and restores: cut, it drops every
/// forwarded connection and closes new ones at once (the peer flaps); it counts dials.
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dials: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dials = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (u, d, l) = (up.clone(), dials.clone(), links.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                d.fetch_add(1, Ordering::SeqCst);
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().expect("links").push(link);
            }
        });
        Proxy {
            port,
            up,
            dials,
            links,
            task,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for l in self.links.lock().expect("links").drain(..) {
            l.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn dials(&self) -> usize {
        self.dials.load(std::sync::atomic::Ordering::SeqCst)
    }
}
