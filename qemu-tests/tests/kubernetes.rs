//! The agent's `kubernetes` strategy against the loopback API stand-in
//! (`cairn_qemu_tests::kube_api`), over real HTTP: Lease compare-and-swap,
//! cordon, eviction with disruption budgets, putting the node back. No VM,
//! no root: these run with plain `cargo test`. Time spent waiting between
//! drain rounds is virtual.

use std::cell::Cell;
use std::time::Duration;

use cairn_agent::kubernetes::{self, Api, Prepared, Settings, CORDONED_ANNOTATION};
use cairn_agent::metadata::host::HostHttp;
use cairn_agent::metadata::{Http, Request, Response};
use cairn_qemu_tests::kube_api::{KubeApi, RunBy};

const TOKEN: &str = "cairn-agent-token";
const LEASE: &str = "kube-system/cairn-reboot-workers-0";

/// The host's HTTP client, with a clock that a drain's waits move.
struct VirtualWaits {
    http: HostHttp,
    waited: Cell<Duration>,
}

impl Http for VirtualWaits {
    fn send(&self, r: &Request, timeout: Duration) -> Result<Response, String> {
        self.http.send(r, timeout)
    }

    fn now(&self) -> Duration {
        self.http.now() + self.waited.get()
    }

    fn sleep(&self, d: Duration) {
        self.waited.set(self.waited.get() + d);
    }
}

fn client() -> VirtualWaits {
    VirtualWaits {
        http: HostHttp::new().unwrap(),
        waited: Cell::new(Duration::ZERO),
    }
}

fn api<'a>(http: &'a VirtualWaits, cluster: &KubeApi) -> Api<'a> {
    Api {
        http,
        server: format!("http://127.0.0.1:{}", cluster.port()),
        token: Some(TOKEN.into()),
    }
}

fn settings() -> Settings {
    Settings {
        group: "workers".into(),
        drain_timeout: Duration::from_secs(60),
        ..Settings::default()
    }
}

fn now() -> u64 {
    cairn_agent::state::now()
}

fn cluster() -> KubeApi {
    let c = KubeApi::start(TOKEN).unwrap();
    c.add_node("n1");
    c.add_node("n2");
    c.add_pod("apps", "web-1", "n1", RunBy::ReplicaSet);
    c.add_pod("kube-system", "log-agent-n1", "n1", RunBy::DaemonSet);
    c.add_pod("apps", "web-2", "n2", RunBy::ReplicaSet);
    c
}

#[test]
fn a_drained_node_reboots_holding_a_slot_and_is_put_back_after() {
    let c = cluster();
    let http = client();
    let got = kubernetes::prepare_reboot(&api(&http, &c), &settings(), "n1", now(), &mut |_| {}, &|| None).unwrap();
    assert_eq!(
        got,
        Prepared::Reboot("holding cairn-reboot-workers-0; node n1 drained".into())
    );
    assert!(c.unschedulable("n1"));
    assert_eq!(c.node("n1")["metadata"]["annotations"][CORDONED_ANNOTATION], "true");
    assert_eq!(c.lease_holder(LEASE).as_deref(), Some("n1"));
    assert_eq!(
        c.pods_on("n1"),
        ["kube-system/log-agent-n1"],
        "the DaemonSet's pod stays"
    );
    assert_eq!(c.pods_on("n2"), ["apps/web-2"]);

    // The other node waits for the slot.
    let got = kubernetes::prepare_reboot(&api(&http, &c), &settings(), "n2", now(), &mut |_| {}, &|| None).unwrap();
    assert_eq!(
        got,
        Prepared::Held {
            reason: "every slot of group workers (1) is held: by n1".into(),
            blocked_by: vec![]
        }
    );
    assert!(!c.unschedulable("n2"), "a node without a slot is not cordoned");

    // After the reboot: uncordoned, the slot free for n2.
    let done = kubernetes::finish(&api(&http, &c), &settings(), "n1", now()).unwrap();
    assert_eq!(
        done,
        ["uncordoned node n1", "gave back kube-system/cairn-reboot-workers-0"]
    );
    assert!(!c.unschedulable("n1"));
    assert!(c.node("n1")["metadata"]["annotations"]
        .get(CORDONED_ANNOTATION)
        .is_none());
    assert_eq!(c.lease_holder(LEASE), None);
    let got = kubernetes::prepare_reboot(&api(&http, &c), &settings(), "n2", now(), &mut |_| {}, &|| None).unwrap();
    assert!(matches!(got, Prepared::Reboot(_)), "{got:?}");
    assert_eq!(c.lease_holder(LEASE).as_deref(), Some("n2"));
    assert_eq!(
        c.lease(LEASE)["spec"]["leaseTransitions"],
        1,
        "the slot changed hands once"
    );
}

