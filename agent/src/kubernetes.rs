//! The `kubernetes` reboot strategy: the agent drains its own node before
//! rebooting into a staged update, and puts it back in service once the
//! health gate committed the update.
//!
//! Before the reboot ([`prepare_reboot`]):
//! 1. the Node's [`PAUSE_ANNOTATION`] holds updates on that node;
//! 2. a slot of the node's group is taken: `coordination.k8s.io/v1` Leases
//!    `cairn-reboot-<group>-<i>`, `i < max-unavailable`, each taken by a
//!    compare-and-swap on its `resourceVersion` (a `409 Conflict` means
//!    another node won it). A slot whose holder stopped renewing it for
//!    longer than its `leaseDurationSeconds` is free, so a node that died
//!    holding one does not block the fleet;
//! 3. the Node is cordoned, and [`CORDONED_ANNOTATION`] says it was the
//!    agent (a node an operator had cordoned stays cordoned afterwards);
//! 4. its pods are evicted through the Eviction API (DaemonSet pods, mirror
//!    pods and finished pods stay, as `kubectl drain` leaves them; a pod no
//!    controller runs holds the drain, as `kubectl drain` refuses it
//!    without `--force`: evicting it would delete it for good); a refusal —
//!    `429` from a PodDisruptionBudget, or any other failure — is asked
//!    again each round until the drain timeout. On the cluster's only node
//!    the pods have nowhere to go and a budget could hold them forever: it
//!    reboots without evicting.
//!
//! Whatever ends a drain but its completion — the timeout, an API error,
//! the daemon stopping, the update dropped, the pause annotation set
//! meanwhile — undoes it (uncordoned, slot given back) and holds the
//! reboot, naming the pods that blocked it. After the reboot, once the
//! health gate has decided and the node is Ready again ([`finish`], at
//! every start of the daemon), the node is uncordoned if the agent
//! cordoned it and every slot it holds is given back. The state of all
//! this is kept in the cluster (the Lease's holder, the Node's
//! annotation), not on the host.
//!
//! Requests are built and answers read here, over [`Http`]; the host's
//! HTTPS client with the kubeconfig's CA and credentials is
//! [`host_client`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::metadata::{Http, Method, Request, Response};

/// A Node annotation: `"true"` holds updates on that node.
pub const PAUSE_ANNOTATION: &str = "updates.cairn.dev/paused";
/// A Node annotation the agent sets when it cordons the node, so that it
/// uncordons only what it cordoned.
pub const CORDONED_ANNOTATION: &str = "updates.cairn.dev/cordoned";
/// Where the agent's kubeconfig is read from, unless configured.
pub const DEFAULT_KUBECONFIG: &str = "/etc/cairn/kubeconfig";
/// How long one API request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a drain looks at the node's pods again.
pub const DRAIN_POLL: Duration = Duration::from_secs(5);

/// The strategy's settings (`[reboot]` keys in parentheses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The kubeconfig with the cluster and the agent's credentials (`kubeconfig`).
    pub kubeconfig: PathBuf,
    /// This host's Node (`kubernetes-node-name`); `None`: the host name, as kubelet names it.
    pub node_name: Option<String>,
    /// Nodes of a group share its slots (`kubernetes-group`).
    pub group: String,
    /// How many nodes of the group may be down for an update at once (`kubernetes-max-unavailable`).
    pub max_unavailable: u32,
    /// The namespace of the slots' Leases (`kubernetes-lease-namespace`).
    pub lease_namespace: String,
    /// A slot not renewed for this long is free: how long a node may take
    /// to reboot and commit (`kubernetes-lease-duration`).
    pub lease_duration: Duration,
    /// How long evicting the node's pods may take (`drain-timeout`).
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kubeconfig: PathBuf::from(DEFAULT_KUBECONFIG),
            node_name: None,
            group: "default".into(),
            max_unavailable: 1,
            lease_namespace: "kube-system".into(),
            lease_duration: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(1800),
        }
    }
}

/// Whether `name` is a lowercase RFC 1123 name of at most `max` characters:
/// letters, digits, `-` (and `.` when `dots`), starting and ending with a
/// letter or digit.
fn is_rfc1123(name: &str, max: usize, dots: bool) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `name` can be part of a Lease's name (lowercase RFC 1123).
pub fn check_group(name: &str) -> Result<(), String> {
    if is_rfc1123(name, 200, true) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit (it names Leases)"
        ))
    }
}

/// Whether `name` can be a namespace (an RFC 1123 label).
pub fn check_namespace(name: &str) -> Result<(), String> {
    if is_rfc1123(name, 63, false) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit (a namespace)"
        ))
    }
}

/// The Lease name of slot `i` of `group`.
pub fn slot_name(group: &str, i: u32) -> String {
    format!("cairn-reboot-{group}-{i}")
}

// ---------------------------------------------------------------------------
// kubeconfig

/// How the agent reaches the API server, from its kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub server: String,
    /// PEM of the CA that signs the server's certificate (`None`: the system's).
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_tls_verify: bool,
    pub auth: Auth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// A bearer token (a service account's).
    Token(String),
    /// A client certificate and its key, PEM.
    Certificate {
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    },
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: ClusterEntry,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: UserEntry,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: ContextEntry,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
    username: Option<String>,
}

#[derive(Deserialize)]
struct ContextEntry {
    cluster: String,
    user: String,
}

/// Read the kubeconfig at `path` (and the files it names, relative to its
/// folder): the current context's cluster and user.
pub fn read_kubeconfig(path: &Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the kubeconfig {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let read = |name: &str| -> Result<Vec<u8>, String> {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| format!("{}: reading {}: {e}", path.display(), p.display()))
    };
    parse_kubeconfig(&text, &read).map_err(|e| format!("{}: {e}", path.display()))
}

