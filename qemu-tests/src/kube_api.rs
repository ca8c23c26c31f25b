//! A Kubernetes API server stand-in on loopback: the part of the API the
//! agent's `kubernetes` strategy relies on, with the semantics the API's
//! documentation gives it (no control plane can be installed on these
//! machines):
//!
//! - bearer-token authentication (401 without the token);
//! - Nodes: get, list, and JSON merge patch (RFC 7386, content type
//!   `application/merge-patch+json`, else 415; a `metadata.resourceVersion`
//!   in the patch is a precondition: 409 when the node changed since);
//! - Pods: list across namespaces with `fieldSelector=spec.nodeName=<node>`;
//! - the Eviction subresource (`policy/v1`): 201 and the pod deleted, or
//!   429 `TooManyRequests` while a PodDisruptionBudget stand-in protects
//!   the pod, or 404 for a pod that is gone;
//! - `coordination.k8s.io/v1` Leases: get, create (409 `AlreadyExists`),
//!   and replace on `metadata.resourceVersion` (409 `Conflict` when it is
//!   not the current one); every write gives a new resourceVersion.
//!
//! What only a live cluster shows (a pod's graceful termination, a real
//! PodDisruptionBudget's arithmetic, the scheduler moving pods, RBAC) is
//! not modelled: an accepted eviction deletes the pod at once, and the
//! test says which pods a budget protects.
//!
//! [`KubeApi::serve_tls`] puts OpenSSL in front of it (`socat`, with a CA
//! and a server certificate for the guest's address made by `openssl`), so
//! a VM test reaches it over HTTPS as a host reaches a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use cairn_common::process::Cmd;
use serde_json::{json, Value};

use crate::metadata_server::{Asked, MetadataServer};

#[derive(Default)]
struct Cluster {
    token: String,
    nodes: BTreeMap<String, Value>,
    /// By `namespace/name`.
    pods: BTreeMap<String, Value>,
    /// Pods whose eviction a disruption budget refuses.
    protected: BTreeSet<String>,
    /// By `namespace/name`.
    leases: BTreeMap<String, Value>,
    resource_version: u64,
    log: Vec<String>,
}

/// What runs a pod (its owner reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunBy {
    ReplicaSet,
    DaemonSet,
    /// A bare pod: nothing would start it again.
    Nobody,
}

/// The stand-in; stops when dropped.
pub struct KubeApi {
    server: MetadataServer,
    cluster: Arc<Mutex<Cluster>>,
}

