//! A static-file HTTP/1.1 server on 127.0.0.1 for update tests: serves a
//! folder (which the test may switch), logs what was asked, and can be told
//! to misbehave (status codes, stalls, truncated bodies, resets) for the
//! next matching requests.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

/// A way to misbehave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Send the headers, then nothing for this long, then close.
    Stall(Duration),
    /// Send the headers and half the body, then close.
    Truncate,
    /// Close the connection without answering.
    Reset,
}

#[derive(Debug, Clone)]
struct FaultRule {
    path_contains: String,
    fault: Fault,
    remaining: usize,
}

#[derive(Default)]
struct Shared {
    root: Mutex<PathBuf>,
    faults: Mutex<Vec<FaultRule>>,
    log: Mutex<Vec<(String, u16, u64)>>,
    stop: AtomicBool,
}

/// The server; stops when dropped.
pub struct Server {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Server {
    pub fn start(root: &Path) -> Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the test HTTP server")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            root: Mutex::new(root.to_owned()),
            ..Default::default()
        });
        let (flag, s) = (Arc::clone(&shared), Arc::clone(&shared));
        accept_until_stopped(
            listener,
            move || flag.stop.load(Ordering::Relaxed),
            move |conn| {
                let _ = serve(conn, &s);
            },
        );
        Ok(Server { port, shared })
    }

    /// Serve another folder from now on.
    pub fn set_root(&self, root: &Path) {
        *self.shared.root.lock().expect("root lock") = root.to_owned();
    }

    /// Misbehave for the next `times` requests whose path contains `path_contains`.
    pub fn inject(&self, path_contains: &str, fault: Fault, times: usize) {
        self.shared.faults.lock().expect("faults lock").push(FaultRule {
            path_contains: path_contains.to_owned(),
            fault,
            remaining: times,
        });
    }

    pub fn clear_faults(&self) {
        self.shared.faults.lock().expect("faults lock").clear();
    }

    /// (path, status, body bytes sent) of every request so far.
    pub fn requests(&self) -> Vec<(String, u16, u64)> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.requests().iter().map(|r| r.2).sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        wake(self.port);
    }
}

/// Serve each connection `listener` accepts on a thread of its own, until
/// `stopped` says so (checked at each connection: see [`wake`]).
pub(crate) fn accept_until_stopped(
    listener: TcpListener,
    stopped: impl Fn() -> bool + Send + 'static,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped() {
                break;
            }
            if let Ok(conn) = conn {
                let serve = Arc::clone(&serve);
                std::thread::spawn(move || serve(conn));
            }
        }
    });
}

/// Wake a server's accept loop so it sees that it was stopped.
pub(crate) fn wake(port: u16) {
    let _ = TcpStream::connect(("127.0.0.1", port));
}

/// The file a request path names under `root`: its segments
/// percent-decoded (apt asks for `hello_1.0%7ecairn_amd64.deb`), refusing
/// `..` and a segment that decodes to a `/`.
pub fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next().unwrap_or("");
    let mut out = root.to_owned();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode(segment)?;
        match Path::new(&decoded).components().collect::<Vec<_>>().as_slice() {
            [Component::Normal(p)] => out.push(p),
            [Component::CurDir] => {}
            _ => return None,
        }
    }
    Some(out)
}

/// `%XX` escapes of one path segment decoded; `None` for a bad escape or
/// one that makes a `/` or a NUL.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(hex, 16).ok()?;
            if b == b'/' || b == 0 {
                return None;
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A request's first line and headers (names in lower case).
pub(crate) struct RequestHead {
    pub method: String,
    pub path: String,
    pub headers: std::collections::BTreeMap<String, String>,
}

impl RequestHead {
    /// Whether the client asked to close the connection after the answer.
    pub fn closes(&self) -> bool {
        self.headers
            .get("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// Read the next request's head; `None` when the client closed.
pub(crate) fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<RequestHead>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or("/").to_owned();
    let mut headers = std::collections::BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            return Ok(Some(RequestHead { method, path, headers }));
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
}

fn serve(conn: TcpStream, s: &Shared) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    while let Some(head) = read_head(&mut reader)? {
        let close = head.closes();
        let (method, path) = (head.method, head.path);
        let fault = {
            let mut faults = s.faults.lock().expect("faults lock");
            let hit = faults
                .iter_mut()
                .find(|f| f.remaining > 0 && path.contains(&f.path_contains));
            hit.map(|f| {
                f.remaining -= 1;
                f.fault.clone()
            })
        };
        let root = s.root.lock().expect("root lock").clone();
        let body = resolve(&root, &path).and_then(|p| std::fs::read(p).ok());
        let record = |status: u16, sent: u64| s.log.lock().expect("log lock").push((path.clone(), status, sent));
        match (fault, body) {
            (Some(Fault::Reset), _) => {
                record(0, 0);
                let _ = conn.shutdown(Shutdown::Both);
                return Ok(());
            }
            (Some(Fault::Status(code)), _) => {
                record(code, 0);
                write!(conn, "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\n\r\n")?;
            }
            (Some(Fault::Stall(d)), Some(body)) => {
                record(200, 0);
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())?;
                conn.flush()?;
                std::thread::sleep(d);
                return Ok(());
            }
            (Some(Fault::Truncate), Some(body)) => {
                let half = body.len() / 2;
                record(200, half as u64);
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())?;
                conn.write_all(&body[..half])?;
                conn.flush()?;
                let _ = conn.shutdown(Shutdown::Both);
                return Ok(());
            }
            (_, Some(body)) => {
                record(200, body.len() as u64);
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    body.len()
                )?;
                if method != "HEAD" {
                    conn.write_all(&body)?;
                }
            }
            (_, None) => {
                record(404, 0);
                write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            }
        }
        conn.flush()?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.as_bytes().to_vec())
            .unwrap_or_default();
        (code, body)
    }

    #[test]
    fn serves_files_refuses_escapes_and_injects_faults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tuf")).unwrap();
        std::fs::write(dir.path().join("tuf/timestamp.json"), "0123456789").unwrap();
        let server = Server::start(dir.path()).unwrap();
        assert_eq!(get(server.port, "/tuf/timestamp.json"), (200, b"0123456789".to_vec()));
        assert_eq!(get(server.port, "/missing").0, 404);
        assert_eq!(get(server.port, "/../etc/passwd").0, 404);
        server.inject("timestamp", Fault::Status(503), 1);
        assert_eq!(get(server.port, "/tuf/timestamp.json").0, 503);
        server.inject("timestamp", Fault::Truncate, 1);
        assert_eq!(get(server.port, "/tuf/timestamp.json").1, b"01234".to_vec());
        assert_eq!(get(server.port, "/tuf/timestamp.json").0, 200);
        assert!(resolve(Path::new("/srv"), "/a/../b").is_none());
        assert_eq!(
            resolve(Path::new("/srv"), "/pool/hello_1.0%7ecairn_amd64.deb"),
            Some(PathBuf::from("/srv/pool/hello_1.0~cairn_amd64.deb"))
        );
        assert!(resolve(Path::new("/srv"), "/a/%2e%2e/b").is_none());
        assert!(resolve(Path::new("/srv"), "/a%2fb").is_none());
        assert!(resolve(Path::new("/srv"), "/a%zz").is_none());
        assert_eq!(server.requests().len(), 6);
    }
}