/// The current context of a kubeconfig's `text`; `read` reads a file it
/// names.
pub fn parse_kubeconfig(text: &str, read: &dyn Fn(&str) -> Result<Vec<u8>, String>) -> Result<Credentials, String> {
    // serde_yaml's errors say the line and column.
    let config: Kubeconfig = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let one = |what: &str, list: &[String]| format!("{what} (the file has {})", list.join(", "));
    let context_names: Vec<String> = config.contexts.iter().map(|c| c.name.clone()).collect();
    let context = match config.current_context.as_str() {
        "" if config.contexts.len() == 1 => &config.contexts[0],
        "" => return Err(one("no current-context, and not exactly one context", &context_names)),
        name => config.contexts.iter().find(|c| c.name == name).ok_or_else(|| {
            one(
                &format!("current-context `{name}` is not among the contexts"),
                &context_names,
            )
        })?,
    };
    let context = &context.context;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .map(|c| &c.cluster)
        .ok_or_else(|| {
            format!(
                "cluster `{}` (of the current context) is not in the file",
                context.cluster
            )
        })?;
    let user = config
        .users
        .iter()
        .find(|u| u.name == context.user)
        .map(|u| &u.user)
        .ok_or_else(|| format!("user `{}` (of the current context) is not in the file", context.user))?;

    let data = |what: &str, inline: &Option<String>, file: &Option<String>| -> Result<Option<Vec<u8>>, String> {
        match (inline, file) {
            (Some(d), _) => base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map(Some)
                .map_err(|e| format!("{what}-data is not base64: {e}")),
            (None, Some(f)) => read(f).map(Some),
            (None, None) => Ok(None),
        }
    };
    if !(cluster.server.starts_with("https://") || cluster.server.starts_with("http://")) {
        return Err(format!(
            "cluster `{}`: server `{}` is not an https:// URL",
            context.cluster, cluster.server
        ));
    }
    if user.exec.is_some() || user.auth_provider.is_some() || user.username.is_some() {
        return Err(format!(
            "user `{}`: only a token, a tokenFile or a client certificate are supported (not exec plugins, auth providers or passwords): give the agent a service account's token",
            context.user
        ));
    }
    let auth = match (&user.token, &user.token_file) {
        (Some(t), _) => Auth::Token(t.trim().to_owned()),
        (None, Some(f)) => {
            let t = String::from_utf8(read(f)?).map_err(|_| format!("tokenFile {f} is not text"))?;
            Auth::Token(t.trim().to_owned())
        }
        (None, None) => {
            let cert = data(
                "client-certificate",
                &user.client_certificate_data,
                &user.client_certificate,
            )?;
            let key = data("client-key", &user.client_key_data, &user.client_key)?;
            match (cert, key) {
                (Some(cert_pem), Some(key_pem)) => Auth::Certificate { cert_pem, key_pem },
                (None, None) => Auth::None,
                _ => {
                    return Err(format!(
                        "user `{}`: a client certificate needs its key, and the reverse",
                        context.user
                    ))
                }
            }
        }
    };
    Ok(Credentials {
        server: cluster.server.trim_end_matches('/').to_owned(),
        ca_pem: data(
            "certificate-authority",
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        )?,
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        auth,
    })
}

/// The host's HTTPS client for the cluster: the kubeconfig's CA (only it,
/// as kubectl: the system's roots when the kubeconfig names none), and its
/// client certificate (a PKCS#8, PKCS#1 or SEC1 key).
pub fn host_client(c: &Credentials) -> Result<crate::metadata::host::HostHttp, String> {
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = &c.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("the cluster's CA: {e}"))?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if c.insecure_skip_tls_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Auth::Certificate { cert_pem, key_pem } = &c.auth {
        let mut pem = cert_pem.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key_pem);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| format!("the client certificate: {e}"))?;
        builder = builder.identity(identity);
    }
    crate::metadata::host::HostHttp::with_client(builder)
}

// ---------------------------------------------------------------------------
// The API objects the agent reads (only the fields it uses).

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// Everything else (labels, finalizers, …), kept so that a replace
    /// writes back what others set.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct OwnerReference {
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default)]
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpec {
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl Node {
    fn ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True")
    }

    fn annotated(&self, key: &str) -> bool {
        self.metadata.annotations.get(key).is_some_and(|v| v == "true")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: String,
}

impl Pod {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Lease {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: LeaseSpec,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseSpec {
    /// Serialised as `null` when empty: a replace must clear the holder.
    pub holder_identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_transitions: Option<i64>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
}

// ---------------------------------------------------------------------------
// Pure decisions

/// Kubernetes' MicroTime for `secs` since the epoch.
pub fn micro_time(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn parse_time(s: &str) -> Option<u64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp()).ok())
}

/// Who holds a slot's Lease, as `me` sees it at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Mine,
    Free,
    /// Another node holds it, until this time unless it renews.
    Held {
        holder: String,
        until: u64,
    },
}

pub fn slot_state(lease: &Lease, me: &str, now: u64) -> SlotState {
    let holder = match lease.spec.holder_identity.as_deref() {
        None | Some("") => return SlotState::Free,
        Some(h) if h == me => return SlotState::Mine,
        Some(h) => h.to_owned(),
    };
    // A holder that never said when it renewed, or for how long, cannot
    // keep the slot (kured #137: a lock held by a node gone for good).
    let renewed = lease
        .spec
        .renew_time
        .as_deref()
        .or(lease.spec.acquire_time.as_deref())
        .and_then(parse_time);
    let duration = lease.spec.lease_duration_seconds.and_then(|d| u64::try_from(d).ok());
    match (renewed, duration) {
        (Some(at), Some(d)) if at + d > now => SlotState::Held { holder, until: at + d },
        _ => SlotState::Free,
    }
}

/// The Lease that gives slot `name` to `me` from `now` (replacing `current`
/// when there is one, on its `resourceVersion`).
pub fn taken_lease(
    current: Option<&Lease>,
    name: &str,
    namespace: &str,
    me: &str,
    now: u64,
    duration: Duration,
) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        ..Lease::default()
    });
    lease.api_version = "coordination.k8s.io/v1".into();
    lease.kind = "Lease".into();
    let renewing = lease.spec.holder_identity.as_deref() == Some(me);
    if !renewing {
        lease.spec.acquire_time = Some(micro_time(now));
        lease.spec.lease_transitions = Some(lease.spec.lease_transitions.unwrap_or(0) + i64::from(current.is_some()));
    }
    lease.spec.holder_identity = Some(me.to_owned());
    lease.spec.renew_time = Some(micro_time(now));
    lease.spec.lease_duration_seconds = Some(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX));
    lease
}

/// `current` given back: no holder.
pub fn released_lease(current: &Lease) -> Lease {
    let mut lease = current.clone();
    lease.api_version = "coordination.k8s.io/v1".into();
    lease.kind = "Lease".into();
    lease.spec.holder_identity = None;
    lease.spec.renew_time = None;
    lease
}

