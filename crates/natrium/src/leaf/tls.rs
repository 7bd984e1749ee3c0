//! TLS on leafnode connections, as nats-server 2.9 runs it: the hub sends its INFO in plaintext
//! (saying `tls_required`), then both sides run the handshake, the hub as the TLS server; the
//! leaf checks the hub's certificate against its remote's `ca_file` for the host it dialled
//! (unless `insecure`) and presents its own certificate when the remote has one.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::conn::{TlsError, TlsOptions, TlsServer};

/// The hub side: the leafnode listener's certificate (and client-certificate checks).
pub struct LeafAcceptor {
    acceptor: TlsAcceptor,
    pub timeout: Duration,
}

impl LeafAcceptor {
    pub fn new(opts: &TlsOptions) -> Result<LeafAcceptor, TlsError> {
        let server = TlsServer::new(opts)?;
        Ok(LeafAcceptor {
            acceptor: server.route_acceptor(),
            timeout: opts.timeout,
        })
    }

    /// The hub's handshake, after its INFO went out.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("TLS handshake error: {e}")),
            Err(_) => Err("TLS handshake timeout".into()),
        }
    }
}

/// The leaf side of one remote.
pub struct LeafConnector {
    connector: TlsConnector,
    pub timeout: Duration,
}

impl LeafConnector {
    /// From a remote's `tls {}`: `ca_file` (else the hub's certificate is not checked only with
    /// `insecure`), and `cert_file`/`key_file` when the hub asks for a client certificate.
    pub fn new(opts: &TlsOptions) -> Result<LeafConnector, TlsError> {
        let config = crate::cluster::tls::client_config(
            opts,
            "leafnode remote tls needs a ca_file to check the hub's certificate",
        )?;
        Ok(LeafConnector {
            connector: TlsConnector::from(Arc::new(config)),
            timeout: opts.timeout,
        })
    }

    /// The leaf's handshake with the hub at `host`, after reading its INFO.
    pub async fn connect(
        &self,
        stream: TcpStream,
        host: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
        match tokio::time::timeout(self.timeout, self.connector.connect(name, stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("TLS handshake error: {e}")),
            Err(_) => Err("TLS handshake timeout".into()),
        }
    }
}

/// Reads the hub's first line (its INFO) from the plaintext socket, a byte at a time so nothing
/// after it (the start of the TLS handshake) is consumed. Bounded in size and time.
pub async fn read_first_line(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, String> {
    let read = async {
        let mut line = Vec::with_capacity(1024);
        let mut byte = [0u8; 1];
        loop {
            let n = stream
                .read(&mut byte)
                .await
                .map_err(|e| format!("reading the hub's INFO: {e}"))?;
            if n == 0 {
                return Err("the hub closed the connection before its INFO".to_string());
            }
            line.push(byte[0]);
            if byte[0] == b'\n' {
                return Ok(line);
            }
            if line.len() > natrium_protocol::route::MAX_ROUTE_CONTROL_LINE {
                return Err("the hub's INFO is too long".to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .map_err(|_| "no INFO from the hub in time".to_string())?
}
