//! A minimal client of the Kubernetes Container Runtime Interface
//! (`runtime.v1.RuntimeService`), which a VM test uses from the host to talk
//! to containerd's CRI plugin in the guest as the kubelet would, through a
//! Unix socket that OpenSSH forwards (see [`crate::ssh::Ssh::forward_socket`]).
//!
//! It speaks gRPC itself, over HTTP/2 by `h2`, with messages that derive
//! `prost::Message`: a handful of unary calls do not need tonic, generated
//! code or protoc. The messages carry only the fields the tests use, with
//! the field numbers of the real API, `pkg/apis/runtime/v1/api.proto` of
//! kubernetes/cri-api (read at commit 791729b255f0c2d0019d3862ba6ef000c4a30c4d);
//! protobuf skips the fields a message here leaves out.
//!
//! The VM tests are synchronous, so the client is too: it owns a
//! current-thread tokio runtime and blocks on each call, which has a time
//! limit of its own.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{BufMut as _, Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode};
use prost::Message;

/// The gRPC service every call goes to.
const SERVICE: &str = "runtime.v1.RuntimeService";

/// The content type of gRPC requests and responses.
const GRPC: &str = "application/grpc";

/// The API version the client announces in `Version`, as the kubelet does.
const KUBELET_API_VERSION: &str = "0.1.0";

/// Time limit of connecting and of most calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Time limit of the calls that start or stop a pod: the runtime creates or
/// kills its sandbox container and sets up or tears down its network.
const SANDBOX_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest response message accepted.
const MAX_MESSAGE: usize = 16 << 20;

// The messages. Each names its message in api.proto; field tags are that
// file's field numbers.

/// `VersionRequest`.
#[derive(Clone, PartialEq, Message)]
struct VersionRequest {
    #[prost(string, tag = "1")]
    version: String,
}

/// What the runtime says it is (`VersionResponse`).
#[derive(Clone, PartialEq, Message)]
pub struct Version {
    /// Version of the kubelet runtime API.
    #[prost(string, tag = "1")]
    pub version: String,
    /// Name of the container runtime (`containerd`).
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    /// Version of the container runtime.
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    /// API version of the container runtime (`v1`).
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

/// `StatusRequest`.
#[derive(Clone, PartialEq, Message)]
struct StatusRequest {
    #[prost(bool, tag = "1")]
    verbose: bool,
}

/// `StatusResponse`.
#[derive(Clone, PartialEq, Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<RuntimeStatus>,
}

/// `RuntimeStatus`.
#[derive(Clone, PartialEq, Message)]
struct RuntimeStatus {
    #[prost(message, repeated, tag = "1")]
    conditions: Vec<RuntimeCondition>,
}

/// One condition of the runtime (`RuntimeCondition`): `RuntimeReady` and
/// `NetworkReady` are the ones the kubelet requires.
#[derive(Clone, PartialEq, Message)]
pub struct RuntimeCondition {
    /// Type of the condition (`RuntimeReady`, `NetworkReady`).
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// Whether it holds.
    #[prost(bool, tag = "2")]
    pub status: bool,
    /// Brief CamelCase reason of its last transition.
    #[prost(string, tag = "3")]
    pub reason: String,
    /// Human-readable details of its last transition.
    #[prost(string, tag = "4")]
    pub message: String,
}

/// The name and identity of a pod (`PodSandboxMetadata`).
#[derive(Clone, PartialEq, Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    /// How many times the sandbox was created before (0 the first time).
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

/// Linux settings of a pod (`LinuxPodSandboxConfig`).
#[derive(Clone, PartialEq, Message)]
pub struct LinuxPodSandboxConfig {
    /// Parent cgroup of the pod, in cgroupfs syntax (the runtime converts
    /// it for systemd's driver).
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
}

/// What a pod is to be (`PodSandboxConfig`).
#[derive(Clone, PartialEq, Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    /// Directory on the node for the logs of the pod's containers.
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(btree_map = "string, string", tag = "6")]
    pub labels: BTreeMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

/// `RunPodSandboxRequest`; the runtime handler is left empty (the default).
#[derive(Clone, PartialEq, Message)]
struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    runtime_handler: String,
}

