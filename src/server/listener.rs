//! The gRPC port's connections as tonic takes them: accepted within the
//! port's limits (`crate::net`), handed over one at a time.

use crate::net::{Acceptor, Guarded};
use std::io;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

impl Connected for Guarded<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.get_ref().connect_info()
    }
}

/// The stream of connections for `serve_with_incoming_shutdown`. The
/// accepting task ends when tonic drops the stream (at shutdown), which
/// closes the listening socket.
pub fn incoming(mut acceptor: Acceptor) -> ReceiverStream<Result<Guarded<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                (conn, _peer) = acceptor.accept() => {
                    if tx.send(Ok(conn)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