impl KubeApi {
    /// A cluster that accepts `token`, with no nodes yet.
    pub fn start(token: &str) -> Result<KubeApi> {
        let cluster = Arc::new(Mutex::new(Cluster {
            token: token.to_owned(),
            ..Cluster::default()
        }));
        let shared = Arc::clone(&cluster);
        let server = MetadataServer::start(move |r: &Asked| {
            let mut c = shared.lock().expect("cluster lock");
            let (status, body) = answer(&mut c, r);
            c.log.push(format!("{} {} {status}", r.method, r.path));
            (status, body.to_string().into_bytes())
        })?;
        Ok(KubeApi { server, cluster })
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    fn with<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut self.cluster.lock().expect("cluster lock"))
    }

    /// A Ready, schedulable node.
    pub fn add_node(&self, name: &str) {
        self.with(|c| {
            let rv = c.next_version();
            c.nodes.insert(
                name.to_owned(),
                json!({"apiVersion": "v1", "kind": "Node",
                       "metadata": {"name": name, "resourceVersion": rv, "annotations": {}},
                       "spec": {},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            );
        });
    }

    /// A running pod on `node`, run by `owner`.
    pub fn add_pod(&self, namespace: &str, name: &str, node: &str, owner: RunBy) {
        self.with(|c| {
            let rv = c.next_version();
            let mut meta = json!({"name": name, "namespace": namespace, "resourceVersion": rv});
            let kind = match owner {
                RunBy::ReplicaSet => Some("ReplicaSet"),
                RunBy::DaemonSet => Some("DaemonSet"),
                RunBy::Nobody => None,
            };
            if let Some(kind) = kind {
                meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": name}]);
            }
            c.pods.insert(
                format!("{namespace}/{name}"),
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                       "spec": {"nodeName": node}, "status": {"phase": "Running"}}),
            );
        });
    }

    /// Whether a disruption budget refuses `namespace/name`'s eviction.
    pub fn protect(&self, pod: &str, protected: bool) {
        self.with(|c| {
            if protected {
                c.protected.insert(pod.to_owned());
            } else {
                c.protected.remove(pod);
            }
        });
    }

    /// Set (or with `None` remove) an annotation of `node`, as an operator would.
    pub fn annotate(&self, node: &str, key: &str, value: Option<&str>) {
        self.with(|c| {
            let patch = json!({"metadata": {"annotations": {key: value}}});
            if let Some(n) = c.nodes.get_mut(node) {
                merge_patch(n, &patch);
            }
        });
    }

    /// `node` as the API holds it.
    pub fn node(&self, name: &str) -> Value {
        self.with(|c| c.nodes.get(name).cloned().unwrap_or(Value::Null))
    }

    /// Whether `node` is cordoned.
    pub fn unschedulable(&self, node: &str) -> bool {
        self.node(node)["spec"]["unschedulable"].as_bool().unwrap_or(false)
    }

    /// The pods on `node`, as `namespace/name`.
    pub fn pods_on(&self, node: &str) -> Vec<String> {
        self.with(|c| {
            c.pods
                .iter()
                .filter(|(_, p)| p["spec"]["nodeName"] == node)
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// The holder of Lease `namespace/name`, if it exists and has one.
    pub fn lease_holder(&self, lease: &str) -> Option<String> {
        self.with(|c| {
            c.leases
                .get(lease)
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
        })
    }

    /// Lease `namespace/name` as the API holds it.
    pub fn lease(&self, lease: &str) -> Value {
        self.with(|c| c.leases.get(lease).cloned().unwrap_or(Value::Null))
    }

    /// Another holder takes Lease `namespace/name`, renewed now for `secs`.
    pub fn hold_lease(&self, lease: &str, holder: &str, secs: u64) {
        self.with(|c| {
            let (ns, name) = lease.split_once('/').expect("namespace/name");
            let rv = c.next_version();
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            c.leases.insert(
                lease.to_owned(),
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
                       "spec": {"holderIdentity": holder, "leaseDurationSeconds": secs,
                                "acquireTime": now, "renewTime": now}}),
            );
        });
    }

    /// A kubeconfig for this API at `server` (as its clients reach it),
    /// trusting only `ca_pem`, with the token it accepts.
    pub fn kubeconfig(&self, server: &str, ca_pem: &[u8]) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        let token = self.with(|c| c.token.clone());
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: cairn\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: cairn\n  context: {{cluster: test, user: agent}}\nusers:\n- name: agent\n  user:\n    token: {token}\n"
        )
    }

    /// Every request so far: `METHOD path status`.
    pub fn requests(&self) -> Vec<String> {
        self.with(|c| c.log.clone())
    }

    /// Serve this API over HTTPS on loopback for clients that reach it at
    /// `address` (an IP, the certificate's subject name): a CA and a
    /// server certificate made by `openssl` in `dir`, OpenSSL's TLS by
    /// `socat`. Returns the TLS front (stops when dropped) and the CA's PEM.
    pub fn serve_tls(&self, dir: &Path, address: &str) -> Result<(TlsFront, Vec<u8>)> {
        let ca_key = dir.join("ca.key");
        let ca = dir.join("ca.crt");
        let key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let cert = dir.join("server.crt");
        let san = dir.join("san.ext");
        std::fs::write(&san, format!("subjectAltName=IP:{address}\n"))?;
        let p = |p: &PathBuf| p.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=cairn-test-cluster-ca",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p(&san),
            "-out",
            &p(&cert),
        ])?;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let child = Cmd::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{}", self.port()))
            .spawn_piped()
            .context("starting socat (installed by `cargo xtask setup`)")?;
        let front = TlsFront { port, child };
        // Ready once it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok((front, std::fs::read(&ca)?));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("socat never listened on 127.0.0.1:{port}")
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    Cmd::new("openssl").args(args).run()
}

/// `socat` terminating TLS in front of the stand-in; killed when dropped.
pub struct TlsFront {
    pub port: u16,
    child: std::process::Child,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }
}

