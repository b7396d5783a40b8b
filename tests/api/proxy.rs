//! A TCP forwarder the failover tests put between parts: it can be pointed elsewhere (an
//! endpoint's DNS name moving to the promoted replica), stop forwarding (a replication link
//! that stalls), and drop every connection with whatever it still holds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One listening forwarder; its tasks end with the test's runtime.
pub struct Proxy {
    pub port: u16,
    target: Arc<Mutex<SocketAddr>>,
    frozen: Arc<AtomicBool>,
    /// Bumped to make every open connection close.
    generation: Arc<AtomicU64>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<a free port> to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Proxy {
            port,
            target: Arc::new(Mutex::new(target)),
            frozen: Arc::default(),
            generation: Arc::default(),
        };
        let (target, frozen, generation) = (
            proxy.target.clone(),
            proxy.frozen.clone(),
            proxy.generation.clone(),
        );
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let to = *target.lock().expect("target");
                let Ok(outbound) = TcpStream::connect(to).await else {
                    continue; // refused: the client sees its connection closed
                };
                let born = generation.load(Ordering::SeqCst);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                for (r, w) in [(ri, wo), (ro, wi)] {
                    tokio::spawn(pump(r, w, frozen.clone(), generation.clone(), born));
                }
            }
        });
        proxy
    }

    /// New connections go to `target`; open ones are dropped.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().expect("target") = target;
        self.drop_connections();
    }

    /// Stops (or resumes) forwarding in both directions; what was sent stays in the buffers.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Closes every open connection, discarding what it held.
    pub fn drop_connections(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if generation.load(Ordering::SeqCst) != born {
            return;
        }
        if frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(20), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if generation.load(Ordering::SeqCst) != born || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