/// What a drain does with each pod of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodFate {
    Evict,
    /// Going away already (an eviction was accepted).
    Terminating,
    /// Stays, for this reason (as `kubectl drain` leaves it).
    Stays(&'static str),
    /// Holds the drain: an operator must move it.
    Blocks(&'static str),
}

pub fn pod_fate(pod: &Pod) -> PodFate {
    if pod.metadata.annotations.contains_key("kubernetes.io/config.mirror") {
        return PodFate::Stays("a mirror pod (kubelet's static pod)");
    }
    if pod.metadata.owner_references.iter().any(|o| o.kind == "DaemonSet") {
        return PodFate::Stays("run by a DaemonSet");
    }
    if matches!(pod.status.phase.as_str(), "Succeeded" | "Failed") {
        return PodFate::Stays("finished");
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return PodFate::Terminating;
    }
    if pod.metadata.owner_references.is_empty() {
        // What `kubectl drain` refuses without --force: nothing would
        // start it again.
        return PodFate::Blocks("not managed by a controller: evicting it would delete it for good");
    }
    PodFate::Evict
}

// ---------------------------------------------------------------------------
// The API

/// The cluster's API, for one node, over [`Http`].
pub struct Api<'a> {
    pub http: &'a dyn Http,
    pub server: String,
    pub token: Option<String>,
}

/// An answer other than the one wanted.
fn api_error(r: &Request, resp: &Response) -> String {
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        reason: String,
        #[serde(default)]
        message: String,
    }
    let why = match serde_json::from_slice::<Status>(&resp.body) {
        Ok(s) if !s.message.is_empty() => format!("{} {}", s.reason, s.message).trim().to_owned(),
        _ => resp.text().chars().take(200).collect(),
    };
    let method = r.method.name();
    if why.is_empty() {
        format!("{method} {}: HTTP {}", r.url, resp.status)
    } else {
        format!("{method} {}: HTTP {}: {why}", r.url, resp.status)
    }
}

impl Api<'_> {
    fn request(&self, method: Method, path: &str, body: Option<(&str, Vec<u8>)>) -> Request {
        let mut r = Request::get(format!("{}{path}", self.server));
        r.method = method;
        r = r.header("Accept", "application/json");
        if let Some(t) = &self.token {
            r = r.header("Authorization", &format!("Bearer {t}"));
        }
        if let Some((content_type, body)) = body {
            r = r.header("Content-Type", content_type);
            r.body = body;
        }
        r
    }

    fn send(&self, r: &Request) -> Result<Response, String> {
        let method = r.method.name();
        self.http
            .send(r, REQUEST_TIMEOUT)
            .map_err(|e| format!("{method} {}: {e}", r.url))
    }

    /// GET `path` as a `T`; `None` on 404.
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, String> {
        let r = self.request(Method::Get, path, None);
        let resp = self.send(&r)?;
        match resp.status {
            200 => serde_json::from_slice(&resp.body)
                .map(Some)
                .map_err(|e| format!("GET {}: {e}", r.url)),
            404 => Ok(None),
            _ => Err(api_error(&r, &resp)),
        }
    }

    pub fn node(&self, name: &str) -> Result<Node, String> {
        self.get(&format!("/api/v1/nodes/{name}"))?.ok_or_else(|| {
            format!("node {name} is not in the cluster (set kubernetes-node-name if the host's name is not the node's)")
        })
    }

    pub fn nodes(&self) -> Result<Vec<Node>, String> {
        Ok(self
            .get::<List<Node>>("/api/v1/nodes")?
            .map(|l| l.items)
            .unwrap_or_default())
    }

    /// A JSON merge patch of node `name`.
    pub fn patch_node(&self, name: &str, patch: &serde_json::Value) -> Result<(), String> {
        let r = self.request(
            Method::Patch,
            &format!("/api/v1/nodes/{name}"),
            Some(("application/merge-patch+json", patch.to_string().into_bytes())),
        );
        let resp = self.send(&r)?;
        if resp.status == 200 {
            Ok(())
        } else {
            Err(api_error(&r, &resp))
        }
    }

    pub fn pods_on(&self, node: &str) -> Result<Vec<Pod>, String> {
        Ok(self
            .get::<List<Pod>>(&format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"))?
            .map(|l| l.items)
            .unwrap_or_default())
    }

    /// Ask the Eviction API for `pod`: `Ok(None)` evicted (or gone),
    /// `Ok(Some(why))` refused for now (429: a disruption budget).
    pub fn evict(&self, pod: &Pod) -> Result<Option<String>, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = &pod.metadata.name;
        let body = serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        });
        let r = self.request(
            Method::Post,
            &format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"),
            Some(("application/json", body.to_string().into_bytes())),
        );
        let resp = self.send(&r)?;
        match resp.status {
            200 | 201 | 404 => Ok(None),
            429 => Ok(Some(api_error(&r, &resp))),
            _ => Err(api_error(&r, &resp)),
        }
    }

    fn lease_path(namespace: &str, name: Option<&str>) -> String {
        match name {
            Some(n) => format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{n}"),
            None => format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"),
        }
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Result<Option<Lease>, String> {
        self.get(&Self::lease_path(namespace, Some(name)))
    }

    /// Create `lease` (`Ok(false)`: it exists already) or replace it on its
    /// `resourceVersion` (`Ok(false)`: someone changed it first, 409).
    pub fn write_lease(&self, lease: &Lease) -> Result<bool, String> {
        let ns = lease.metadata.namespace.as_deref().unwrap_or("default");
        let body = Some((
            "application/json",
            serde_json::to_vec(lease).map_err(|e| e.to_string())?,
        ));
        let r = if lease.metadata.resource_version.is_some() {
            self.request(Method::Put, &Self::lease_path(ns, Some(&lease.metadata.name)), body)
        } else {
            self.request(Method::Post, &Self::lease_path(ns, None), body)
        };
        let resp = self.send(&r)?;
        match resp.status {
            200 | 201 => Ok(true),
            409 => Ok(false),
            _ => Err(api_error(&r, &resp)),
        }
    }
}

// ---------------------------------------------------------------------------
// The steps

/// What [`prepare_reboot`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Drained (or nothing to drain): reboot, for this reason.
    Reboot(String),
    /// Not now, and why; the pods that blocked a drain, if that was it.
    Held { reason: String, blocked_by: Vec<String> },
}

/// The node's name: the setting, else the host's name.
pub fn node_name(s: &Settings) -> Result<String, String> {
    match &s.node_name {
        Some(n) => Ok(n.clone()),
        None => nix::unistd::gethostname()
            .map_err(|e| format!("the host's name: {e}"))
            .map(|h| h.to_string_lossy().to_lowercase()),
    }
}