#[test]
fn a_budget_that_never_allows_holds_the_reboot_and_leaves_the_node_in_service() {
    let c = cluster();
    c.protect("apps/web-1", true);
    let http = client();
    let mut progress = Vec::new();
    let s = Settings {
        drain_timeout: Duration::from_secs(10),
        ..settings()
    };
    let got = kubernetes::prepare_reboot(
        &api(&http, &c),
        &s,
        "n1",
        now(),
        &mut |p| progress.push(p.to_owned()),
        &|| None,
    )
    .unwrap();
    let Prepared::Held { reason, blocked_by } = got else {
        panic!("{got:?}")
    };
    assert_eq!(blocked_by, ["apps/web-1"]);
    assert!(reason.contains("violate the pod's disruption budget"), "{reason}");
    assert!(!c.unschedulable("n1"), "uncordoned");
    assert_eq!(c.lease_holder(LEASE), None, "the slot is given back");
    assert_eq!(c.pods_on("n1").len(), 2, "nothing was evicted");
    assert!(http.waited.get() >= s.drain_timeout);
    assert!(
        progress.iter().any(|p| p.contains("1 refused: apps/web-1")),
        "{progress:?}"
    );
    let evictions = c.requests().iter().filter(|r| r.ends_with("/eviction 429")).count();
    assert!(evictions > 1, "asked again until the timeout: {evictions}");

    // The budget allows it now: the next attempt drains.
    c.protect("apps/web-1", false);
    let got = kubernetes::prepare_reboot(&api(&http, &c), &settings(), "n1", now(), &mut |_| {}, &|| None).unwrap();
    assert!(matches!(got, Prepared::Reboot(_)), "{got:?}");
}

#[test]
fn a_pod_no_controller_runs_holds_the_drain_and_is_not_evicted() {
    let c = cluster();
    c.add_pod("apps", "scratch", "n1", RunBy::Nobody);
    let http = client();
    let s = Settings {
        drain_timeout: Duration::from_secs(10),
        ..settings()
    };
    let got = kubernetes::prepare_reboot(&api(&http, &c), &s, "n1", now(), &mut |_| {}, &|| None).unwrap();
    let Prepared::Held { reason, blocked_by } = got else {
        panic!("{got:?}")
    };
    assert_eq!(blocked_by, ["apps/scratch"]);
    assert!(reason.contains("not managed by a controller"), "{reason}");
    assert_eq!(
        c.pods_on("n1"),
        ["apps/scratch", "kube-system/log-agent-n1"],
        "web-1 went, scratch stays"
    );
    assert!(!c.unschedulable("n1"));
}

#[test]
fn an_operator_s_cordon_stays_and_a_dead_holder_s_slot_expires() {
    let c = cluster();
    // n2 took the slot for a second, and died: seen two seconds later.
    c.hold_lease(LEASE, "n2", 1);
    // An operator cordoned n1 before.
    c.annotate("n1", "other", Some("x"));
    let http = client();
    let a = api(&http, &c);
    a.patch_node("n1", &serde_json::json!({"spec": {"unschedulable": true}}))
        .unwrap();
    let got = kubernetes::prepare_reboot(&a, &settings(), "n1", now() + 2, &mut |_| {}, &|| None).unwrap();
    assert!(matches!(got, Prepared::Reboot(_)), "{got:?}");
    assert_eq!(c.lease_holder(LEASE).as_deref(), Some("n1"));
    kubernetes::finish(&a, &settings(), "n1", now() + 2).unwrap();
    assert!(c.unschedulable("n1"), "the operator's cordon stays");
}

#[test]
fn the_kubeconfig_s_token_reaches_the_api_and_a_wrong_one_is_named() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let write = |token: &str| {
        std::fs::write(dir.path().join("token"), token).unwrap();
        std::fs::write(
            dir.path().join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user: {{tokenFile: token}}\n",
                c.port()
            ),
        )
        .unwrap();
        kubernetes::read_kubeconfig(&dir.path().join("kubeconfig")).unwrap()
    };
    let node = |creds: &kubernetes::Credentials| {
        let http = kubernetes::host_client(creds).unwrap();
        let token = match &creds.auth {
            kubernetes::Auth::Token(t) => Some(t.clone()),
            _ => None,
        };
        Api {
            http: &http,
            server: creds.server.clone(),
            token,
        }
        .node("n1")
        .map(|n| n.metadata.name)
    };
    assert_eq!(node(&write(TOKEN)).unwrap(), "n1");
    let e = node(&write("stale")).unwrap_err();
    assert!(
        e.ends_with("/api/v1/nodes/n1: HTTP 401: Unauthorized no valid bearer token"),
        "{e}"
    );
}
