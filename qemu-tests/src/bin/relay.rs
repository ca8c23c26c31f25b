//! `cairn-test-relay PORT`: joins stdin/stdout to a TCP connection to
//! 127.0.0.1:PORT. QEMU runs one per guest connection for a
//! `guestfwd=…-cmd:` rule, so the guest reaches a loopback-only test server
//! and nothing else.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

fn main() {
    let port: u16 = match std::env::args().nth(1).and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("usage: cairn-test-relay PORT");
            std::process::exit(2);
        }
    };
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        std::process::exit(1);
    };
    let mut upstream = stream.try_clone().expect("clone socket");
    let to_server = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut downstream = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match downstream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).is_err() {
                    break;
                }
            }
        }
    }
    drop(to_server);
    std::process::exit(0);
}