/// `RunPodSandboxResponse`, `StopPodSandboxRequest`,
/// `RemovePodSandboxRequest` and `PodSandboxStatusRequest` (whose field 2,
/// `verbose`, stays false): each holds only the sandbox's id, as field 1.
#[derive(Clone, PartialEq, Message)]
struct SandboxId {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
}

/// `StopPodSandboxResponse` and `RemovePodSandboxResponse`.
#[derive(Clone, PartialEq, Message)]
struct Empty {}

/// The state of a pod (`PodSandboxState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SandboxState {
    /// `SANDBOX_READY`.
    Ready = 0,
    /// `SANDBOX_NOTREADY`.
    NotReady = 1,
}

impl SandboxState {
    fn from_wire(value: i32) -> Result<SandboxState> {
        SandboxState::try_from(value).map_err(|_| anyhow!("unknown pod sandbox state {value}"))
    }
}

/// `PodSandboxStatusResponse`.
#[derive(Clone, PartialEq, Message)]
struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<PodSandboxStatus>,
}

/// `PodSandboxStatus`.
#[derive(Clone, PartialEq, Message)]
struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(enumeration = "SandboxState", tag = "3")]
    state: i32,
    #[prost(message, optional, tag = "5")]
    network: Option<PodSandboxNetworkStatus>,
}

/// `PodSandboxNetworkStatus`.
#[derive(Clone, PartialEq, Message)]
struct PodSandboxNetworkStatus {
    #[prost(string, tag = "1")]
    ip: String,
    #[prost(message, repeated, tag = "2")]
    additional_ips: Vec<PodIp>,
}

/// `PodIP`.
#[derive(Clone, PartialEq, Message)]
struct PodIp {
    #[prost(string, tag = "1")]
    ip: String,
}

/// `ListPodSandboxRequest`, without a filter.
#[derive(Clone, PartialEq, Message)]
struct ListPodSandboxRequest {}

/// `ListPodSandboxResponse`.
#[derive(Clone, PartialEq, Message)]
struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    items: Vec<PodSandbox>,
}

/// `PodSandbox`.
#[derive(Clone, PartialEq, Message)]
struct PodSandbox {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(enumeration = "SandboxState", tag = "3")]
    state: i32,
}

/// What the runtime says of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    pub id: String,
    pub state: SandboxState,
    /// The pod's IP address (empty when the runtime handles no network for it).
    pub ip: String,
    /// Its other addresses (the IPv6 one of a dual-stack pod).
    pub additional_ips: Vec<String>,
}

/// A pod in the runtime's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub state: SandboxState,
}

/// A call the runtime answered with a gRPC error; it can be found in an
/// error chain with `downcast_ref`, to tell `NOT_FOUND` (5) from others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcError {
    /// The method called (`RunPodSandbox`).
    pub method: String,
    /// The gRPC status code.
    pub code: u32,
    /// The status message, percent-decoded.
    pub message: String,
}

impl fmt::Display for GrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CRI {} failed with gRPC status {} ({}): {}",
            self.method,
            self.code,
            code_name(self.code),
            self.message
        )
    }
}

impl std::error::Error for GrpcError {}

/// The name of a gRPC status code.
fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("an unknown code")
}

/// A `grpc-message` decoded: gRPC percent-encodes it (UTF-8 bytes);
/// anything that is not `%` and two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC message frame: no compression, the length, the message.
fn frame(message: &impl Message) -> Result<Bytes> {
    let len = u32::try_from(message.encoded_len()).context("a request message over 4 GiB")?;
    let mut buf = BytesMut::with_capacity(5 + len as usize);
    buf.put_u8(0);
    buf.put_u32(len);
    message.encode(&mut buf).context("encoding the request message")?;
    Ok(buf.freeze())
}

