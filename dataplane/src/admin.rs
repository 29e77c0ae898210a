//! The admin endpoint: a tiny HTTP/1.1 server answering `GET /status` (JSON) and
//! `GET /metrics` (Prometheus). It runs on its own plain thread, off the shards, because
//! it is rare, blocking is fine there, and it must answer even when every core is busy.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::engine::Shared;

/// Serves requests until the process exits.
pub fn spawn(listener: TcpListener, shared: &'static Shared) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("smtpgate-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One request per connection; a slow admin client cannot stall us long.
                let _ = serve(stream, shared);
            }
        })?;
    Ok(())
}

fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n")
    {
        let n = stream.read(&mut chunk)?;
        if n == 0 || request.len() > 8192 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/status") => (
            "200 OK",
            "application/json",
            shared.stats.status_json(&shared.admission),
        ),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            shared.stats.prometheus(&shared.admission),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /status or /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