/// A Kubernetes `Status` object.
fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
               "reason": reason, "message": message, "code": code}),
    )
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn answer(c: &mut Cluster, r: &Asked) -> (u16, Value) {
    let bearer = format!("Bearer {}", c.token);
    if r.headers.get("authorization") != Some(&bearer) {
        return status(401, "Unauthorized", "no valid bearer token");
    }
    let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    match (r.method.as_str(), parts.as_slice()) {
        ("GET", ["api", "v1", "nodes"]) => (
            200,
            json!({"apiVersion": "v1", "kind": "NodeList", "items": c.nodes.values().collect::<Vec<_>>()}),
        ),
        ("GET", ["api", "v1", "nodes", name]) => match c.nodes.get(*name) {
            Some(n) => (200, n.clone()),
            None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
        },
        ("PATCH", ["api", "v1", "nodes", name]) => {
            if r.headers.get("content-type").map(String::as_str) != Some("application/merge-patch+json") {
                return status(415, "UnsupportedMediaType", "the agent sends merge patches");
            }
            // A resourceVersion in the patch is a precondition.
            let asked = body["metadata"]["resourceVersion"].clone();
            if let Some(n) = c.nodes.get(*name) {
                if !asked.is_null() && asked != n["metadata"]["resourceVersion"] {
                    return status(
                        409,
                        "Conflict",
                        &format!("Operation cannot be fulfilled on nodes \"{name}\": the object has been modified"),
                    );
                }
            }
            let rv = c.next_version();
            match c.nodes.get_mut(*name) {
                Some(n) => {
                    merge_patch(n, &body);
                    n["metadata"]["resourceVersion"] = json!(rv);
                    (200, n.clone())
                }
                None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            }
        }
        ("GET", ["api", "v1", "pods"]) => {
            let node = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldSelector="))
                .map(|s| s.replace("%3D", "=").replace("%3d", "="))
                .and_then(|s| s.strip_prefix("spec.nodeName=").map(str::to_owned));
            let items: Vec<&Value> = c
                .pods
                .values()
                .filter(|p| node.as_ref().is_none_or(|n| p["spec"]["nodeName"] == n.as_str()))
                .collect();
            (200, json!({"apiVersion": "v1", "kind": "PodList", "items": items}))
        }
        ("POST", ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) => {
            let id = format!("{ns}/{name}");
            if body["kind"] != "Eviction" || body["metadata"]["name"] != *name {
                return status(400, "BadRequest", "the body is not this pod's Eviction");
            }
            if !c.pods.contains_key(&id) {
                return status(404, "NotFound", &format!("pods \"{name}\" not found"));
            }
            if c.protected.contains(&id) {
                return status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
            }
            c.pods.remove(&id);
            status(201, "", "")
        }
        ("GET", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            match c.leases.get(&format!("{ns}/{name}")) {
                Some(l) => (200, l.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("leases.coordination.k8s.io \"{name}\" not found"),
                ),
            }
        }
        ("POST", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]) => {
            let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(422, "Invalid", "metadata.name is required");
            };
            let id = format!("{ns}/{name}");
            if c.leases.contains_key(&id) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            let mut lease = body.clone();
            lease["metadata"]["resourceVersion"] = json!(c.next_version());
            c.leases.insert(id, lease.clone());
            (201, lease)
        }
        ("PUT", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            let id = format!("{ns}/{name}");
            let Some(current) = c.leases.get(&id) else {
                return status(
                    404,
                    "NotFound",
                    &format!("leases.coordination.k8s.io \"{name}\" not found"),
                );
            };
            let asked = &body["metadata"]["resourceVersion"];
            if !asked.is_null() && asked != &current["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    &format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                );
            }
            let mut lease = body.clone();
            lease["metadata"]["resourceVersion"] = json!(c.next_version());
            c.leases.insert(id, lease.clone());
            (200, lease)
        }
        _ => status(
            404,
            "NotFound",
            &format!("{} {} is not served by the stand-in", r.method, r.path),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_replace_add_and_remove() {
        let mut v = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"unschedulable": true}});
        merge_patch(
            &mut v,
            &json!({"metadata": {"annotations": {"a": null, "c": "3"}}, "spec": {"unschedulable": null}}),
        );
        assert_eq!(
            v,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}, "spec": {}})
        );
    }
}