/// Take a slot of `s.group` for `me`: the one it holds already, else a
/// free one. `Err(holders)` when every slot is held by others.
pub fn take_slot(api: &Api<'_>, s: &Settings, me: &str, now: u64) -> Result<Result<String, Vec<String>>, String> {
    let mut slots = Vec::new();
    for i in 0..s.max_unavailable.max(1) {
        let name = slot_name(&s.group, i);
        let lease = api.lease(&s.lease_namespace, &name)?;
        slots.push((name, lease));
    }
    // The slot it holds first: a node never holds two.
    let mine = slots
        .iter()
        .position(|(_, l)| l.as_ref().is_some_and(|l| slot_state(l, me, now) == SlotState::Mine));
    let order: Vec<usize> = mine.into_iter().chain(0..slots.len()).collect();
    let mut holders = Vec::new();
    for i in order {
        let (name, lease) = &slots[i];
        match lease.as_ref().map(|l| slot_state(l, me, now)) {
            Some(SlotState::Held { holder, .. }) => {
                if !holders.contains(&holder) {
                    holders.push(holder);
                }
                continue;
            }
            Some(SlotState::Free) if mine.is_some() => continue,
            _ => {}
        }
        let wanted = taken_lease(lease.as_ref(), name, &s.lease_namespace, me, now, s.lease_duration);
        if api.write_lease(&wanted)? {
            return Ok(Ok(name.clone()));
        }
        // Another node changed it first: its turn.
        holders.push(format!("a node that took {name} first"));
    }
    Ok(Err(holders))
}

/// Renew `me`'s slot `name` from `now`; an error if it is not `me`'s any more.
pub fn renew_slot(api: &Api<'_>, s: &Settings, name: &str, me: &str, now: u64) -> Result<(), String> {
    let lease = api
        .lease(&s.lease_namespace, name)?
        .ok_or_else(|| format!("the Lease {}/{name} is gone", s.lease_namespace))?;
    if slot_state(&lease, me, now) != SlotState::Mine {
        return Err(format!(
            "the Lease {}/{name} is held by {} now",
            s.lease_namespace,
            lease.spec.holder_identity.as_deref().unwrap_or("nobody")
        ));
    }
    let renewed = taken_lease(Some(&lease), name, &s.lease_namespace, me, now, s.lease_duration);
    if api.write_lease(&renewed)? {
        Ok(())
    } else {
        Err(format!(
            "the Lease {}/{name} changed while renewing it",
            s.lease_namespace
        ))
    }
}

/// The merge patch that cordons (with the agent's annotation) or
/// uncordons a node; with `resource_version`, it applies only to the node
/// as it was then (409 otherwise).
fn cordon_patch(cordon: bool, resource_version: Option<&str>) -> serde_json::Value {
    let mut patch = if cordon {
        serde_json::json!({"metadata": {"annotations": {CORDONED_ANNOTATION: "true"}}, "spec": {"unschedulable": true}})
    } else {
        serde_json::json!({"metadata": {"annotations": {CORDONED_ANNOTATION: null}}, "spec": {"unschedulable": null}})
    };
    if let Some(rv) = resource_version {
        patch["metadata"]["resourceVersion"] = rv.into();
    }
    patch
}

/// Put the node back: uncordon it if the agent cordoned it, give back every
/// slot `me` holds — once the node is Ready again (kubelet is up): a slot
/// given back earlier would let the next node go down while this one still
/// cannot run pods. Returns what it did, to be logged.
pub fn finish(api: &Api<'_>, s: &Settings, me: &str, now: u64) -> Result<Vec<String>, String> {
    let node = api.node(me)?;
    let cordoned = node.annotated(CORDONED_ANNOTATION);
    let mut held = Vec::new();
    for i in 0..s.max_unavailable.max(1) {
        let name = slot_name(&s.group, i);
        if let Some(lease) = api.lease(&s.lease_namespace, &name)? {
            if slot_state(&lease, me, now) == SlotState::Mine {
                held.push((name, lease));
            }
        }
    }
    if !cordoned && held.is_empty() {
        return Ok(Vec::new());
    }
    if !node.ready() {
        return Err(format!(
            "node {me} is not Ready yet: it stays cordoned and keeps its slot until it is"
        ));
    }
    let mut done = Vec::new();
    if cordoned {
        api.patch_node(me, &cordon_patch(false, None))?;
        done.push(format!("uncordoned node {me}"));
    }
    for (name, lease) in held {
        if !api.write_lease(&released_lease(&lease))? {
            return Err(format!(
                "the Lease {}/{name} changed while giving it back",
                s.lease_namespace
            ));
        }
        done.push(format!("gave back {}/{name}", s.lease_namespace));
    }
    Ok(done)
}

/// Everything before the reboot: pause annotation, a slot, cordon, drain.
/// `now` is the wall clock (seconds since the epoch) at the start;
/// `progress` hears how the drain goes, for `status`; `stop` says, between
/// drain rounds, why the drain must end now (a stop signal, the update
/// dropped), if it must. Whatever ends a drain but its completion — a
/// timeout, a stop, the pause annotation set meanwhile, an error — puts
/// the node back ([`finish`]) before it returns.
pub fn prepare_reboot(
    api: &Api<'_>,
    s: &Settings,
    me: &str,
    now: u64,
    progress: &mut dyn FnMut(&str),
    stop: &dyn Fn() -> Option<String>,
) -> Result<Prepared, String> {
    let node = api.node(me)?;
    if let Some(held) = paused(&node, me) {
        return Ok(held);
    }
    progress(&format!("taking a slot of group {}", s.group));
    let slot = match take_slot(api, s, me, now)? {
        Ok(slot) => slot,
        Err(holders) => {
            return Ok(Prepared::Held {
                reason: format!(
                    "every slot of group {} ({}) is held: by {}",
                    s.group,
                    s.max_unavailable,
                    holders.join(", ")
                ),
                blocked_by: Vec::new(),
            })
        }
    };
    let started = api.http.now();
    let wall = |api: &Api<'_>| now + (api.http.now().saturating_sub(started)).as_secs();
    let undo = |api: &Api<'_>| -> String {
        match finish(api, s, me, wall(api)) {
            Ok(done) if done.is_empty() => "nothing to undo".to_owned(),
            Ok(done) => done.join(", "),
            Err(e) => format!("could not undo the drain: {e}"),
        }
    };
    match drain(api, s, me, &node, &slot, started, &wall, progress, stop) {
        Ok(Drained::Done(why)) => Ok(Prepared::Reboot(why)),
        Ok(Drained::Held { reason, blocked_by }) => Ok(Prepared::Held {
            reason: format!("{reason}; {}", undo(api)),
            blocked_by,
        }),
        Err(e) => Err(format!("{e}; {}", undo(api))),
    }
}

