//! Cloud metadata: what the detected platform's metadata service (or its
//! config drive) says of this instance — its id, host name, the SSH keys
//! for the image's default user, the user data for provisioning, and
//! attributes for units (`/run/cairn/metadata.env`).
//!
//! Each provider is a sequence of requests over [`Http`], so the sequence
//! and the parsing are unit-tested against recorded responses. Every
//! request has a timeout, and a provider's requests share one [`Budget`]:
//! retries back off, and a service that never answers costs the boot at
//! most the budget ([`BUDGET`]), then is reported.

pub mod azure;
pub mod ec2;
pub mod gce;
pub mod host;
pub mod openstack;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// The longest a metadata service can hold the boot, all its requests
/// and retries together.
pub const BUDGET: Duration = Duration::from_secs(60);
/// The longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a platform says of this instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub platform: Option<Platform>,
    /// Where it was read: `the metadata service`, `config drive /dev/sr0`.
    pub origin: String,
    pub instance_id: String,
    pub hostname: Option<String>,
    /// OpenSSH public keys for the image's default user.
    pub ssh_keys: Vec<String>,
    /// The user data, for provisioning (Ignition or cloud-config).
    #[serde(skip)]
    pub user_data: Option<Vec<u8>>,
    /// `CAIRN_*` attributes for `/run/cairn/metadata.env` (region, zone,
    /// instance type, addresses), without the prefix.
    pub attributes: BTreeMap<String, String>,
    /// What went wrong beside the metadata (Azure's ready report).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Metadata {
    /// The lines of `/run/cairn/metadata.env`: `CAIRN_PLATFORM`,
    /// `CAIRN_INSTANCE_ID`, `CAIRN_HOSTNAME` and each attribute, values in
    /// double quotes (systemd's `EnvironmentFile=` and `sh` read both).
    pub fn env_file(&self) -> String {
        let mut vars: BTreeMap<String, &str> = BTreeMap::new();
        if let Some(p) = self.platform {
            vars.insert("PLATFORM".into(), p.name());
        }
        vars.insert("INSTANCE_ID".into(), &self.instance_id);
        if let Some(h) = &self.hostname {
            vars.insert("HOSTNAME".into(), h);
        }
        for (k, v) in &self.attributes {
            vars.insert(k.to_ascii_uppercase(), v);
        }
        vars.iter()
            .map(|(k, v)| format!("CAIRN_{k}=\"{}\"\n", env_escape(v)))
            .collect()
    }
}

