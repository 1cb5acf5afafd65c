// SPDX-License-Identifier: MPL-2.0

//! kvs-emulator: a local server that behaves like Amazon Kinesis Video Streams for the APIs the plugin,
//! the AWS SDKs and the official producer use.
//!
//! [`Emulator::start`] binds a listener and serves on the caller's tokio runtime, so tests can run one
//! in-process; the `kvs-emulator` binary wraps it with a command line.
//!
//! Modules: [`control`] (the control-plane operations), [`store`] (the stream registry), [`error`] (the
//! service's error wire format), [`sigv4`] (signature verification), [`putmedia`] with [`ingest`] (uploads
//! and their ACKs), [`media`] (stored fragments), [`getmedia`] (reading them back). Requests are routed by path in
//! [`route`]: signature verification first (when credentials were given), then the operation.

pub mod admin;
pub mod archived;
pub mod arrivals;
pub mod control;
pub mod error;
pub mod faults;
pub mod getmedia;
pub mod ingest;
pub mod iot;
pub mod limits;
pub mod media;
pub mod persist;
pub mod putmedia;
pub mod sigv4;
pub mod store;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::arrivals::Arrivals;
use crate::control::Operation;
use crate::error::ApiError;
use crate::faults::{ConnectionKill, Faults};
use crate::media::MediaStore;
use crate::persist::DataDir;
use crate::putmedia::{PutMediaConfig, PutMediaContext};
use crate::sigv4::{Payload, Verifier};
use crate::store::Store;

/// Response bodies of the emulator: a whole buffer or a stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest control-plane request body read (the real ones are a few hundred bytes).
pub const MAX_CONTROL_BODY_BYTES: usize = 1024 * 1024;

/// What the emulator is started with.
#[derive(Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Region reported in ARNs and expected in signatures.
    pub region: String,
    /// PutMedia timeouts and limits.
    pub put_media: PutMediaConfig,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Keep streams and fragments in this directory, so that they survive a restart.
    pub data_dir: Option<std::path::PathBuf>,
    /// `(access key id, secret access key)` pairs. When there is at least one, every request but those under
    /// `/_emulator/` must carry a valid SigV4 signature by one of them; when empty, signatures are not checked.
    pub credentials: Vec<(String, String)>,
    /// Record when every uploaded frame arrived (`GET /_emulator/streams/NAME/arrivals`).
    pub record_arrivals: bool,
    /// Also serve the AWS IoT credentials provider endpoint ([`iot`]).
    pub iot: Option<iot::IotConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            region: "us-east-1".to_owned(),
            put_media: PutMediaConfig::default(),
            tls: None,
            data_dir: None,
            credentials: Vec::new(),
            record_arrivals: false,
            iot: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secrets are never printed.
        let key_ids: Vec<&str> = self
            .credentials
            .iter()
            .map(|(key_id, _)| key_id.as_str())
            .collect();
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("region", &self.region)
            .field("credentials", &key_ids)
            .finish()
    }
}

/// Everything request handlers share.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub local_addr: SocketAddr,
    pub store: Arc<Store>,
    /// `None` when no credentials were given: signatures are not checked.
    pub verifier: Option<Arc<Verifier>>,
    /// Every stream's fragments.
    pub media: Arc<MediaStore>,
    /// The service's limits on reads ([`limits`]): calls a second and open connections per stream.
    pub read_limits: Arc<limits::ReadLimits>,
    /// Armed faults (admin API).
    pub faults: Arc<Faults>,
    /// `--data-dir`, when given.
    pub data_dir: Option<Arc<DataDir>>,
    /// `--record-arrivals`.
    pub arrivals: Arc<Arrivals>,
    /// PutMedia fragment starts per stream (the service's fragment rate limit).
    pub rates: Arc<putmedia::FragmentRates>,
}

impl State {
    fn new(config: Config, local_addr: SocketAddr) -> State {
        let arrivals = Arc::new(Arrivals::new(config.record_arrivals));
        let verifier = (!config.credentials.is_empty())
            .then(|| Arc::new(Verifier::new(&config.region, &config.credentials)));
        let store = Arc::new(Store::new(config.region.clone()));
        State {
            config,
            local_addr,
            store,
            verifier,
            media: Arc::new(MediaStore::default()),
            read_limits: Arc::default(),
            faults: Arc::new(Faults::default()),
            data_dir: None,
            arrivals,
            rates: Arc::default(),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.local_addr)
    }

