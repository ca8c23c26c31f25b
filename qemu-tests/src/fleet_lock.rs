//! A FleetLock server stand-in on loopback, as Zincati's protocol document
//! and its servers (airlock, poseidon/fleetlock) behave: each group has a
//! number of slots; `POST /v1/pre-reboot` takes one for the node's id (200,
//! also when that id holds one already) or is refused with 409 and the
//! protocol's error body; `POST /v1/steady-state` gives the node's slot back
//! (200, also when it held none). A request without `fleet-lock-protocol:
//! true`, or whose body is not `{"client_params": {"id", "group"}}`, gets
//! 400. The test can take and free slots as other nodes would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::metadata_server::{Asked, MetadataServer};

/// One request the stand-in answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    /// `pre-reboot` or `steady-state`.
    pub op: String,
    pub id: String,
    pub group: String,
    pub status: u16,
}

#[derive(Default)]
struct Slots {
    per_group: usize,
    holders: BTreeMap<String, BTreeSet<String>>,
    log: Vec<LockRequest>,
}

pub struct FleetLockServer {
    server: MetadataServer,
    slots: Arc<Mutex<Slots>>,
}

impl FleetLockServer {
    /// A server giving each group `slots` slots.
    pub fn start(slots: usize) -> Result<FleetLockServer> {
        let state = Arc::new(Mutex::new(Slots {
            per_group: slots,
            ..Slots::default()
        }));
        let shared = Arc::clone(&state);
        let server = MetadataServer::start(move |r: &Asked| answer(&mut shared.lock().expect("slots lock"), r))?;
        Ok(FleetLockServer { server, slots: state })
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Another node, `id`, takes a slot of `group`.
    pub fn hold(&self, group: &str, id: &str) {
        let mut s = self.slots.lock().expect("slots lock");
        s.holders.entry(group.to_owned()).or_default().insert(id.to_owned());
    }

    /// `id` gives its slot of `group` back.
    pub fn free(&self, group: &str, id: &str) {
        let mut s = self.slots.lock().expect("slots lock");
        if let Some(h) = s.holders.get_mut(group) {
            h.remove(id);
        }
    }

    /// Who holds `group`'s slots.
    pub fn holders(&self, group: &str) -> Vec<String> {
        let s = self.slots.lock().expect("slots lock");
        s.holders
            .get(group)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every protocol request so far, in order.
    pub fn requests(&self) -> Vec<LockRequest> {
        self.slots.lock().expect("slots lock").log.clone()
    }
}

fn error(status: u16, kind: &str, value: &str) -> (u16, Vec<u8>) {
    (
        status,
        serde_json::json!({"kind": kind, "value": value})
            .to_string()
            .into_bytes(),
    )
}

fn answer(s: &mut Slots, r: &Asked) -> (u16, Vec<u8>) {
    let op = match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/v1/pre-reboot") => "pre-reboot",
        ("POST", "/v1/steady-state") => "steady-state",
        _ => return error(404, "not_found", &r.path),
    };
    if r.headers.get("fleet-lock-protocol").map(String::as_str) != Some("true") {
        return error(400, "missing_header", "fleet-lock-protocol: true");
    }
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let param = |k: &str| body["client_params"][k].as_str().map(str::to_owned);
    let (Some(id), Some(group)) = (param("id"), param("group")) else {
        return error(400, "bad_body", "client_params.id and client_params.group are required");
    };
    let per_group = s.per_group;
    let holders = s.holders.entry(group.clone()).or_default();
    let (status, body) = match op {
        "pre-reboot" if holders.contains(&id) || holders.len() < per_group => {
            holders.insert(id.clone());
            (200, Vec::new())
        }
        "pre-reboot" => error(
            409,
            "failed_lock",
            &format!("semaphore currently full: {per_group} slot(s) of {group} taken"),
        ),
        _ => {
            holders.remove(&id);
            (200, Vec::new())
        }
    };
    s.log.push(LockRequest {
        op: op.to_owned(),
        id,
        group,
        status,
    });
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(op: &str, id: &str, protocol: bool) -> Asked {
        let mut headers = std::collections::BTreeMap::new();
        if protocol {
            headers.insert("fleet-lock-protocol".to_owned(), "true".to_owned());
        }
        Asked {
            method: "POST".into(),
            path: format!("/v1/{op}"),
            headers,
            body: serde_json::json!({"client_params": {"id": id, "group": "default"}})
                .to_string()
                .into_bytes(),
        }
    }

    #[test]
    fn slots_are_taken_refused_when_full_and_given_back() {
        let mut s = Slots {
            per_group: 1,
            ..Slots::default()
        };
        assert_eq!(answer(&mut s, &asked("pre-reboot", "a", true)).0, 200);
        assert_eq!(
            answer(&mut s, &asked("pre-reboot", "a", true)).0,
            200,
            "the holder again"
        );
        let (status, body) = answer(&mut s, &asked("pre-reboot", "b", true));
        assert_eq!(status, 409);
        assert!(String::from_utf8_lossy(&body).contains("failed_lock"));
        assert_eq!(answer(&mut s, &asked("steady-state", "b", true)).0, 200, "held none");
        assert_eq!(answer(&mut s, &asked("steady-state", "a", true)).0, 200);
        assert_eq!(answer(&mut s, &asked("pre-reboot", "b", true)).0, 200);
        assert_eq!(answer(&mut s, &asked("pre-reboot", "c", false)).0, 400);
        assert_eq!(s.log.len(), 6, "a refused header is not a protocol request");
    }
}
