//! A TCP relay on loopback that a test can cut as a network partition cuts: while cut, bytes stop
//! flowing both ways with no reset and no close (the client meets silence, as across a dead
//! link), and connections made meanwhile are accepted but never forwarded. Healing drops what the
//! cut stranded, as the peers' timeouts would have; connections made afterwards flow again.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    pub port: u16,
    cut: watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `to`, listening on a free loopback port.
    pub async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, watching) = watch::channel(false);
        let accepting = tokio::spawn(async move {
            loop {
                if let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(client, to, watching.clone()));
                }
            }
        });
        Relay { port, cut, accepting }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
        // Stranded connections are let go too.
        self.heal();
    }
}

async fn forward(mut client: TcpStream, to: SocketAddr, mut cut: watch::Receiver<bool>) {
    if !*cut.borrow() {
        let Ok(mut server) = TcpStream::connect(to).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = async { let _ = cut.wait_for(|c| *c).await; } => {}
        }
        // Cut: both sockets stay open and silent until the heal drops them.
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let _ = cut.wait_for(|c| !*c).await;
}
