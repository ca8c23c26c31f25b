//! A cloud metadata service stand-in on 127.0.0.1: a handler decides each
//! answer from the method, path and headers (so a test implements a
//! provider's documented behaviour: EC2's session tokens, GCE's
//! `Metadata-Flavor`), and every request is logged with its answer.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

/// One request, as the handler sees it.
#[derive(Debug, Clone)]
pub struct Asked {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

type Handler = dyn Fn(&Asked) -> (u16, Vec<u8>) + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    log: Mutex<Vec<(Asked, u16)>>,
    stop: AtomicBool,
}

/// The server; stops when dropped.
pub struct MetadataServer {
    pub port: u16,
    shared: Arc<Shared>,
}

impl MetadataServer {
    pub fn start(handler: impl Fn(&Asked) -> (u16, Vec<u8>) + Send + Sync + 'static) -> Result<MetadataServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the metadata stand-in")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let (flag, s) = (Arc::clone(&shared), Arc::clone(&shared));
        crate::http::accept_until_stopped(
            listener,
            move || flag.stop.load(Ordering::Relaxed),
            move |conn| {
                let _ = serve(conn, &s);
            },
        );
        Ok(MetadataServer { port, shared })
    }

    /// Every request so far, with the status it was answered.
    pub fn requests(&self) -> Vec<(Asked, u16)> {
        self.shared.log.lock().expect("log lock").clone()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        crate::http::wake(self.port);
    }
}

fn serve(conn: TcpStream, s: &Shared) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    while let Some(head) = crate::http::read_head(&mut reader)? {
        let close = head.closes();
        let crate::http::RequestHead { method, path, headers } = head;
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let asked = Asked {
            method,
            path,
            headers,
            body,
        };
        let (status, answer) = (s.handler)(&asked);
        s.log.lock().expect("log lock").push((asked, status));
        // One write: the head and body in two would wait on Nagle's
        // algorithm and the client's delayed ACK (40 ms per answer).
        let mut response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
            answer.len()
        )
        .into_bytes();
        response.extend_from_slice(&answer);
        conn.write_all(&response)?;
        conn.flush()?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}