/// The one message of a unary response body.
fn unframe(body: &[u8]) -> Result<&[u8]> {
    let Some((&[compressed, l0, l1, l2, l3], rest)) = body.split_first_chunk::<5>() else {
        bail!(
            "the response body ({} bytes) is shorter than a gRPC frame header",
            body.len()
        );
    };
    if compressed != 0 {
        bail!("the response message is compressed (flag {compressed}), which this client never asked for");
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_MESSAGE {
        bail!("the response message is said to be {len} bytes, more than {MAX_MESSAGE}");
    }
    if rest.len() != len {
        bail!(
            "the response frame says {len} bytes of message, the body holds {} after its header",
            rest.len()
        );
    }
    Ok(rest)
}

/// Whether `headers` (trailers, or the headers of a trailers-only response)
/// carry a `grpc-status`; an error if it is not 0 (OK).
fn check_status(method: &str, headers: &HeaderMap) -> Result<bool> {
    let Some(status) = headers.get("grpc-status") else {
        return Ok(false);
    };
    let code: u32 = status
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| anyhow!("CRI {method}: grpc-status {status:?} is not a number"))?;
    if code == 0 {
        return Ok(true);
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(&String::from_utf8_lossy(m.as_bytes())))
        .unwrap_or_default();
    Err(GrpcError {
        method: method.to_owned(),
        code,
        message,
    }
    .into())
}

/// One unary call: the request, then the response's headers, body and
/// trailers. Returns the response message's bytes.
async fn exchange(sender: SendRequest<Bytes>, method: &str, body: Bytes) -> Result<Bytes> {
    let mut sender = sender
        .ready()
        .await
        .context("the HTTP/2 connection to the runtime is gone")?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://localhost/{SERVICE}/{method}"))
        .header(CONTENT_TYPE, GRPC)
        .header(TE, "trailers")
        .header(USER_AGENT, "cairn-qemu-tests")
        .body(())
        .context("building the request")?;
    let (response, mut stream) = sender.send_request(request, false).context("sending the request")?;
    stream.send_data(body, true).context("sending the request message")?;
    let response = response.await.context("waiting for the response headers")?;
    let (head, mut body) = response.into_parts();
    // A trailers-only response (an error, mostly) has its status here.
    let status_in_headers = check_status(method, &head.headers)?;
    if head.status != StatusCode::OK {
        bail!("CRI {method} answered HTTP status {}", head.status);
    }
    let mut received = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.context("reading the response body")?;
        // Let the server send more (the window is per stream and connection).
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
        if received.len() > MAX_MESSAGE + 5 {
            bail!("CRI {method} sent more than {MAX_MESSAGE} bytes");
        }
    }
    let trailers = body.trailers().await.context("reading the response trailers")?;
    let status_in_trailers = match &trailers {
        Some(trailers) => check_status(method, trailers)?,
        None => false,
    };
    if !status_in_headers && !status_in_trailers {
        bail!("CRI {method} answered without a grpc-status");
    }
    let message = unframe(&received).with_context(|| format!("CRI {method}"))?;
    Ok(Bytes::copy_from_slice(message))
}

/// A connection to a CRI runtime service.
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    sender: SendRequest<Bytes>,
    socket: PathBuf,
}

