//! A fault-injecting HTTP proxy on loopback, in front of a JSON-RPC node.
//!
//! It serves one request per connection (answers carry `connection: close`), numbers requests
//! in arrival order, and asks a plan what to do with request `n`: pass it through, drop the
//! connection, answer 500, cut the answer short after the node executed the request, or stall
//! until the client gives up. Plans are deterministic functions of `n`, so a test knows exactly
//! which faults it injects (no randomness, no timing assumptions).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward to the node and relay its answer.
    Pass,
    /// Close the connection without answering (the node never sees the request).
    Drop,
    /// Answer `500 Internal Server Error` with a plain-text body (the node never sees it).
    ServerError,
    /// Forward to the node (it executes the request), then send the answer's head and only half
    /// its body, and close: the client loses an answer to a request that took effect.
    Truncate,
    /// Keep the connection open without answering until the client closes it (its timeout).
    Stall,
    /// Wait this many milliseconds, then forward and relay as `Pass`.
    Delay(u64),
}

/// Counts of what the proxy did, per fault.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    by_fault: [AtomicU64; 6],
}

fn slot(fault: Fault) -> usize {
    match fault {
        Fault::Pass => 0,
        Fault::Drop => 1,
        Fault::ServerError => 2,
        Fault::Truncate => 3,
        Fault::Stall => 4,
        Fault::Delay(_) => 5,
    }
}

/// A running proxy; it stops when dropped.
pub struct FlakyProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl FlakyProxy {
    /// Listens on a free loopback port and forwards to `upstream`, applying `plan(n)` to the
    /// `n`-th request (from 0).
    pub async fn start(
        upstream: SocketAddr,
        plan: impl Fn(u64) -> Fault + Send + Sync + 'static,
    ) -> Self {
        Self::start_inspecting(upstream, move |n, _| plan(n)).await
    }

    /// [`FlakyProxy::start`] with a plan that also sees the request (HTTP head and body), so a
    /// test can fault one JSON-RPC method only.
    pub async fn start_inspecting(
        upstream: SocketAddr,
        plan: impl Fn(u64, &[u8]) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let counters = Arc::new(Counters::default());
        let plan = Arc::new(plan);
        let task = tokio::spawn({
            let counters = counters.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let counters = counters.clone();
                    let plan = plan.clone();
                    tokio::spawn(async move {
                        // A failed relay is the client's problem to report; the proxy carries on.
                        let _ = serve(client, upstream, &counters, &*plan).await;
                    });
                }
            }
        });
        Self {
            addr,
            counters,
            task,
        }
    }

    /// The proxy's URL, to use as the client's RPC endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests arrived.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// How many requests got `fault`.
    pub fn count(&self, fault: Fault) -> u64 {
        self.counters.by_fault[slot(fault)].load(Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    counters: &Counters,
    plan: &(dyn Fn(u64, &[u8]) -> Fault + Send + Sync),
) -> std::io::Result<()> {
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    let n = counters.requests.fetch_add(1, Ordering::SeqCst);
    let fault = plan(n, &request);
    counters.by_fault[slot(fault)].fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::Drop => Ok(()),
        Fault::ServerError => {
            let body = "injected fault";
            let head = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            client.write_all(head.as_bytes()).await?;
            client.write_all(body.as_bytes()).await?;
            client.shutdown().await
        }
        Fault::Stall => {
            // Wait for the client to hang up (its request timeout); nothing is ever sent.
            let mut sink = [0u8; 1024];
            while client.read(&mut sink).await? > 0 {}
            Ok(())
        }
        Fault::Delay(ms) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            let (head, body) = forward(&request, upstream).await?;
            client.write_all(&with_connection_close(&head)).await?;
            client.write_all(&body).await?;
            client.shutdown().await
        }
        Fault::Pass | Fault::Truncate => {
            let (head, body) = forward(&request, upstream).await?;
            let head = with_connection_close(&head);
            client.write_all(&head).await?;
            if fault == Fault::Truncate {
                client.write_all(&body[..body.len() / 2]).await?;
            } else {
                client.write_all(&body).await?;
            }
            client.shutdown().await
        }
    }
}

/// Reads one HTTP/1.1 request (head and `content-length` body). `None` if the client closed
/// before sending one.
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let length = content_length(&buf[..head_end]);
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}

/// Sends the request to the node on a fresh connection (asking it to close afterwards) and
/// reads the whole answer; returns its head (with the blank line) and body.
async fn forward(request: &[u8], upstream: SocketAddr) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut node = TcpStream::connect(upstream).await?;
    node.write_all(&with_connection_close(request)).await?;
    let mut answer = Vec::new();
    node.read_to_end(&mut answer).await?;
    let head_end = find(&answer, b"\r\n\r\n")
        .map(|end| end + 4)
        .ok_or_else(|| std::io::Error::other("node answer has no HTTP head"))?;
    let body = answer.split_off(head_end);
    Ok((answer, body))
}

/// The message with its `connection` header replaced by `connection: close`.
fn with_connection_close(message: &[u8]) -> Vec<u8> {
    let head_end = find(message, b"\r\n\r\n").map_or(message.len(), |end| end + 4);
    let head = String::from_utf8_lossy(&message[..head_end]);
    let mut out = String::new();
    for line in head.split("\r\n").filter(|line| !line.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&message[head_end..]);
    bytes
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
