//! A fake SMTP upstream that records every byte it receives, per session, and each
//! message's content. It greets with [`UPSTREAM_BANNER`], answers EHLO with the
//! keywords it was given, 250/354/221 as usual (MAIL and RCPT in any order: it checks
//! what smtpgate passes on, not the client's manners), `500 5.5.1` to unknown verbs,
//! and after `220` to STARTTLS echoes every byte (no real TLS), so a test sees both
//! directions relayed opaquely. Exact reply bytes are part of its contract: tests
//! compare what a client receives through smtpgate with them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::LIMIT;

/// The upstream's greeting, byte for byte.
pub const UPSTREAM_BANNER: &[u8] = b"220 mx.upstream.test ESMTP fake\r\n";

/// What the fake upstream saw, all sessions.
#[derive(Default)]
pub struct Seen {
    /// Every byte received, per session, in accept order.
    pub sessions: Vec<Vec<u8>>,
    /// Messages whose end of data (`.` line) arrived.
    pub messages: Vec<Vec<u8>>,
    pub accepted: usize,
}

/// A fake SMTP server recording exact wire bytes. It greets with [`UPSTREAM_BANNER`],
/// answers EHLO with `keywords`, 250/354/221 as usual and `500 5.5.1` to unknown verbs,
/// and closes after replying 221 to QUIT.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl Upstream {
    pub fn start(keywords: &[&str]) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let keywords: Vec<String> = keywords.iter().map(|k| k.to_string()).collect();
        let shared = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let index = {
                    let mut s = shared.lock().unwrap();
                    s.accepted += 1;
                    s.sessions.push(Vec::new());
                    s.sessions.len() - 1
                };
                let (seen, keywords) = (shared.clone(), keywords.clone());
                thread::spawn(move || serve(stream, index, &keywords, &seen));
            }
        });
        Upstream { addr, seen }
    }

    pub fn wire(&self, session: usize) -> Vec<u8> {
        self.seen
            .lock()
            .unwrap()
            .sessions
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    pub fn accepted(&self) -> usize {
        self.seen.lock().unwrap().accepted
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().messages.clone()
    }

    /// Waits (bounded) until session `index`'s wire bytes satisfy `done`.
    pub fn wait_wire(&self, index: usize, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let wire = self.wire(index);
            if done(&wire) || Instant::now() > deadline {
                return wire;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(stream: TcpStream, index: usize, keywords: &[String], seen: &Mutex<Seen>) {
    stream.set_read_timeout(Some(LIMIT)).ok();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let _ = writer.write_all(UPSTREAM_BANNER);
    let mut line = Vec::new();
    let mut in_data = false;
    let mut message = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        seen.lock().unwrap().sessions[index].extend_from_slice(&line);
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                seen.lock()
                    .unwrap()
                    .messages
                    .push(std::mem::take(&mut message));
                let _ = writer.write_all(b"250 2.0.0 Ok: queued\r\n");
            } else {
                message.extend_from_slice(&line);
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let verb = text
            .split([' ', '\r', '\n'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: Vec<u8> = match verb.as_str() {
            "EHLO" => {
                let mut r = b"250-mx.upstream.test\r\n".to_vec();
                for (i, k) in keywords.iter().enumerate() {
                    let sep = if i + 1 == keywords.len() { ' ' } else { '-' };
                    r.extend_from_slice(format!("250{sep}{k}\r\n").as_bytes());
                }
                if keywords.is_empty() {
                    r = b"250 mx.upstream.test\r\n".to_vec();
                }
                r
            }
            "HELO" => b"250 mx.upstream.test\r\n".to_vec(),
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n".to_vec(),
            "DATA" => {
                in_data = true;
                b"354 End data with <CR><LF>.<CR><LF>\r\n".to_vec()
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 2.0.0 Bye\r\n");
                return;
            }
            "STARTTLS" => {
                // No real TLS: from here on echo every byte back, recording it, so a
                // test can check both directions are relayed opaquely.
                let _ = writer.write_all(b"220 2.0.0 Ready to start TLS\r\n");
                let mut chunk = [0u8; 4096];
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            seen.lock().unwrap().sessions[index].extend_from_slice(&chunk[..n]);
                            if writer.write_all(&chunk[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            "BDAT" => {
                let mut words = text.split_whitespace().skip(1);
                let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let mut chunk = vec![0u8; size];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                seen.lock().unwrap().sessions[index].extend_from_slice(&chunk);
                message.extend_from_slice(&chunk);
                if last {
                    seen.lock()
                        .unwrap()
                        .messages
                        .push(std::mem::take(&mut message));
                }
                format!("250 2.0.0 {size} octets received\r\n").into_bytes()
            }
            _ => b"500 5.5.1 Command unrecognized\r\n".to_vec(),
        };
        if writer.write_all(&reply).is_err() {
            return;
        }
    }
}
