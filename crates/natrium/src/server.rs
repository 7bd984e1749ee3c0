//! The server: binds the client listener, accepts connections (enforcing `max_connections`),
//! hands each to a `client::Conn` task, and shuts everything down on request. Embeddable: tests
//! and programs start one in-process with `Server::start` and stop it with `Server::shutdown`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use natrium_protocol::{encode, ServerInfo};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::account::{Account, GLOBAL_ACCOUNT};
use crate::auth::Authenticator;
use crate::client::{ClientShared, CloseReason, Conn};
use crate::options::{Options, OptionsError, PROTOCOL_VERSION, VERSION};

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid options: {0}")]
    Options(#[from] OptionsError),
    #[error("can not listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// State shared by the accept loop and every connection.
pub(crate) struct ServerInner {
    pub(crate) opts: Options,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) auth: Authenticator,
    global: Arc<Account>,
    clients: Mutex<FxHashMap<u64, Arc<ClientShared>>>,
    next_cid: AtomicU64,
    shutdown: watch::Sender<bool>,
    port: u16,
}

impl ServerInner {
    pub(crate) fn global_account(&self) -> Arc<Account> {
        self.global.clone()
    }

    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn remove_client(&self, cid: u64) {
        self.clients.lock().remove(&cid);
    }

    fn info_for(&self, cid: u64, ip: &str) -> Vec<u8> {
        let info = ServerInfo {
            server_id: self.id.clone(),
            server_name: self.name.clone(),
            version: PROTOCOL_VERSION.to_string(),
            proto: 1,
            go: format!("natrium {VERSION}"),
            host: self.opts.host.clone(),
            port: self.port,
            headers: true,
            auth_required: self.auth.required(),
            max_payload: self.opts.max_payload,
            client_id: cid,
            client_ip: ip.to_string(),
            ..ServerInfo::default()
        };
        let json = serde_json::to_vec(&info).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 7);
        encode::info(&mut out, &json);
        out
    }
}

/// A running server.
pub struct Server {
    inner: Arc<ServerInner>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Server {
    /// Validates `opts`, binds the listener and starts accepting clients.
    pub async fn start(opts: Options) -> Result<Server, ServerError> {
        opts.validate()?;
        let port = if opts.port == -1 { 0 } else { opts.port as u16 };
        let bind = format!("{}:{}", opts.host, port);
        let listener = TcpListener::bind(&bind)
            .await
            .map_err(|source| ServerError::Listen {
                addr: bind.clone(),
                source,
            })?;
        let addr = listener.local_addr()?;
        let id = nkeys::KeyPair::new_server().public_key();
        let name = opts.server_name.clone().unwrap_or_else(|| id.clone());
        tracing::info!("Starting natrium");
        tracing::info!("  Version:  {VERSION} (nats-server protocol {PROTOCOL_VERSION})");
        tracing::info!("  Name:     {name}");
        tracing::info!("  ID:       {id}");
        if let Some(cf) = &opts.config_file {
            tracing::info!("Using configuration file: {}", cf.display());
        }
        tracing::info!("Effective options: {}", opts.summary());
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(ServerInner {
            auth: Authenticator::new(opts.auth.clone()),
            opts,
            id,
            name,
            global: Account::new(GLOBAL_ACCOUNT),
            clients: Mutex::new(FxHashMap::default()),
            next_cid: AtomicU64::new(1),
            shutdown,
            port: addr.port(),
        });
        tracing::info!(
            "Listening for client connections on {}:{}",
            inner.opts.host,
            addr.port()
        );
        let accept = tokio::spawn(accept_loop(inner.clone(), listener));
        tracing::info!("Server is ready");
        Ok(Server {
            inner,
            addr,
            accept,
        })
    }

    /// The address the client listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound client port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A URL clients can connect to (loopback when bound to all interfaces).
    pub fn client_url(&self) -> String {
        let ip = self.addr.ip();
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            ip.to_string()
        };
        format!("nats://{host}:{}", self.addr.port())
    }

    pub fn server_id(&self) -> &str {
        &self.inner.id
    }

    pub fn num_clients(&self) -> usize {
        self.inner.clients.lock().len()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.inner.global.subscription_count()
    }

    /// Stops accepting, closes every client and waits until they are gone.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        self.accept.abort();
        let _ = self.accept.await;
        let clients: Vec<_> = self.inner.clients.lock().values().cloned().collect();
        for c in &clients {
            c.close(CloseReason::ServerShutdown);
        }
        for _ in 0..200 {
            if self.inner.clients.lock().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!("Server Exiting..");
    }
}

async fn accept_loop(inner: Arc<ServerInner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown_rx();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => accept_client(&inner, stream, peer),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!("Error accepting client connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn accept_client(inner: &Arc<ServerInner>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cid = inner.next_cid.fetch_add(1, Ordering::Relaxed);
    let shared = ClientShared::new(cid, peer, inner.opts.max_pending);
    {
        let mut clients = inner.clients.lock();
        if clients.len() >= inner.opts.max_connections {
            drop(clients);
            tracing::error!("{peer} - cid:{cid} - maximum connections exceeded");
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = stream
                    .write_all(b"-ERR 'maximum connections exceeded'\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            return;
        }
        clients.insert(cid, shared.clone());
    }
    tracing::debug!("{peer} - cid:{cid} - Client connection created");
    let info = inner.info_for(cid, &peer.ip().to_string());
    let conn = Conn::new(shared, inner.clone());
    tokio::spawn(conn.run(stream, info));
}