impl Cri {
    /// Connect to the runtime service listening on `socket` (HTTP/2 with
    /// prior knowledge, as gRPC over a Unix socket is).
    pub fn connect(socket: &Path) -> Result<Cri> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the CRI client's runtime")?;
        let shown = socket.display();
        let sender = runtime.block_on(async {
            let connecting = async {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .with_context(|| format!("connecting to {shown}"))?;
                let (sender, connection) = h2::client::handshake(stream)
                    .await
                    .with_context(|| format!("starting HTTP/2 on {shown}"))?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("CRI connection ended: {e}");
                    }
                });
                anyhow::Ok(sender)
            };
            tokio::time::timeout(CALL_TIMEOUT, connecting).await.map_err(|_| {
                anyhow!(
                    "connecting to the CRI socket {shown} took over {}s",
                    CALL_TIMEOUT.as_secs()
                )
            })?
        })?;
        Ok(Cri {
            runtime,
            sender,
            socket: socket.to_owned(),
        })
    }

    /// Call `method` with `request`, for at most `limit`.
    fn call<R: Message + Default>(&self, method: &str, request: &impl Message, limit: Duration) -> Result<R> {
        let body = frame(request).with_context(|| format!("CRI {method}"))?;
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(limit, exchange(self.sender.clone(), method, body)).await })
            .map_err(|_| {
                anyhow!(
                    "CRI {method} on {} did not answer within {}s",
                    self.socket.display(),
                    limit.as_secs()
                )
            })?
            .with_context(|| format!("CRI {method} on {}", self.socket.display()))?;
        R::decode(answer).with_context(|| format!("decoding the answer of CRI {method}"))
    }

    /// The runtime's name and versions (`Version`).
    pub fn version(&self) -> Result<Version> {
        let request = VersionRequest {
            version: KUBELET_API_VERSION.to_owned(),
        };
        self.call("Version", &request, CALL_TIMEOUT)
    }

    /// The runtime's conditions (`Status`).
    pub fn status(&self) -> Result<Vec<RuntimeCondition>> {
        let response: StatusResponse = self.call("Status", &StatusRequest { verbose: false }, CALL_TIMEOUT)?;
        Ok(response.status.map(|s| s.conditions).unwrap_or_default())
    }

    /// Start a pod (`RunPodSandbox`) with the default runtime handler;
    /// returns its sandbox id.
    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let response: SandboxId = self.call("RunPodSandbox", &request, SANDBOX_TIMEOUT)?;
        if response.pod_sandbox_id.is_empty() {
            bail!("CRI RunPodSandbox answered no sandbox id");
        }
        Ok(response.pod_sandbox_id)
    }

    /// What the runtime says of pod `id` (`PodSandboxStatus`).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        let request = SandboxId {
            pod_sandbox_id: id.to_owned(),
        };
        let response: PodSandboxStatusResponse = self.call("PodSandboxStatus", &request, CALL_TIMEOUT)?;
        let status = response
            .status
            .ok_or_else(|| anyhow!("CRI PodSandboxStatus answered no status for {id}"))?;
        let network = status.network.unwrap_or_default();
        Ok(SandboxStatus {
            id: status.id,
            state: SandboxState::from_wire(status.state).with_context(|| format!("pod {id}"))?,
            ip: network.ip,
            additional_ips: network.additional_ips.into_iter().map(|p| p.ip).collect(),
        })
    }

    /// Stop pod `id`: kill its containers, tear down its network
    /// (`StopPodSandbox`).
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = SandboxId {
            pod_sandbox_id: id.to_owned(),
        };
        self.call::<Empty>("StopPodSandbox", &request, SANDBOX_TIMEOUT)
            .map(|_| ())
    }

    /// Remove pod `id`, stopped first (`RemovePodSandbox`).
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = SandboxId {
            pod_sandbox_id: id.to_owned(),
        };
        self.call::<Empty>("RemovePodSandbox", &request, CALL_TIMEOUT)
            .map(|_| ())
    }

    /// Every pod the runtime knows (`ListPodSandbox`).
    pub fn list_pod_sandbox(&self) -> Result<Vec<Sandbox>> {
        let response: ListPodSandboxResponse = self.call("ListPodSandbox", &ListPodSandboxRequest {}, CALL_TIMEOUT)?;
        response
            .items
            .into_iter()
            .map(|p| {
                Ok(Sandbox {
                    state: SandboxState::from_wire(p.state).with_context(|| format!("pod {}", p.id))?,
                    id: p.id,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use h2::server::SendResponse;
    use http::{HeaderName, HeaderValue, Response};

    use super::*;

    /// How the test server answers a call.
    enum Answer {
        /// This message, then `grpc-status: 0` in the trailers.
        Message(Vec<u8>),
        /// A trailers-only response with this status and (raw) message.
        TrailersOnly(u32, &'static str),
        /// This message, then this status and (raw) message in the trailers.
        Trailers(Vec<u8>, u32, &'static str),
        /// These body bytes as they are, then `grpc-status: 0`.
        RawBody(Vec<u8>),
        /// Nothing, ever.
        Hang,
    }

    type Handler = dyn Fn(&str, &[u8]) -> Answer + Send + Sync;

    /// A gRPC server on a Unix socket in `dir` that checks each request's
    /// method, path and headers, takes its one message out of the frame and
    /// answers with `handler(method, message)`. A request it finds wrong
    /// is answered with INVALID_ARGUMENT naming what is wrong.
    fn serve(dir: &Path, handler: impl Fn(&str, &[u8]) -> Answer + Send + Sync + 'static) -> PathBuf {
        let socket = dir.join("cri.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let handler = Arc::clone(&handler);
                    tokio::spawn(async move {
                        let mut connection = h2::server::handshake(stream).await.unwrap();
                        while let Some(Ok((request, respond))) = connection.accept().await {
                            tokio::spawn(handle(request, respond, Arc::clone(&handler)));
                        }
                    });
                }
            });
        });
        socket
    }

    async fn handle(request: Request<h2::RecvStream>, mut respond: SendResponse<Bytes>, handler: Arc<Handler>) {
        let (head, mut body) = request.into_parts();
        let mut received = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        let path = head.uri.path().to_owned();
        let header = |name: HeaderName| head.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        let answer = if head.method != Method::POST {
            Answer::TrailersOnly(3, "not a POST")
        } else if header(CONTENT_TYPE) != Some(GRPC) {
            Answer::TrailersOnly(3, "wrong content-type")
        } else if header(TE) != Some("trailers") {
            Answer::TrailersOnly(3, "no te: trailers")
        } else if let Some(method) = path.strip_prefix("/runtime.v1.RuntimeService/") {
            match unframe(&received) {
                Ok(message) => handler(method, message),
                Err(_) => Answer::TrailersOnly(3, "bad request frame"),
            }
        } else {
            Answer::TrailersOnly(12, "unknown path")
        };
        let trailers = |code: u32, message: &str| {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", code.to_string().parse().unwrap());
            if !message.is_empty() {
                t.insert("grpc-message", message.parse().unwrap());
            }
            t
        };
        let head = || Response::builder().header(CONTENT_TYPE, GRPC).body(()).unwrap();
        let framed = |message: Vec<u8>| {
            let mut b = vec![0];
            b.extend_from_slice(&(message.len() as u32).to_be_bytes());
            b.extend_from_slice(&message);
            b
        };
        let (body, code, message) = match answer {
            Answer::Hang => return std::future::pending().await,
            Answer::TrailersOnly(code, message) => {
                let mut response = head();
                response.headers_mut().extend(trailers(code, message));
                respond.send_response(response, true).unwrap();
                return;
            }
            Answer::Message(m) => (framed(m), 0, ""),
            Answer::Trailers(m, code, message) => (framed(m), code, message),
            Answer::RawBody(b) => (b, 0, ""),
        };
        let mut stream = respond.send_response(head(), false).unwrap();
        stream.send_data(Bytes::from(body), false).unwrap();
        stream.send_trailers(trailers(code, message)).unwrap();
    }

    fn encoded(m: &impl Message) -> Vec<u8> {
        m.encode_to_vec()
    }

    #[test]
    fn version_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let socket = serve(d.path(), |method, message| {
            let request = VersionRequest::decode(message).unwrap();
            if method != "Version" || request.version != "0.1.0" {
                return Answer::TrailersOnly(3, "not the expected Version request");
            }
            Answer::Message(encoded(&Version {
                version: "0.1.0".into(),
                runtime_name: "containerd".into(),
                runtime_version: "v2.0.4".into(),
                runtime_api_version: "v1".into(),
            }))
        });
        let cri = Cri::connect(&socket).unwrap();
        let v = cri.version().unwrap();
        assert_eq!(v.runtime_name, "containerd");
        assert_eq!(v.runtime_version, "v2.0.4");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.version, "0.1.0");
        // The connection carries more than one call.
        assert_eq!(cri.version().unwrap(), v);
    }

    #[test]
    fn status_conditions_are_decoded() {
        let d = tempfile::tempdir().unwrap();
        let socket = serve(d.path(), |method, message| {
            if method != "Status" || !message.is_empty() {
                return Answer::TrailersOnly(3, "not the expected Status request");
            }
            let condition = |t: &str, status, reason: &str, message: &str| RuntimeCondition {
                r#type: t.into(),
                status,
                reason: reason.into(),
                message: message.into(),
            };
            Answer::Message(encoded(&StatusResponse {
                status: Some(RuntimeStatus {
                    conditions: vec![
                        condition("RuntimeReady", true, "", ""),
                        condition(
                            "NetworkReady",
                            false,
                            "NetworkPluginNotReady",
                            "cni plugin not initialized",
                        ),
                    ],
                }),
            }))
        });
        let conditions = Cri::connect(&socket).unwrap().status().unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].r#type, "RuntimeReady");
        assert!(conditions[0].status);
        assert_eq!(conditions[1].r#type, "NetworkReady");
        assert!(!conditions[1].status);
        assert_eq!(conditions[1].reason, "NetworkPluginNotReady");
        assert_eq!(conditions[1].message, "cni plugin not initialized");
    }

    #[test]
    fn a_grpc_error_names_the_method_the_code_and_the_message() {
        let d = tempfile::tempdir().unwrap();
        let socket = serve(d.path(), |method, message| match method {
            "RunPodSandbox" => {
                let request = RunPodSandboxRequest::decode(message).unwrap();
                assert_eq!(request.config.unwrap().hostname, "pod-a");
                Answer::TrailersOnly(2, "no sandbox image")
            }
            "PodSandboxStatus" => Answer::Trailers(Vec::new(), 5, "sandbox%20%22x%22%20not%20found%3A%20%E2%9C%97"),
            _ => Answer::TrailersOnly(12, "unexpected method"),
        });
        let cri = Cri::connect(&socket).unwrap();
        let config = PodSandboxConfig {
            hostname: "pod-a".into(),
            ..Default::default()
        };
        let e = cri.run_pod_sandbox(&config).unwrap_err();
        let shown = format!("{e:#}");
        assert!(shown.contains("RunPodSandbox"), "{shown}");
        assert!(shown.contains("status 2 (UNKNOWN): no sandbox image"), "{shown}");
        let status = e.downcast_ref::<GrpcError>().expect("a GrpcError in the chain");
        assert_eq!((status.code, status.message.as_str()), (2, "no sandbox image"));

        // In trailers after headers, percent-encoded.
        let e = cri.pod_sandbox_status("x").unwrap_err();
        let status = e.downcast_ref::<GrpcError>().expect("a GrpcError in the chain");
        assert_eq!(status.method, "PodSandboxStatus");
        assert_eq!(status.code, 5);
        assert_eq!(status.message, "sandbox \"x\" not found: ✗");
        assert!(format!("{e:#}").contains("NOT_FOUND"), "{e:#}");
    }

    #[test]
    fn a_wrong_frame_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let socket = serve(d.path(), |method, _| match method {
            // Says 10 bytes, holds 3.
            "Version" => Answer::RawBody(vec![0, 0, 0, 0, 10, 1, 2, 3]),
            // Shorter than a frame header.
            "Status" => Answer::RawBody(vec![0, 0]),
            // Compressed.
            "ListPodSandbox" => Answer::RawBody(vec![1, 0, 0, 0, 0]),
            // Not a message of this type: field 1 of RunPodSandboxResponse
            // is a string, this is a varint.
            _ => Answer::RawBody(vec![0, 0, 0, 0, 2, 0x08, 0x01]),
        });
        let cri = Cri::connect(&socket).unwrap();
        let e = format!("{:#}", cri.version().unwrap_err());
        assert!(e.contains("CRI Version") && e.contains("says 10 bytes"), "{e}");
        let e = format!("{:#}", cri.status().unwrap_err());
        assert!(
            e.contains("CRI Status") && e.contains("shorter than a gRPC frame header"),
            "{e}"
        );
        let e = format!("{:#}", cri.list_pod_sandbox().unwrap_err());
        assert!(e.contains("compressed"), "{e}");
        let e = format!("{:#}", cri.run_pod_sandbox(&PodSandboxConfig::default()).unwrap_err());
        assert!(e.contains("decoding the answer of CRI RunPodSandbox"), "{e}");
    }

    #[test]
    fn a_call_that_gets_no_answer_times_out_naming_the_call() {
        let d = tempfile::tempdir().unwrap();
        let socket = serve(d.path(), |_, _| Answer::Hang);
        let cri = Cri::connect(&socket).unwrap();
        let e = cri
            .call::<Empty>("StopPodSandbox", &Empty {}, Duration::from_millis(300))
            .unwrap_err();
        assert!(e.to_string().contains("CRI StopPodSandbox"), "{e}");
        assert!(e.to_string().contains("did not answer within 0s"), "{e}");
    }

    #[test]
    fn no_server_is_an_error_naming_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let e = Cri::connect(&d.path().join("none.sock")).err().unwrap();
        assert!(format!("{e:#}").contains("none.sock"), "{e:#}");
    }

    #[test]
    fn sandbox_calls_send_the_id_and_decode_the_answers() {
        let d = tempfile::tempdir().unwrap();
        let socket = serve(d.path(), |method, message| {
            let id = SandboxId::decode(message).map(|r| r.pod_sandbox_id).unwrap_or_default();
            match method {
                "RunPodSandbox" => Answer::Message(encoded(&SandboxId {
                    pod_sandbox_id: "sb-1".into(),
                })),
                "StopPodSandbox" | "RemovePodSandbox" if id == "sb-1" => Answer::Message(Vec::new()),
                "PodSandboxStatus" if id == "sb-1" => Answer::Message(encoded(&PodSandboxStatusResponse {
                    status: Some(PodSandboxStatus {
                        id: id.clone(),
                        state: SandboxState::NotReady as i32,
                        network: Some(PodSandboxNetworkStatus {
                            ip: "10.88.0.2".into(),
                            additional_ips: vec![PodIp { ip: "fd00::2".into() }],
                        }),
                    }),
                })),
                "ListPodSandbox" => Answer::Message(encoded(&ListPodSandboxResponse {
                    items: vec![
                        PodSandbox {
                            id: "sb-1".into(),
                            state: 0,
                        },
                        PodSandbox {
                            id: "sb-0".into(),
                            state: 1,
                        },
                    ],
                })),
                _ => Answer::TrailersOnly(5, "no such sandbox"),
            }
        });
        let cri = Cri::connect(&socket).unwrap();
        let id = cri.run_pod_sandbox(&PodSandboxConfig::default()).unwrap();
        assert_eq!(id, "sb-1");
        assert_eq!(
            cri.pod_sandbox_status(&id).unwrap(),
            SandboxStatus {
                id: "sb-1".into(),
                state: SandboxState::NotReady,
                ip: "10.88.0.2".into(),
                additional_ips: vec!["fd00::2".into()],
            }
        );
        assert_eq!(
            cri.list_pod_sandbox().unwrap(),
            [
                Sandbox {
                    id: "sb-1".into(),
                    state: SandboxState::Ready
                },
                Sandbox {
                    id: "sb-0".into(),
                    state: SandboxState::NotReady
                },
            ]
        );
        cri.stop_pod_sandbox(&id).unwrap();
        cri.remove_pod_sandbox(&id).unwrap();
        let e = cri.remove_pod_sandbox("sb-9").unwrap_err();
        assert_eq!(e.downcast_ref::<GrpcError>().map(|s| s.code), Some(5));
    }

    /// Hand-encoded protobuf (tag byte = field number << 3 | wire type;
    /// 0 varint, 2 length-delimited) against api.proto's field numbers.
    #[test]
    fn messages_encode_with_the_field_numbers_of_api_proto() {
        assert_eq!(
            encoded(&VersionRequest {
                version: "0.1.0".into()
            }),
            b"\x0a\x050.1.0"
        );
        assert_eq!(encoded(&StatusRequest { verbose: true }), [0x08, 0x01]);
        let metadata = PodSandboxMetadata {
            name: "p".into(),
            uid: "u".into(),
            namespace: "n".into(),
            attempt: 1,
        };
        // name 1, uid 2, namespace 3 (strings), attempt 4 (varint).
        assert_eq!(encoded(&metadata), b"\x0a\x01p\x12\x01u\x1a\x01n\x20\x01");
        let config = PodSandboxConfig {
            metadata: Some(metadata),
            hostname: "h".into(),
            log_directory: "/l".into(),
            labels: [("a".to_owned(), "b".to_owned())].into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "c".into(),
            }),
        };
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let mut expected = b"\x0a\x21".to_vec(); // config, field 1, 33 bytes
        expected.extend_from_slice(b"\x0a\x0b\x0a\x01p\x12\x01u\x1a\x01n\x20\x01"); // metadata 1
        expected.extend_from_slice(b"\x12\x01h"); // hostname 2
        expected.extend_from_slice(b"\x1a\x02/l"); // log_directory 3
        expected.extend_from_slice(b"\x32\x06\x0a\x01a\x12\x01b"); // labels 6: entry {key 1, value 2}
        expected.extend_from_slice(b"\x42\x03\x0a\x01c"); // linux 8: cgroup_parent 1
        assert_eq!(encoded(&request), expected);
        assert_eq!(
            encoded(&SandboxId {
                pod_sandbox_id: "x".into()
            }),
            b"\x0a\x01x"
        );
    }

    #[test]
    fn answers_decode_with_the_field_numbers_of_api_proto() {
        // VersionResponse: version 1, runtime_name 2, runtime_version 3,
        // runtime_api_version 4.
        let v = Version::decode(&b"\x0a\x010\x12\x01c\x1a\x012\x22\x02v1"[..]).unwrap();
        assert_eq!(
            (
                v.version.as_str(),
                v.runtime_name.as_str(),
                v.runtime_version.as_str(),
                v.runtime_api_version.as_str()
            ),
            ("0", "c", "2", "v1")
        );
        // StatusResponse { status 1: RuntimeStatus { conditions 1: [
        // { type 1, status 2, reason 3, message 4 }] }, info 2 (skipped) }.
        let condition = b"\x0a\x01T\x10\x01\x1a\x01R\x22\x01M";
        let mut status = vec![0x0a, condition.len() as u8];
        status.extend_from_slice(condition);
        let mut response = vec![0x0a, status.len() as u8];
        response.extend_from_slice(&status);
        response.extend_from_slice(b"\x12\x06\x0a\x01k\x12\x01v");
        let r = StatusResponse::decode(&response[..]).unwrap();
        assert_eq!(
            r.status.unwrap().conditions,
            [RuntimeCondition {
                r#type: "T".into(),
                status: true,
                reason: "R".into(),
                message: "M".into(),
            }]
        );
        // PodSandboxStatus: id 1, metadata 2 (skipped), state 3,
        // created_at 4 (skipped), network 5 { ip 1, additional_ips 2 [{ ip 1 }] }.
        let network = b"\x0a\x01A\x12\x03\x0a\x01B";
        let mut sandbox = b"\x0a\x01x\x12\x03\x0a\x01p\x18\x01\x20\x96\x01".to_vec();
        sandbox.extend_from_slice(&[0x2a, network.len() as u8]);
        sandbox.extend_from_slice(network);
        let mut response = vec![0x0a, sandbox.len() as u8];
        response.extend_from_slice(&sandbox);
        let r = PodSandboxStatusResponse::decode(&response[..]).unwrap().status.unwrap();
        assert_eq!((r.id.as_str(), r.state), ("x", 1));
        let network = r.network.unwrap();
        assert_eq!((network.ip.as_str(), network.additional_ips[0].ip.as_str()), ("A", "B"));
        // ListPodSandboxResponse: items 1 [PodSandbox { id 1, state 3 }].
        let r = ListPodSandboxResponse::decode(&b"\x0a\x05\x0a\x01y\x18\x01"[..]).unwrap();
        assert_eq!((r.items[0].id.as_str(), r.items[0].state), ("y", 1));
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%3a%E2%9C%97"), "a b:✗");
        assert_eq!(percent_decode("100% sure%2"), "100% sure%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "an unknown code");
    }
}