    /// What GetDataEndpoint answers: the base URL. When listening on all interfaces (0.0.0.0 or ::), the host
    /// the client used (from its `Host` header, port ignored: the C producer sends none) with the real port.
    pub fn data_endpoint(&self, request: &Parts) -> String {
        if !self.local_addr.ip().is_unspecified() {
            return self.base_url();
        }
        let host = request
            .headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .map(strip_port)
            .filter(|host| !host.is_empty())
            .unwrap_or("127.0.0.1");
        format!("{}://{host}:{}", self.scheme(), self.local_addr.port())
    }

    /// After a stream was created, changed or deleted: forgets the media of deleted streams and, with
    /// `--data-dir`, saves the registry.
    pub async fn streams_changed(self: &Arc<Self>) {
        let state = self.clone();
        let result = tokio::task::spawn_blocking(move || match &state.data_dir {
            Some(dir) => dir
                .save_streams(&state.store)
                .and_then(|()| dir.prune(&state.store, &state.media)),
            None => {
                let live: Vec<String> = state
                    .store
                    .lock()
                    .iter()
                    .map(|s| s.stream_arn.clone())
                    .collect();
                let gone: Vec<String> = state
                    .media
                    .lock()
                    .keys()
                    .filter(|arn| !live.contains(arn))
                    .cloned()
                    .collect();
                gone.iter().for_each(|arn| state.media.remove(arn));
                Ok(())
            }
        })
        .await;
        if let Ok(Err(err)) = result {
            eprintln!("kvs-emulator: cannot save the data directory: {err}");
        }
    }

    /// Checks the request's signature when the emulator was given credentials.
    pub fn verify(&self, request: &Parts, payload: Payload<'_>) -> Result<(), ApiError> {
        match &self.verifier {
            None => Ok(()),
            Some(verifier) => verifier
                .verify(
                    request.method.as_str(),
                    &request.uri,
                    &request.headers,
                    payload,
                    SystemTime::now(),
                )
                .map(|_| ()),
        }
    }
}