/// A value inside double quotes for `EnvironmentFile=` and `sh`.
fn env_escape(v: &str) -> String {
    v.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' | '$' | '`' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Patch,
}

impl Method {
    /// The method as HTTP names it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }
}

/// One HTTP request to a metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn get(url: impl Into<String>) -> Request {
        Request {
            method: Method::Get,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn put(url: impl Into<String>) -> Request {
        Request {
            method: Method::Put,
            ..Request::get(url)
        }
    }

    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Request {
        Request {
            method: Method::Post,
            body: body.into(),
            ..Request::get(url)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// The network, and the passing of time, as a provider sees them.
pub trait Http {
    /// Send one request, waiting at most `timeout`. `Err`: no answer
    /// (refused, unreachable, timed out); any HTTP status is `Ok`.
    fn send(&self, request: &Request, timeout: Duration) -> Result<Response, String>;
    /// Time since some fixed moment.
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

impl<T: Http + ?Sized> Http for &T {
    fn send(&self, request: &Request, timeout: Duration) -> Result<Response, String> {
        (**self).send(request, timeout)
    }

    fn now(&self) -> Duration {
        (**self).now()
    }

    fn sleep(&self, d: Duration) {
        (**self).sleep(d)
    }
}

/// The time a provider's requests may take together.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub deadline: Duration,
}

impl Budget {
    pub fn starting_now(http: &dyn Http, length: Duration) -> Budget {
        Budget {
            deadline: http.now() + length,
        }
    }
}

/// Why a provider gave no metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The service never answered within the budget.
    #[error("{url}: no answer within {budget_secs} s ({last})")]
    NoAnswer {
        url: String,
        budget_secs: u64,
        last: String,
    },
    /// It answered something Cairn cannot use.
    #[error("{url}: {why}")]
    Bad { url: String, why: String },
}

/// Statuses a service gives while it is still starting, worth a retry.
fn retryable(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// Send `request` until it is answered with a status that is not a
/// transient error, backing off (1 s, 2 s, 4 s, … at most 8 s) within the
/// budget. The answer may be any other status: callers decide what a 404
/// means.
pub fn send(http: &dyn Http, request: &Request, budget: &Budget) -> Result<Response, Error> {
    let mut wait = Duration::from_secs(1);
    let mut last = "the budget was spent before the first request".to_owned();
    loop {
        let left = budget.deadline.saturating_sub(http.now());
        if left.is_zero() {
            return Err(Error::NoAnswer {
                url: request.url.clone(),
                budget_secs: BUDGET.as_secs(),
                last,
            });
        }
        match http.send(request, REQUEST_TIMEOUT.min(left)) {
            Ok(r) if !retryable(r.status) => return Ok(r),
            Ok(r) => last = format!("HTTP {}", r.status),
            Err(e) => last = e,
        }
        let left = budget.deadline.saturating_sub(http.now());
        http.sleep(wait.min(left));
        wait = (wait * 2).min(Duration::from_secs(8));
    }
}

/// The body of a 200 answer; `None` for a 404 (the service has no such
/// item: no user data, no public IP); any other status is an error.
pub fn get_optional(http: &dyn Http, request: &Request, budget: &Budget) -> Result<Option<Vec<u8>>, Error> {
    let r = send(http, request, budget)?;
    match r.status {
        200 => Ok(Some(r.body)),
        404 => Ok(None),
        s => Err(Error::Bad {
            url: request.url.clone(),
            why: format!("HTTP {s}"),
        }),
    }
}

/// The text of a 200 answer; anything else is an error.
pub fn get_text(http: &dyn Http, request: &Request, budget: &Budget) -> Result<String, Error> {
    match get_optional(http, request, budget)? {
        Some(b) => Ok(String::from_utf8_lossy(&b).trim().to_owned()),
        None => Err(Error::Bad {
            url: request.url.clone(),
            why: "HTTP 404".into(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recorded metadata service: answers by method and URL, with a clock
    //! that moves only when asked to wait (or a request times out).

    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    pub struct Service {
        pub answers: HashMap<(String, String), (u16, Vec<u8>)>,
        /// Headers each answered request must carry, by URL prefix.
        pub required_headers: Vec<(String, String, String)>,
        pub silent: bool,
        pub clock: Cell<Duration>,
        pub log: RefCell<Vec<String>>,
    }

    impl Service {
        pub fn answer(mut self, method: &str, url: &str, status: u16, body: &str) -> Service {
            self.answers
                .insert((method.to_owned(), url.to_owned()), (status, body.as_bytes().to_vec()));
            self
        }

        pub fn require(mut self, prefix: &str, header: &str, value: &str) -> Service {
            self.required_headers
                .push((prefix.to_owned(), header.to_owned(), value.to_owned()));
            self
        }

        pub fn requests(&self) -> Vec<String> {
            self.log.borrow().clone()
        }
    }

    impl Http for Service {
        fn send(&self, r: &Request, timeout: Duration) -> Result<Response, String> {
            let method = r.method.name();
            self.log.borrow_mut().push(format!("{method} {}", r.url));
            if self.silent {
                self.clock.set(self.clock.get() + timeout);
                return Err("timed out".into());
            }
            for (prefix, name, value) in &self.required_headers {
                if r.url.starts_with(prefix.as_str())
                    && !r
                        .headers
                        .iter()
                        .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
                {
                    return Ok(Response {
                        status: 401,
                        body: format!("missing {name}").into_bytes(),
                    });
                }
            }
            match self.answers.get(&(method.to_owned(), r.url.clone())) {
                Some((status, body)) => Ok(Response {
                    status: *status,
                    body: body.clone(),
                }),
                None => Ok(Response {
                    status: 404,
                    body: Vec::new(),
                }),
            }
        }

        fn now(&self) -> Duration {
            self.clock.get()
        }

        fn sleep(&self, d: Duration) {
            self.clock.set(self.clock.get() + d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_that_never_answers_costs_at_most_the_budget() {
        let svc = fake::Service {
            silent: true,
            ..fake::Service::default()
        };
        let budget = Budget::starting_now(&svc, BUDGET);
        let e = send(
            &svc,
            &Request::get("http://169.254.169.254/latest/meta-data/instance-id"),
            &budget,
        )
        .unwrap_err();
        assert!(svc.now() <= BUDGET, "{:?}", svc.now());
        assert!(svc.now() >= BUDGET - REQUEST_TIMEOUT, "{:?}", svc.now());
        assert_eq!(
            e.to_string(),
            "http://169.254.169.254/latest/meta-data/instance-id: no answer within 60 s (timed out)"
        );
        // Retried with backoff in between, not in a tight loop.
        let tries = svc.requests().len();
        assert!((5..=12).contains(&tries), "{tries} tries");
    }

    #[test]
    fn a_starting_service_is_retried_and_a_404_is_an_answer() {
        let svc = fake::Service::default().answer("GET", "http://m/a", 503, "");
        let budget = Budget::starting_now(&svc, Duration::from_secs(10));
        assert!(matches!(
            send(&svc, &Request::get("http://m/a"), &budget),
            Err(Error::NoAnswer { .. })
        ));
        assert!(svc.requests().len() > 2);
        let svc = fake::Service::default();
        let budget = Budget::starting_now(&svc, BUDGET);
        assert_eq!(
            get_optional(&svc, &Request::get("http://m/user-data"), &budget),
            Ok(None)
        );
        assert_eq!(svc.requests().len(), 1);
    }

    #[test]
    fn the_env_file_quotes_every_value() {
        let m = Metadata {
            platform: Some(Platform::Ec2),
            instance_id: "i-0abc".into(),
            hostname: Some("ip-10-0-0-5.ec2.internal".into()),
            attributes: BTreeMap::from([("region".into(), "us-east-1".into()), ("odd".into(), "a\"$b\n".into())]),
            ..Metadata::default()
        };
        assert_eq!(
            m.env_file(),
            "CAIRN_HOSTNAME=\"ip-10-0-0-5.ec2.internal\"\nCAIRN_INSTANCE_ID=\"i-0abc\"\nCAIRN_ODD=\"a\\\"\\$b\"\nCAIRN_PLATFORM=\"ec2\"\nCAIRN_REGION=\"us-east-1\"\n"
        );
    }
}
