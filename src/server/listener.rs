//! The gRPC port's connections as tonic takes them: accepted within the
//! port's limits (`crate::net`), after their TLS handshake if configured.

use crate::net::tls::TlsState;
use crate::net::{Acceptor, Conn, Guarded};
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

impl Connected for Guarded<Conn> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.get_ref().tcp().connect_info()
    }
}

/// The stream of connections for `serve_with_incoming_shutdown`, after
/// their TLS handshake when `tls` is given (each in its own task, so a slow
/// one holds up no other). The accepting task ends when tonic drops the
/// stream (at shutdown), which closes the listening socket.
pub fn incoming(
    mut acceptor: Acceptor,
    tls: Option<Arc<TlsState>>,
) -> ReceiverStream<Result<Guarded<Conn>, io::Error>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                (conn, _peer) = acceptor.accept() => {
                    let tx = tx.clone();
                    let tls = tls.as_ref().map(|t| t.grpc());
                    tokio::spawn(async move {
                        if let Ok(conn) = conn.secure(tls).await {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