/// `host:port` or `[v6]:port` → the host part.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(v6, _)| &host[..v6.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// A running emulator.
pub struct Emulator {
    state: Arc<State>,
    task: JoinHandle<()>,
    /// The IoT credentials endpoint's address and task, when it runs.
    iot: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Emulator {
    /// Binds the listener and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<Emulator> {
        let acceptor = match &config.tls {
            Some((cert, key)) => Some(
                tls::acceptor(cert, key)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let mut state = State::new(config, local_addr);
        if let Some(dir) = &state.config.data_dir {
            let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
            let data_dir = DataDir::open(dir)
                .map_err(|e| invalid(format!("--data-dir {}: {e}", dir.display())))?;
            let (streams, fragments) =
                data_dir.load(&state.store, &state.media).map_err(invalid)?;
            eprintln!(
                "kvs-emulator: loaded {streams} streams and {fragments} fragments from {}",
                dir.display()
            );
            state.data_dir = Some(Arc::new(data_dir));
        }
        let state = Arc::new(state);
        let iot = match state.config.iot.clone() {
            Some(config) => {
                let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
                let acceptor =
                    iot::acceptor(&config).map_err(|e| invalid(format!("IoT endpoint: {e}")))?;
                let listener = TcpListener::bind(config.listen).await?;
                let addr = listener.local_addr()?;
                let task = tokio::spawn(iot::serve(
                    listener,
                    acceptor,
                    Arc::new(config),
                    state.verifier.clone(),
                ));
                Some((addr, task))
            }
            None => None,
        };
        let task = tokio::spawn(accept_loop(listener, state.clone(), acceptor));
        Ok(Emulator { state, task, iot })
    }

    /// The IoT credentials endpoint's address (`host:port`, what `iot-certificate`'s `endpoint` takes), when
    /// it runs.
    pub fn iot_addr(&self) -> Option<SocketAddr> {
        self.iot.as_ref().map(|(addr, _)| *addr)
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn base_url(&self) -> String {
        self.state.base_url()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.local_addr
    }

    /// The stream registry.
    pub fn store(&self) -> Arc<Store> {
        self.state.store.clone()
    }

    /// The stored media.
    pub fn media(&self) -> Arc<MediaStore> {
        self.state.media.clone()
    }

    /// The faults armed (what `POST /_emulator/faults` adds to), for tests in the same process.
    pub fn faults(&self) -> Arc<Faults> {
        self.state.faults.clone()
    }

    /// Stops accepting connections.
    pub fn shutdown(self) {
        self.task.abort();
        if let Some((_, task)) = self.iot {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                eprintln!("kvs-emulator: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, fd, state).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, fd, state).await,
                    Err(err) => eprintln!("kvs-emulator: TLS handshake with {peer} failed: {err}"),
                },
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection until it ends or a fault drops it. `fd` is the TCP socket under `io`, for
/// the faults that act on it (reset, half-close).
async fn serve_connection<I>(io: I, fd: std::os::fd::RawFd, state: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Fault injection can end the connection from inside a handler (see `faults::ConnectionKill`).
    let kill = ConnectionKill::default();
    *kill.0.fd.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
    let handle_kill = kill.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(handle_kill.clone());
        handle(state.clone(), request)
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = &mut conn => {
            if let Err(err) = result {
                eprintln!("kvs-emulator: connection error: {err}");
            }
        }
        _ = kill.0.notify.notified() => {
            let how = kill.how();
            kill.prepare_close(how);
            eprintln!("kvs-emulator: connection dropped by a fault ({how:?})");
        }
    }
    // The socket goes with `conn`: no fault may use its descriptor from here on.
    *kill.0.fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Serves one request and logs one line: method, path (never the query, which may hold a presigned
/// signature or a session token; never a header), status and, for errors, the error name.
async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = route(&state, request).await;
    let error_name = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(':').next())
        .map(|name| format!(" {name}"))
        .unwrap_or_default();
    eprintln!(
        "kvs-emulator: {method} {path} {}{error_name}",
        response.status().as_u16()
    );
    Ok(response)
}

/// Turns a whole-buffer response into an emulator response.
pub fn boxed(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(BodyExt::boxed)
}

/// Routes by path. Signatures are verified before anything else, except under `/_emulator/`.
pub async fn route(state: &Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    if let Some(admin_path) = path.strip_prefix("/_emulator/") {
        let admin_path = admin_path.to_owned();
        let (parts, body) = request.into_parts();
        let result = match read_body(&parts, body, admin::MAX_IMPORT_BYTES).await {
            // Admin calls may parse large recordings and write files: off the async workers.
            Ok(body) => {
                let state = state.clone();
                let method = parts.method.as_str().to_owned();
                tokio::task::spawn_blocking(move || {
                    admin::handle(&state, &method, &admin_path, &body)
                })
                .await
                .unwrap_or_else(|e| Err(ApiError::internal(format!("admin call failed: {e}"))))
            }
            Err(err) => Err(err),
        };
        return match result {
            Ok(output) => boxed(error::json_response(
                hyper::StatusCode::OK,
                output.to_string().into_bytes(),
            )),
            Err(err) => boxed(err.into_response()),
        };
    }
    match path {
        "/putMedia" => {
            let (parts, body) = request.into_parts();
            if let Err(err) = state.verify(&parts, Payload::Streaming) {
                return boxed(err.into_response());
            }
            let ctx = PutMediaContext {
                store: state.store.clone(),
                media: state.media.clone(),
                config: state.config.put_media,
                faults: state.faults.clone(),
                data_dir: state.data_dir.clone(),
                arrivals: state.arrivals.clone(),
                rates: state.rates.clone(),
            };
            putmedia::put_media(ctx, Request::from_parts(parts, body)).await
        }
        "/getMedia" => get_media(state, request).await,
        "/listFragments" => list_fragments(state, request)
            .await
            .unwrap_or_else(|err| boxed(err.into_response())),
        "/getMediaForFragmentList" => get_media_for_fragment_list(state, request)
            .await
            .unwrap_or_else(|err| boxed(err.into_response())),
        _ => control_plane(state, request).await,
    }
}

/// Counts a call of a read API and opens its connection, within the service's limits ([`limits`]); `None` when
/// the limits are lifted.
fn read_slot(
    state: &State,
    api: &'static str,
    arn: &str,
    most: usize,
) -> Result<Option<limits::Slot>, ApiError> {
    if !state.config.put_media.service_limits {
        return Ok(None);
    }
    state.read_limits.call(api, arn)?;
    state.read_limits.open(api, arn, most).map(Some)
}

/// `POST /getMedia`: validates, then streams the session from a task.
async fn get_media(state: &Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let kill = request.extensions().get::<ConnectionKill>().cloned();
    let (_parts, body) = match read_signed(state, request).await {
        Ok(read) => read,
        Err(err) => return boxed(err.into_response()),
    };
    let request: getmedia::GetMediaRequest = match parse_json(&body) {
        Ok(request) => request,
        Err(err) => return boxed(err.into_response()),
    };
    let start = match getmedia::parse_start(request.start_selector.as_ref()) {
        Ok(start) => start,
        Err(err) => return boxed(err.into_response()),
    };
    let arn = match stream_arn_of(
        state,
        request.stream_name.as_deref(),
        request.stream_arn.as_deref(),
    ) {
        Ok(arn) => arn,
        Err(err) => return boxed(err.into_response()),
    };
    let name = state
        .store
        .lock()
        .find(None, Some(&arn))
        .ok()
        .map(|s| s.stream_name.clone());
    let actions = state.faults.take("getMedia", name.as_deref());
    if let (Some(kill), Some(name)) = (&kill, &name) {
        state.faults.register("getMedia", name, kill);
    }
    if let Some(err) = state.faults.http_error("getMedia", &actions) {
        return boxed(err.into_response());
    }
    if let Some(response) = state.faults.raw_response("getMedia", &actions) {
        return response;
    }
    let first = {
        let streams = state.media.lock();
        let fragments = streams
            .get(&arn)
            .map_or(&[][..], |m| m.fragments.as_slice());
        match getmedia::start_sequence(fragments, &start) {
            Ok(first) => first,
            Err(err) => return boxed(err.into_response()),
        }
    };
    let slot = match read_slot(state, "GetMedia", &arn, limits::GET_MEDIA_SESSIONS) {
        Ok(slot) => slot,
        Err(err) => return boxed(err.into_response()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let store = state.store.clone();
    let media = state.media.clone();
    let rate = state
        .config
        .put_media
        .service_limits
        .then_some(limits::BYTES_PER_SECOND);
    let faults = state.faults.connection("getMedia", &actions);
    tokio::spawn(async move {
        let _slot = slot;
        let out = getmedia::Output::new(tx, faults, kill).limited(rate);
        getmedia::stream_session(store, media, arn, first, getmedia::IDLE_END, out).await;
    });
    let mut response = Response::new(putmedia::stream_body(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("video/webm"),
    );
    response
        .headers_mut()
        .insert("x-amzn-requestid", error::new_request_id());
    response
}

/// Parses a JSON request body (empty = `{}`), as the service's framework does.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
        .map_err(|err| ApiError::serialization(format!("Could not parse the request: {err}")))
}

/// The ARN of the stream a request names.
fn stream_arn_of(state: &State, name: Option<&str>, arn: Option<&str>) -> Result<String, ApiError> {
    if name.is_none() && arn.is_none() {
        return Err(ApiError::invalid_argument(
            "Either StreamName or StreamARN must be specified.",
        ));
    }
    Ok(state.store.lock().find(name, arn)?.stream_arn.clone())
}

/// `POST /listFragments`.
async fn list_fragments(
    state: &Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_signed(state, request).await?;
    injected_error(state, "listFragments", &body)?;
    let request: archived::ListFragmentsRequest = parse_json(&body)?;
    let arn = stream_arn_of(
        state,
        request.stream_name.as_deref(),
        request.stream_arn.as_deref(),
    )?;
    if state.config.put_media.service_limits {
        state.read_limits.call("ListFragments", &arn)?;
    }
    let output = {
        let streams = state.media.lock();
        let fragments = streams
            .get(&arn)
            .map_or(&[][..], |m| m.fragments.as_slice());
        archived::list_fragments(fragments, &request)?
    };
    Ok(boxed(error::json_response(
        hyper::StatusCode::OK,
        output.to_string().into_bytes(),
    )))
}

/// `POST /getMediaForFragmentList`: the fragments asked for, in that order, in the GetMedia layout.
async fn get_media_for_fragment_list(
    state: &Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let kill = request.extensions().get::<ConnectionKill>().cloned();
    let (_, body) = read_signed(state, request).await?;
    // Its faults: an HTTP error, or (on the response) throttle and drop_after_bytes, as for GetMedia.
    let actions = state.faults.take(
        "getMediaForFragmentList",
        request_stream(state, &body).as_deref(),
    );
    if let Some(err) = state.faults.http_error("getMediaForFragmentList", &actions) {
        return Err(err);
    }
    let request: archived::GetMediaForFragmentListRequest = parse_json(&body)?;
    let arn = stream_arn_of(
        state,
        request.stream_name.as_deref(),
        request.stream_arn.as_deref(),
    )?;
    let slot = read_slot(
        state,
        "GetMediaForFragmentList",
        &arn,
        limits::FRAGMENT_LIST_CONNECTIONS,
    )?;
    let numbers = request.fragments.unwrap_or_default();
    let chunks: Vec<Bytes> = {
        let streams = state.media.lock();
        let fragments = streams
            .get(&arn)
            .map_or(&[][..], |m| m.fragments.as_slice());
        archived::select_fragments(fragments, &numbers)?
            .into_iter()
            .flat_map(archived::fragment_document)
            .collect()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let rate = state
        .config
        .put_media
        .service_limits
        .then_some(limits::BYTES_PER_SECOND);
    let mut out = getmedia::Output::new(
        tx,
        state.faults.connection("getMediaForFragmentList", &actions),
        kill,
    )
    .limited(rate);
    tokio::spawn(async move {
        let _slot = slot;
        for chunk in chunks {
            if !out.send(chunk).await {
                break;
            }
        }
    });
    let mut response = Response::new(putmedia::stream_body(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("video/webm"),
    );
    response
        .headers_mut()
        .insert("x-amzn-requestid", error::new_request_id());
    Ok(response)
}

/// An injected HTTP error for a JSON API call (`api` is the path without its slash), matched on the stream the
/// body names.
fn injected_error(state: &State, api: &str, body: &[u8]) -> Result<(), ApiError> {
    let stream = request_stream(state, body);
    match state
        .faults
        .http_error(api, &state.faults.take(api, stream.as_deref()))
    {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// The name of the stream a JSON request body names (by name or ARN), if any.
fn request_stream(state: &State, body: &[u8]) -> Option<String> {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (
        request["StreamName"].as_str(),
        request["StreamARN"].as_str(),
    ) {
        (Some(name), _) => Some(name.to_owned()),
        (None, Some(arn)) => state
            .store
            .lock()
            .find(None, Some(arn))
            .ok()
            .map(|s| s.stream_name.clone()),
        (None, None) => None,
    }
}

/// Reads a JSON-API request's (small) body and checks its signature.
async fn read_signed(
    state: &State,
    request: Request<Incoming>,
) -> Result<(Parts, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts, body, MAX_CONTROL_BODY_BYTES).await?;
    state.verify(&parts, Payload::Bytes(&body))?;
    Ok((parts, body))
}

/// Reads a whole request body of at most `limit` bytes.
pub async fn read_body(parts: &Parts, body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::request_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::request_too_large(limit))
        }
        Err(err) => Err(ApiError::serialization(format!(
            "Could not read the request body: {err}"
        ))),
    }
}

/// A control-plane call: read the body, verify the signature, run the operation.
async fn control_plane(state: &Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = match read_signed(state, request).await {
        Ok(read) => read,
        Err(err) => return boxed(err.into_response()),
    };
    let operation = Operation::from_path(parts.uri.path()).filter(|_| parts.method == Method::POST);
    let Some(operation) = operation else {
        return boxed(ApiError::unknown_operation(parts.uri.path()).into_response());
    };
    if let Err(err) = injected_error(state, parts.uri.path().trim_start_matches('/'), &body) {
        return boxed(err.into_response());
    }
    let data_endpoint = state.data_endpoint(&parts);
    let response = control::handle(operation, &body, &state.store, &data_endpoint);
    if response.status() == hyper::StatusCode::OK && operation.changes_streams() {
        state.streams_changed().await;
    }
    boxed(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_handles_names_v4_and_v6() {
        assert_eq!(strip_port("127.0.0.1:4567"), "127.0.0.1");
        assert_eq!(strip_port("127.0.0.1"), "127.0.0.1");
        assert_eq!(strip_port("localhost:80"), "localhost");
        assert_eq!(strip_port("[::1]:4567"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn config_debug_hides_secrets() {
        let config = Config {
            credentials: vec![("AKID".into(), "TOPSECRET".into())],
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("TOPSECRET"));
    }
}
