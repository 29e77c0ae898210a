//! An in-memory driver for the inspector, shared by the unit tests, property tests,
//! the allocation test, the benchmarks and the fuzz target (cargo feature `testing`):
//! feeds a transcript — whole, in chunks, or a read at a time — and collects what
//! would go out to each peer, the events and the verdict, as the dataplane would.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Inspector, Output, StartTls, TlsTermination, Verdict};
use crate::event::Event;
use crate::policy::Policy;
use crate::rules::parse_rule;

/// Which peer sent a piece of a transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
}

/// A session as the two peers wrote it: each segment is one peer's write.
pub type Transcript = Vec<(Peer, Vec<u8>)>;

/// What the driver keeps of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collect {
    /// Every forwarded byte and every event (tests).
    Everything,
    /// Only counts (benchmarks, the allocation test: collecting would allocate).
    Counts,
}

/// One inspected session, fed by hand.
pub struct Driver {
    pub inspector: Inspector,
    out: Output,
    collect: Collect,
    /// Bytes forwarded to the server and to the client (with [`Collect::Everything`]).
    pub to_server: Vec<u8>,
    pub to_client: Vec<u8>,
    pub events: Vec<Event>,
    /// The verdict, once given (at most one per session).
    pub verdict: Verdict,
    /// Every TLS switch the inspector asked for, in order.
    pub start_tls: Vec<StartTls>,
    /// Bytes forwarded both ways and events, counted in either mode.
    pub forwarded: usize,
    pub event_count: usize,
    pub now: Instant,
}

impl Driver {
    pub fn new(policy: Arc<Policy>) -> Driver {
        Driver::with(policy, Collect::Everything)
    }

    pub fn with(policy: Arc<Policy>, collect: Collect) -> Driver {
        Driver::with_tls(policy, collect, TlsTermination::Passthrough)
    }

    /// A session with its STARTTLS handling.
    pub fn with_tls(policy: Arc<Policy>, collect: Collect, tls: TlsTermination) -> Driver {
        Driver {
            inspector: Inspector::with_tls(policy, tls),
            start_tls: Vec::new(),
            out: Output::default(),
            collect,
            to_server: Vec::new(),
            to_client: Vec::new(),
            events: Vec::new(),
            verdict: Verdict::Continue,
            forwarded: 0,
            event_count: 0,
            now: Instant::now(),
        }
    }

    /// A built-in policy by name.
    pub fn builtin(name: &str) -> Driver {
        Driver::new(Arc::new(Policy::builtin(name).expect("a built-in policy")))
    }

    /// `default` plus extra `match ...` rules.
    pub fn with_rules(rules: &[&str]) -> Driver {
        let mut policy = Policy::builtin("default").expect("a built-in policy");
        for rule in rules {
            policy.push_rule(parse_rule(rule).expect("a valid rule"));
        }
        Driver::new(Arc::new(policy))
    }

    /// Feeds one read from `peer`.
    pub fn feed(&mut self, peer: Peer, input: Bytes) -> &mut Self {
        match peer {
            Peer::Client => self
                .inspector
                .on_client_bytes(input, self.now, &mut self.out),
            Peer::Server => self
                .inspector
                .on_server_bytes(input, self.now, &mut self.out),
        }
        self.collect();
        self
    }

    /// One client read (copied).
    pub fn client(&mut self, bytes: &[u8]) -> &mut Self {
        self.feed(Peer::Client, Bytes::copy_from_slice(bytes))
    }

    /// One server read (copied).
    pub fn server(&mut self, bytes: &[u8]) -> &mut Self {
        self.feed(Peer::Server, Bytes::copy_from_slice(bytes))
    }

    /// Feeds `transcript`, each segment cut into reads of the sizes in `chunks` (used
    /// cyclically; empty = whole segments). `after_read` runs after every read.
    pub fn run(
        &mut self,
        transcript: &[(Peer, Vec<u8>)],
        chunks: &[usize],
        mut after_read: impl FnMut(&Driver),
    ) {
        let mut sizes = chunks.iter().cycle();
        for (peer, bytes) in transcript {
            let bytes = Bytes::copy_from_slice(bytes);
            let mut pos = 0;
            while pos < bytes.len() {
                let n = match sizes.next() {
                    Some(&n) => n.max(1),
                    None => bytes.len(),
                };
                let piece = bytes.slice(pos..(pos + n).min(bytes.len()));
                pos += piece.len();
                self.feed(*peer, piece);
                after_read(self);
            }
        }
    }

    /// Forgets what was collected so far (the session goes on).
    pub fn forget(&mut self) -> &mut Self {
        self.to_server.clear();
        self.to_client.clear();
        self.events.clear();
        self
    }

    fn collect(&mut self) {
        let out = &mut self.out;
        self.forwarded += out
            .to_server
            .iter()
            .chain(&out.to_client)
            .map(Bytes::len)
            .sum::<usize>();
        self.event_count += out.events.len();
        if self.collect == Collect::Everything {
            for b in &out.to_server {
                self.to_server.extend_from_slice(b);
            }
            for b in &out.to_client {
                self.to_client.extend_from_slice(b);
            }
            self.events.append(&mut out.events);
        }
        if let Some(start) = out.start_tls {
            self.start_tls.push(start);
        }
        if out.verdict != Verdict::Continue {
            assert_eq!(self.verdict, Verdict::Continue, "one verdict only");
            self.verdict = out.verdict;
        }
        out.clear();
    }

    /// The last read's raw output (before collection), for tests of slicing.
    pub fn feed_raw(&mut self, peer: Peer, input: Bytes) -> &Output {
        self.out.clear();
        match peer {
            Peer::Client => self
                .inspector
                .on_client_bytes(input, self.now, &mut self.out),
            Peer::Server => self
                .inspector
                .on_server_bytes(input, self.now, &mut self.out),
        }
        &self.out
    }

    /// Greeting, EHLO and its reply (PIPELINING, CHUNKING), MAIL and RCPT accepted;
    /// what was collected is forgotten.
    pub fn in_transaction(&mut self) -> &mut Self {
        self.server(b"220 mx ESMTP\r\n")
            .client(b"EHLO c\r\n")
            .server(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
            .client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
            .server(b"250 ok\r\n250 ok\r\n")
            .forget()
    }

    /// ... then DATA accepted.
    pub fn in_data(&mut self) -> &mut Self {
        self.in_transaction()
            .client(b"DATA\r\n")
            .server(b"354 go\r\n")
            .forget()
    }

    pub fn server_text(&self) -> String {
        String::from_utf8_lossy(&self.to_server).into_owned()
    }

    pub fn client_text(&self) -> String {
        String::from_utf8_lossy(&self.to_client).into_owned()
    }

    /// The text of the rule an event names.
    pub fn rule_text(&self, event: &Event) -> &str {
        &self.inspector.policy().rule(event.rule).text
    }

    /// The drop reply; panics on any other verdict.
    pub fn drop_reply(&self) -> String {
        match self.verdict {
            Verdict::Drop { reply } => String::from_utf8_lossy(reply).into_owned(),
            other => panic!("expected a drop, got {other:?}"),
        }
    }
}