/// The pause annotation's answer, if set.
fn paused(node: &Node, me: &str) -> Option<Prepared> {
    node.annotated(PAUSE_ANNOTATION).then(|| Prepared::Held {
        reason: format!("updates are paused on node {me} (annotation {PAUSE_ANNOTATION}=true)"),
        blocked_by: Vec::new(),
    })
}

enum Drained {
    Done(String),
    Held { reason: String, blocked_by: Vec<String> },
}

/// Cordon `me` and evict its pods, holding `slot`.
#[allow(clippy::too_many_arguments)]
fn drain(
    api: &Api<'_>,
    s: &Settings,
    me: &str,
    node: &Node,
    slot: &str,
    started: Duration,
    wall: &dyn Fn(&Api<'_>) -> u64,
    progress: &mut dyn FnMut(&str),
    stop: &dyn Fn() -> Option<String>,
) -> Result<Drained, String> {
    if !node.spec.unschedulable {
        // On the node as read: an operator's cordon in between is a
        // conflict (409), not a cordon the agent would later undo.
        api.patch_node(me, &cordon_patch(true, node.metadata.resource_version.as_deref()))?;
    }
    if api.nodes()?.iter().all(|n| n.metadata.name == me) {
        renew_slot(api, s, slot, me, wall(api))?;
        return Ok(Drained::Done(format!(
            "holding {slot}; node {me} is the cluster's only node: its pods have nowhere to go, none were evicted"
        )));
    }
    let mut blocked: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let pods = api.pods_on(me)?;
        let mut left = 0;
        let mut evicted = 0;
        for pod in &pods {
            match pod_fate(pod) {
                PodFate::Stays(_) => {}
                PodFate::Terminating => left += 1,
                PodFate::Blocks(why) => {
                    left += 1;
                    blocked.insert(pod.id(), why.to_owned());
                }
                PodFate::Evict => {
                    left += 1;
                    // A refusal (429 from a budget) or any other failure
                    // (a 500 for a pod under two budgets, a 403 in a
                    // namespace being deleted) is asked again next round.
                    match api.evict(pod) {
                        Ok(None) => {
                            evicted += 1;
                            blocked.remove(&pod.id());
                        }
                        Ok(Some(why)) | Err(why) => {
                            blocked.insert(pod.id(), why);
                        }
                    }
                }
            }
        }
        if left == 0 {
            renew_slot(api, s, slot, me, wall(api))?;
            return Ok(Drained::Done(format!("holding {slot}; node {me} drained")));
        }
        let why_blocked = || {
            if blocked.is_empty() {
                format!("{left} pods did not terminate")
            } else {
                blocked
                    .iter()
                    .map(|(pod, why)| format!("{pod} ({why})"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        };
        if api.http.now().saturating_sub(started) >= s.drain_timeout {
            return Ok(Drained::Held {
                reason: format!(
                    "the drain of node {me} timed out after {}s: {}",
                    s.drain_timeout.as_secs(),
                    why_blocked()
                ),
                blocked_by: blocked.keys().cloned().collect(),
            });
        }
        if let Some(why) = stop() {
            return Ok(Drained::Held {
                reason: format!("the drain of node {me} stopped: {why}"),
                blocked_by: Vec::new(),
            });
        }
        progress(&format!(
            "draining node {me}: {left} pods left ({evicted} evictions accepted, {} refused{})",
            blocked.len(),
            if blocked.is_empty() {
                String::new()
            } else {
                format!(": {}", blocked.keys().cloned().collect::<Vec<_>>().join(", "))
            }
        ));
        renew_slot(api, s, slot, me, wall(api))?;
        api.http.sleep(DRAIN_POLL);
        // Paused meanwhile: the operator's word ends the drain.
        if let Some(Prepared::Held { reason, blocked_by }) = paused(&api.node(me)?, me) {
            return Ok(Drained::Held { reason, blocked_by });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    use serde_json::json;

    use super::*;

    /// A recorded conversation with an API server: each request must be
    /// the next one recorded (method and path), and gets its answer.
    #[derive(Default)]
    struct Script {
        steps: RefCell<VecDeque<(String, String, u16, String)>>,
        clock: Cell<Duration>,
        /// Every request answered: method and path.
        seen: RefCell<Vec<(String, String)>>,
    }

    impl Script {
        fn then(self, method: &str, path: &str, status: u16, body: serde_json::Value) -> Script {
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            self.steps
                .borrow_mut()
                .push_back((method.into(), path.into(), status, body));
            self
        }

        fn done(&self) {
            assert!(
                self.steps.borrow().is_empty(),
                "requests never made: {:?}",
                self.steps.borrow()
            );
        }
    }

    impl Http for Script {
        fn send(&self, r: &Request, _: Duration) -> Result<Response, String> {
            let method = r.method.name();
            let path = r.url.strip_prefix(SERVER).expect("a request to the server");
            let (m, p, status, body) = self
                .steps
                .borrow_mut()
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected request {method} {path}"));
            assert_eq!((method, path), (m.as_str(), p.as_str()), "the request sequence");
            self.seen.borrow_mut().push((method.to_owned(), path.to_owned()));
            assert!(r.headers.contains(&("Authorization".into(), "Bearer t0ken".into())));
            if matches!(r.method, Method::Put | Method::Post) && p.contains("/leases") {
                let lease: Lease = serde_json::from_slice(&r.body).expect("a Lease");
                assert_eq!(lease.kind, "Lease");
            }
            Ok(Response {
                status,
                body: body.into_bytes(),
            })
        }

        fn now(&self) -> Duration {
            self.clock.get()
        }

        fn sleep(&self, d: Duration) {
            self.clock.set(self.clock.get() + d);
        }
    }

    const SERVER: &str = "https://api.test:6443";
    const NOW: u64 = 1_700_000_000;
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/cairn-reboot-workers-0";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    const NODE: &str = "/api/v1/nodes/n1";
    const PODS: &str = "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1";

    fn settings() -> Settings {
        Settings {
            group: "workers".into(),
            drain_timeout: Duration::from_secs(10),
            ..Settings::default()
        }
    }

    fn api(script: &Script) -> Api<'_> {
        Api {
            http: script,
            server: SERVER.into(),
            token: Some("t0ken".into()),
        }
    }

    fn node(name: &str, unschedulable: bool, annotations: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": name, "annotations": annotations},
               "spec": {"unschedulable": unschedulable},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn lease(holder: Option<&str>, renewed: u64, rv: &str) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "cairn-reboot-workers-0", "namespace": "kube-system", "resourceVersion": rv},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3600,
                        "renewTime": micro_time(renewed), "acquireTime": micro_time(renewed)}})
    }

    fn pod(name: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "apps"}, "status": {"phase": "Running"}});
        if let (Some(m), Some(extra)) = (p["metadata"].as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        p
    }

    fn no_progress(_: &str) {}

    /// A pod of the node run by a ReplicaSet.
    fn managed(name: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut p = pod(name, extra);
        p["metadata"]["ownerReferences"] = json!([{"kind": "ReplicaSet", "name": "web"}]);
        p
    }

    fn drain_script() -> Script {
        Script::default()
            .then("GET", NODE, 200, node("n1", false, json!({})))
            .then("GET", LEASE, 404, json!({"kind": "Status", "reason": "NotFound"}))
            .then("POST", LEASES, 201, json!({}))
            .then("PATCH", NODE, 200, json!({}))
            .then(
                "GET",
                "/api/v1/nodes",
                200,
                json!({"items": [node("n1", true, json!({})), node("n2", false, json!({}))]}),
            )
            .then(
                "GET",
                PODS,
                200,
                json!({"items": [
                    managed("web-1", json!({})),
                    pod("log-agent", json!({"ownerReferences": [{"kind": "DaemonSet", "name": "log"}]})),
                    pod("kube-proxy-n1", json!({"annotations": {"kubernetes.io/config.mirror": "x"}})),
                ]}),
            )
            .then("POST", "/api/v1/namespaces/apps/pods/web-1/eviction", 201, json!({}))
            .then("GET", LEASE, 200, lease(Some("n1"), NOW, "7"))
            .then("PUT", LEASE, 200, json!({}))
            .then("GET", NODE, 200, node("n1", true, json!({CORDONED_ANNOTATION: "true"})))
            .then(
                "GET",
                PODS,
                200,
                json!({"items": [managed("web-1", json!({"deletionTimestamp": "2024-01-01T00:00:00Z"}))]}),
            )
            .then("GET", LEASE, 200, lease(Some("n1"), NOW + 5, "8"))
            .then("PUT", LEASE, 200, json!({}))
            .then("GET", NODE, 200, node("n1", true, json!({CORDONED_ANNOTATION: "true"})))
            .then("GET", PODS, 200, json!({"items": []}))
            .then("GET", LEASE, 200, lease(Some("n1"), NOW + 10, "9"))
            .then("PUT", LEASE, 200, json!({}))
    }

    /// What puts a node the agent cordoned, holding slot 0, back.
    fn put_back(script: Script, renewed: u64) -> Script {
        script
            .then("GET", NODE, 200, node("n1", true, json!({CORDONED_ANNOTATION: "true"})))
            .then("GET", LEASE, 200, lease(Some("n1"), renewed, "20"))
            .then("PATCH", NODE, 200, json!({}))
            .then("PUT", LEASE, 200, json!({}))
    }

    /// Up to the first round of a drain of one managed pod, `db-0`.
    fn first_round() -> Script {
        Script::default()
            .then("GET", NODE, 200, node("n1", false, json!({})))
            .then("GET", LEASE, 200, lease(None, NOW - 100, "3"))
            .then("PUT", LEASE, 200, json!({}))
            .then("PATCH", NODE, 200, json!({}))
            .then(
                "GET",
                "/api/v1/nodes",
                200,
                json!({"items": [node("n1", true, json!({})), node("n2", false, json!({}))]}),
            )
    }

    #[test]
    fn an_error_a_stop_or_a_pause_mid_drain_puts_the_node_back() {
        // The API fails while listing pods: the error is returned, the
        // node uncordoned and the slot given back first.
        let failing = put_back(
            first_round().then(
                "GET",
                PODS,
                500,
                json!({"kind": "Status", "reason": "InternalError", "message": "etcd"}),
            ),
            NOW,
        );
        let e = prepare_reboot(&api(&failing), &settings(), "n1", NOW, &mut no_progress, &|| None).unwrap_err();
        failing.done();
        assert!(
            e.starts_with(
                "GET https://api.test:6443/api/v1/pods?fieldSelector=spec.nodeName%3Dn1: HTTP 500: InternalError etcd"
            ),
            "{e}"
        );
        assert!(
            e.ends_with("; uncordoned node n1, gave back kube-system/cairn-reboot-workers-0"),
            "{e}"
        );

        // A stop between rounds.
        let stopped = put_back(
            first_round()
                .then("GET", PODS, 200, json!({"items": [managed("db-0", json!({}))]}))
                .then("POST", "/api/v1/namespaces/apps/pods/db-0/eviction", 429, json!({})),
            NOW,
        );
        let got = prepare_reboot(&api(&stopped), &settings(), "n1", NOW, &mut no_progress, &|| {
            Some("the staged update is gone".into())
        })
        .unwrap();
        stopped.done();
        assert!(
            matches!(&got, Prepared::Held { reason, .. } if reason.starts_with("the drain of node n1 stopped: the staged update is gone; uncordoned")),
            "{got:?}"
        );

        // The pause annotation set while draining; a pod no controller
        // runs holds the drain, and a 500 from the Eviction API (a pod
        // under two budgets) is asked again, not fatal.
        let paused = put_back(
            first_round()
                .then(
                    "GET",
                    PODS,
                    200,
                    json!({"items": [managed("db-0", json!({})), pod("bare", json!({}))]}),
                )
                .then("POST", "/api/v1/namespaces/apps/pods/db-0/eviction", 500, json!({"kind": "Status", "reason": "InternalError", "message": "This pod has more than one PodDisruptionBudget"}))
                .then("GET", LEASE, 200, lease(Some("n1"), NOW, "4"))
                .then("PUT", LEASE, 200, json!({}))
                .then("GET", NODE, 200, node("n1", true, json!({PAUSE_ANNOTATION: "true"}))),
            NOW,
        );
        let mut seen = Vec::new();
        let got = prepare_reboot(
            &api(&paused),
            &settings(),
            "n1",
            NOW,
            &mut |p| seen.push(p.to_owned()),
            &|| None,
        )
        .unwrap();
        paused.done();
        assert!(
            matches!(&got, Prepared::Held { reason, .. } if reason.starts_with("updates are paused on node n1")),
            "{got:?}"
        );
        assert_eq!(
            seen[1],
            "draining node n1: 2 pods left (0 evictions accepted, 2 refused: apps/bare, apps/db-0)"
        );
    }

    #[test]
    fn a_node_is_put_back_only_once_ready() {
        let mut not_ready = node("n1", true, json!({CORDONED_ANNOTATION: "true"}));
        not_ready["status"]["conditions"][0]["status"] = json!("False");
        let script =
            Script::default()
                .then("GET", NODE, 200, not_ready)
                .then("GET", LEASE, 200, lease(Some("n1"), NOW, "5"));
        let e = finish(&api(&script), &settings(), "n1", NOW).unwrap_err();
        script.done();
        assert_eq!(
            e,
            "node n1 is not Ready yet: it stays cordoned and keeps its slot until it is"
        );
        // Nothing to put back: nothing asked of the node's readiness.
        let idle = Script::default()
            .then("GET", NODE, 200, node("n1", false, json!({})))
            .then("GET", LEASE, 404, json!({}));
        assert_eq!(
            finish(&api(&idle), &settings(), "n1", NOW).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_drain_takes_a_slot_cordons_evicts_and_then_reboots() {
        let script = drain_script();
        let mut seen = Vec::new();
        let got = prepare_reboot(
            &api(&script),
            &settings(),
            "n1",
            NOW,
            &mut |p| seen.push(p.to_owned()),
            &|| None,
        )
        .unwrap();
        assert_eq!(
            got,
            Prepared::Reboot("holding cairn-reboot-workers-0; node n1 drained".into())
        );
        script.done();
        assert_eq!(seen[0], "taking a slot of group workers");
        assert!(
            seen[1].starts_with("draining node n1: 1 pods left (1 evictions accepted"),
            "{seen:?}"
        );
    }

    /// The RBAC rule a request needs: API group, resource (with its
    /// subresource), verb — as the API server's authorizer derives them.
    fn permission(method: &str, path: &str) -> (String, String, String) {
        let path = path.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("not an API path: {path}"),
        };
        let rest = match rest {
            ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
            rest => rest,
        };
        let resource = match rest {
            [resource, _name, sub] => format!("{resource}/{sub}"),
            [resource, ..] => resource.to_string(),
            [] => panic!("no resource in {path}"),
        };
        let verb = match (method, rest.len()) {
            ("GET", 1) => "list",
            ("GET", _) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            (m, _) => panic!("{m} is not a verb the agent uses"),
        };
        (group.to_owned(), resource, verb.to_owned())
    }

    #[test]
    fn the_rbac_manifest_grants_every_request_the_agent_makes() {
        let manifest = include_str!("../../deploy/kubernetes/cairn-agent-rbac.yaml");
        let mut granted = BTreeMap::<(String, String, String), String>::new();
        for doc in serde_yaml_ng::Deserializer::from_str(manifest) {
            let v = serde_yaml_ng::Value::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap_or_default();
            if kind != "ClusterRole" && kind != "Role" {
                continue;
            }
            let scope = v["metadata"]["namespace"].as_str().unwrap_or("cluster").to_owned();
            for rule in v["rules"].as_sequence().unwrap() {
                let list = |k: &str| -> Vec<String> {
                    rule[k]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap().to_owned())
                        .collect()
                };
                for g in list("apiGroups") {
                    for r in list("resources") {
                        for verb in list("verbs") {
                            granted.insert((g.clone(), r.clone(), verb), scope.clone());
                        }
                    }
                }
            }
        }
        // Every request of a drain, and of one undone (putting the node back).
        let mut needed = std::collections::BTreeSet::new();
        for script in [drain_script(), budget_script()] {
            let _ = prepare_reboot(&api(&script), &settings(), "n1", NOW, &mut no_progress, &|| None).unwrap();
            for (m, p) in script.seen.borrow().iter() {
                needed.insert((permission(m, p), p.contains("/namespaces/kube-system/leases")));
            }
        }
        assert!(needed.len() >= 8, "{needed:?}");
        for (p, in_lease_namespace) in needed {
            let scope = granted
                .get(&p)
                .unwrap_or_else(|| panic!("the manifest does not grant {p:?}"));
            if in_lease_namespace {
                assert!(scope == "kube-system" || scope == "cluster", "{p:?} granted in {scope}");
            } else {
                assert_eq!(scope, "cluster", "{p:?} is needed cluster-wide");
            }
        }
        assert_eq!(
            permission("GET", "/api/v1/pods?fieldSelector=x"),
            ("".into(), "pods".into(), "list".into())
        );
        assert_eq!(
            permission("POST", "/api/v1/namespaces/a/pods/b/eviction"),
            ("".into(), "pods/eviction".into(), "create".into())
        );
    }

    fn budget_script() -> Script {
        let pdb = json!({"kind": "Status", "reason": "TooManyRequests",
                         "message": "Cannot evict pod as it would violate the pod's disruption budget."});
        let round = |script: Script, renewed: u64, rv: &str| {
            script
                .then("GET", PODS, 200, json!({"items": [managed("db-0", json!({}))]}))
                .then("POST", "/api/v1/namespaces/apps/pods/db-0/eviction", 429, pdb.clone())
                .then("GET", LEASE, 200, lease(Some("n1"), renewed, rv))
                .then("PUT", LEASE, 200, json!({}))
                .then("GET", NODE, 200, node("n1", true, json!({CORDONED_ANNOTATION: "true"})))
        };
        let script = round(round(first_round(), NOW, "4"), NOW + 5, "5")
            .then("GET", PODS, 200, json!({"items": [managed("db-0", json!({}))]}))
            .then("POST", "/api/v1/namespaces/apps/pods/db-0/eviction", 429, pdb.clone());
        // Timed out: uncordoned (the agent cordoned it), slot given back.
        put_back(script, NOW + 10)
    }

    #[test]
    fn a_budget_that_never_allows_undoes_the_drain_and_names_the_pod() {
        let script = budget_script();
        let got = prepare_reboot(&api(&script), &settings(), "n1", NOW, &mut no_progress, &|| None).unwrap();
        script.done();
        let Prepared::Held { reason, blocked_by } = got else {
            panic!("{got:?}")
        };
        assert_eq!(blocked_by, ["apps/db-0"]);
        assert!(reason.starts_with("the drain of node n1 timed out after 10s: apps/db-0 (POST https://api.test:6443/api/v1/namespaces/apps/pods/db-0/eviction: HTTP 429: TooManyRequests Cannot evict pod"), "{reason}");
        assert!(
            reason.ends_with("uncordoned node n1, gave back kube-system/cairn-reboot-workers-0"),
            "{reason}"
        );
    }

    #[test]
    fn a_paused_node_a_full_group_and_a_lost_race_hold_the_reboot() {
        let paused = Script::default().then("GET", NODE, 200, node("n1", false, json!({PAUSE_ANNOTATION: "true"})));
        let got = prepare_reboot(&api(&paused), &settings(), "n1", NOW, &mut no_progress, &|| None).unwrap();
        paused.done();
        assert_eq!(
            got,
            Prepared::Held {
                reason: "updates are paused on node n1 (annotation updates.cairn.dev/paused=true)".into(),
                blocked_by: vec![]
            }
        );

        let full = Script::default()
            .then("GET", NODE, 200, node("n1", false, json!({})))
            .then("GET", LEASE, 200, lease(Some("n2"), NOW - 60, "3"));
        let got = prepare_reboot(&api(&full), &settings(), "n1", NOW, &mut no_progress, &|| None).unwrap();
        full.done();
        assert!(
            matches!(&got, Prepared::Held { reason, .. } if reason == "every slot of group workers (1) is held: by n2"),
            "{got:?}"
        );

        let race = Script::default()
            .then("GET", NODE, 200, node("n1", false, json!({})))
            .then("GET", LEASE, 200, lease(Some("n2"), NOW - 7200, "3"))
            .then("PUT", LEASE, 409, json!({"kind": "Status", "reason": "Conflict"}));
        let got = prepare_reboot(&api(&race), &settings(), "n1", NOW, &mut no_progress, &|| None).unwrap();
        race.done();
        assert!(
            matches!(&got, Prepared::Held { reason, .. } if reason.ends_with("by a node that took cairn-reboot-workers-0 first")),
            "{got:?}"
        );
    }

    #[test]
    fn a_single_node_cluster_reboots_without_evicting() {
        let script = Script::default()
            .then("GET", NODE, 200, node("n1", true, json!({})))
            .then("GET", LEASE, 200, lease(Some("n1"), NOW - 10, "3"))
            .then("PUT", LEASE, 200, json!({}))
            .then(
                "GET",
                "/api/v1/nodes",
                200,
                json!({"items": [node("n1", true, json!({}))]}),
            )
            .then("GET", LEASE, 200, lease(Some("n1"), NOW, "4"))
            .then("PUT", LEASE, 200, json!({}));
        let got = prepare_reboot(&api(&script), &settings(), "n1", NOW, &mut no_progress, &|| None).unwrap();
        script.done();
        assert!(
            matches!(&got, Prepared::Reboot(why) if why.contains("the cluster's only node")),
            "{got:?}"
        );
        // It was cordoned already (by an operator): the agent does not
        // uncordon it afterwards, and gives its slot back.
        let after = Script::default()
            .then("GET", NODE, 200, node("n1", true, json!({})))
            .then("GET", LEASE, 200, lease(Some("n1"), NOW, "5"))
            .then("PUT", LEASE, 200, json!({}));
        let done = finish(&api(&after), &settings(), "n1", NOW + 60).unwrap();
        after.done();
        assert_eq!(done, ["gave back kube-system/cairn-reboot-workers-0"]);
    }

    #[test]
    fn slots_are_free_when_empty_or_not_renewed_in_time() {
        let l = |v: serde_json::Value| serde_json::from_value::<Lease>(v).unwrap();
        assert_eq!(slot_state(&l(lease(None, NOW, "1")), "n1", NOW), SlotState::Free);
        assert_eq!(slot_state(&l(lease(Some("n1"), NOW, "1")), "n1", NOW), SlotState::Mine);
        assert_eq!(
            slot_state(&l(lease(Some("n2"), NOW, "1")), "n1", NOW + 3599),
            SlotState::Held {
                holder: "n2".into(),
                until: NOW + 3600
            }
        );
        assert_eq!(
            slot_state(&l(lease(Some("n2"), NOW, "1")), "n1", NOW + 3600),
            SlotState::Free
        );
        let mut timeless = l(lease(Some("n2"), NOW, "1"));
        timeless.spec.renew_time = None;
        timeless.spec.acquire_time = None;
        assert_eq!(
            slot_state(&timeless, "n1", NOW),
            SlotState::Free,
            "a holder that never said when"
        );

        // Taking keeps the resourceVersion (compare-and-swap) and counts the transition.
        let taken = taken_lease(
            Some(&l(lease(Some("n2"), NOW - 7200, "41"))),
            "x",
            "ns",
            "n1",
            NOW,
            Duration::from_secs(600),
        );
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("41"));
        assert_eq!(taken.spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(taken.spec.lease_duration_seconds, Some(600));
        assert_eq!(taken.spec.acquire_time.as_deref(), Some("2023-11-14T22:13:20.000000Z"));
        let released = serde_json::to_value(released_lease(&taken)).unwrap();
        assert_eq!(released["spec"]["holderIdentity"], serde_json::Value::Null);
        assert!(released["spec"].get("renewTime").is_none());
    }

    #[test]
    fn kubeconfigs_give_the_current_context_s_server_ca_and_credentials() {
        let files = |name: &str| -> Result<Vec<u8>, String> {
            match name {
                "token" => Ok(b"sa-token\n".to_vec()),
                "ca.crt" => Ok(b"CA PEM".to_vec()),
                other => Err(format!("no file {other}")),
            }
        };
        let text = r#"
apiVersion: v1
kind: Config
current-context: agent
clusters:
- name: prod
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority: ca.crt
contexts:
- name: other
  context: {cluster: prod, user: nobody}
- name: agent
  context: {cluster: prod, user: cairn}
users:
- name: cairn
  user:
    tokenFile: token
"#;
        let c = parse_kubeconfig(text, &files).unwrap();
        assert_eq!(c.server, "https://10.0.0.1:6443");
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert_eq!(c.auth, Auth::Token("sa-token".into()));

        let inline = text
            .replace("certificate-authority: ca.crt", "certificate-authority-data: Q0EgUEVN")
            .replace(
                "tokenFile: token",
                "client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ",
            );
        let c = parse_kubeconfig(&inline, &files).unwrap();
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert_eq!(
            c.auth,
            Auth::Certificate {
                cert_pem: b"CERT".to_vec(),
                key_pem: b"KEY".to_vec()
            }
        );

        let e = |t: &str| parse_kubeconfig(t, &files).unwrap_err();
        assert_eq!(
            e(&text.replace("current-context: agent", "current-context: gone")),
            "current-context `gone` is not among the contexts (the file has other, agent)"
        );
        assert!(e(&text.replace("tokenFile: token", "exec: {command: aws}")).starts_with("user `cairn`: only a token"));
        assert_eq!(
            e(&text.replace("tokenFile: token", "tokenFile: missing")),
            "no file missing"
        );
        assert_eq!(
            e(&text.replace("user: cairn}", "user: ghost}")),
            "user `ghost` (of the current context) is not in the file"
        );
        assert!(e("clusters: [").contains("at line 2 column 1"), "{}", e("clusters: ["));
    }
}
