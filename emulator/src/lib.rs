//! kvs-emulator: a local server that behaves like Amazon Kinesis Video Streams for the APIs the plugin,
//! the AWS SDKs and the official producer use.
//!
//! [`Emulator::start`] binds a listener and serves on the caller's tokio runtime, so tests can run one
//! in-process; the `kvs-emulator` binary wraps it with a command line.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the emulator is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Region reported in ARNs and expected in signatures.
    pub region: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), region: "us-east-1".to_owned() }
    }
}

/// A running emulator.
pub struct Emulator {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Emulator {
    /// Binds the listener and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener));
        Ok(Emulator { local_addr, task })
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                eprintln!("kvs-emulator: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle));
            if let Err(err) = conn.await {
                eprintln!("kvs-emulator: connection error: {err}");
            }
        });
    }
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("{{\"Message\":\"Unknown operation {}\"}}", request.uri().path());
    let response = Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)));
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
