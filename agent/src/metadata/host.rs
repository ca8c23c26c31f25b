//! The running host's side of [`super::Http`]: reqwest on a one-thread
//! runtime, the wall clock, and the provider for each platform.

use std::time::{Duration, Instant};

use super::{Budget, Http, Metadata, Method, Request, Response, BUDGET};
use crate::platform::Platform;

/// The one way the agent makes an HTTP client: `builder` built with TLS by
/// rustls and the aws-lc-rs provider (tough's too), installed for the
/// process on first use (reqwest is built without a provider of its own).
pub fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    builder.build().map_err(|e| format!("starting the HTTP client: {e}"))
}

pub struct HostHttp {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    started: Instant,
}

impl HostHttp {
    pub fn new() -> Result<HostHttp, String> {
        Self::with_client(reqwest::Client::builder())
    }

    /// A client made by `builder` (a cluster's CA and credentials, say).
    pub fn with_client(builder: reqwest::ClientBuilder) -> Result<HostHttp, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP client: {e}"))?;
        // Metadata services are link-local, FleetLock servers and clusters
        // are the site's own: never through a proxy.
        let client = http_client(builder.no_proxy())?;
        Ok(HostHttp {
            runtime,
            client,
            started: Instant::now(),
        })
    }
}

impl Http for HostHttp {
    fn send(&self, r: &Request, timeout: Duration) -> Result<Response, String> {
        let method = match r.method {
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
        };
        let mut req = self.client.request(method, &r.url).timeout(timeout);
        for (k, v) in &r.headers {
            req = req.header(k, v);
        }
        if r.method != Method::Get {
            req = req.body(r.body.clone());
        }
        self.runtime.block_on(async {
            let resp = req.send().await.map_err(|e| format!("{e}"))?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| format!("{e}"))?.to_vec();
            Ok(Response { status, body })
        })
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Read `platform`'s metadata service, within [`BUDGET`].
pub fn read_service(platform: Platform) -> Result<Metadata, String> {
    let http = HostHttp::new()?;
    let budget = Budget::starting_now(&http, BUDGET);
    let read = match platform {
        Platform::Ec2 => super::ec2::read(&super::ec2::EC2, &http, &budget),
        Platform::Aliyun => super::ec2::read(&super::ec2::ALIYUN, &http, &budget),
        Platform::Tencent => super::ec2::read(&super::ec2::TENCENT, &http, &budget),
        Platform::Gce => super::gce::read(&http, &budget),
        Platform::Openstack | Platform::Huawei => super::openstack::read(platform, &http, &budget),
        Platform::Azure => super::azure::read(&http, &budget).map(|mut m| {
            if m.user_data.is_none() {
                match crate::provision::source::read_azure_custom_data() {
                    Ok(data) => m.user_data = data,
                    Err(e) => m.warnings.push(format!("{e:#}")),
                }
            }
            m
        }),
        Platform::Qemu | Platform::Metal => return Err(format!("{platform} has no metadata service")),
    };
    read.map_err(|e| e.to_string())
}

/// Tell the platform how this boot's provisioning went, where it wants to
/// be told: Azure's WireServer health report (without it Azure marks a new
/// VM failed). `failure` is why provisioning failed, if it did. Returns
/// what was reported, to be said; `None` where the platform wants nothing.
pub fn report_provisioning(platform: Platform, failure: Option<&str>) -> Result<Option<String>, String> {
    if platform != Platform::Azure {
        return Ok(None);
    }
    let http = HostHttp::new()?;
    let budget = Budget::starting_now(&http, BUDGET);
    let health = match failure {
        None => super::azure::Health::Ready,
        Some(why) => super::azure::Health::ProvisioningFailed(why.to_owned()),
    };
    let g = super::azure::report_health(&http, &budget, &health)
        .map_err(|e| format!("the health report to Azure's WireServer: {e}"))?;
    Ok(Some(format!(
        "reported {} to Azure's WireServer (goal state incarnation {})",
        if failure.is_none() {
            "ready"
        } else {
            "the failed provisioning"
        },
        g.incarnation
    )))
}
