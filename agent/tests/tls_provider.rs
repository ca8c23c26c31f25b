//! Every HTTP client the agent makes has its TLS provider, also in a
//! process where nothing made one before (reqwest is built without a
//! provider of its own; `metadata::host::http_client` installs it). This
//! test binary is such a process: with a client made any other way, the
//! fetch below panics ("No provider set") instead of failing.

use std::time::Duration;

use cairn_agent::provision::ignition::Fetch as _;
use cairn_agent::provision::source::HttpFetch;

#[test]
fn provisioning_s_fetcher_makes_its_client_in_a_fresh_process() {
    let fetch = HttpFetch {
        attempts: 1,
        timeout: Duration::from_secs(2),
    };
    // Nothing listens on the discard port of loopback: a clear error.
    let e = fetch.fetch("https://127.0.0.1:9/config.ign", &[]).unwrap_err();
    assert!(e.starts_with("https://127.0.0.1:9/config.ign: "), "{e}");
}
