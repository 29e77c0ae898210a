//! Zero allocations per line once a session is warm, counted by a global allocator
//! (in its own test binary so it affects nothing else).
//!
//! Inputs are prepared before counting as `Bytes::from_static`, whose slices cost no
//! allocation; what is measured is the inspector itself: framing, rule checks, reply
//! pairing, forwarding (slices into `Output`'s reused vectors), events.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use smtpgate_policy::inspector::testing::{Collect, Driver, Peer};
use smtpgate_policy::inspector::Verdict;
use smtpgate_policy::policy::Policy;

struct Counting;

thread_local! {
    /// Allocations made by this thread (tests run on their own threads).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|n| n.get())
}

/// Feeds `'static` inputs (their slices cost no allocation) and counts what went out.
struct Session(Driver);

impl Session {
    fn client(&mut self, bytes: &'static [u8]) {
        self.0.feed(Peer::Client, Bytes::from_static(bytes));
        assert_eq!(self.0.verdict, Verdict::Continue);
    }

    fn server(&mut self, bytes: &'static [u8]) {
        self.0.feed(Peer::Server, Bytes::from_static(bytes));
        assert_eq!(self.0.verdict, Verdict::Continue);
    }
}

/// A `default` session past greeting and EHLO (masked banner and keyword: those
/// rewrites allocate, once per session).
fn warm_session() -> Session {
    let policy = Arc::new(Policy::builtin("default").unwrap());
    let mut s = Session(Driver::with(policy, Collect::Counts));
    s.server(b"220 mx.example.com ESMTP\r\n");
    s.client(b"EHLO client.example\r\n");
    s.server(b"250-mx.example.com\r\n250-PIPELINING\r\n250-X-EXPS GSSAPI\r\n250 CHUNKING\r\n");
    s
}

const COMMANDS: &[u8] = b"MAIL FROM:<alice@example.org> SIZE=1000\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<carol@example.com>\r\nNOOP\r\nRSET\r\n";
const REPLIES: &[u8] =
    b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n";
const BODY: &[u8] =
    b"TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsuIE1hbnkgaGFuZHMgbWFrZSBsaWdodCB3b3JrLiBN\r\n\
bWFrZSBsaWdodCB3b3JrLiBNYW55IGhhbmRzIG1ha2UgbGlnaHQgd29yay4gTWFueSBoYW5kcyBt\r\n\
..a stuffed dot line and some ordinary text, seventy-six characters long....\r\n\
--not-a-boundary-of-this-message but starting with two dashes all the same..\r\n";

#[test]
fn zero_allocations_per_command_line_once_warm() {
    let mut s = warm_session();
    for _ in 0..50 {
        s.client(COMMANDS);
        s.server(REPLIES);
    }
    let before = allocations();
    const ROUNDS: u64 = 2_000;
    for _ in 0..ROUNDS {
        s.client(COMMANDS);
        s.server(REPLIES);
        // Pipelined or one command per read: both framed without allocation.
        s.client(b"NOOP\r\n");
        s.server(b"250 2.0.0 Ok\r\n");
    }
    let lines = ROUNDS * 6;
    let allocated = allocations() - before;
    assert!(s.0.forwarded > 0);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations over {lines} command lines and as many replies"
    );
}

#[test]
fn zero_allocations_per_body_line_once_warm() {
    let mut s = warm_session();
    s.client(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
    s.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n");
    s.client(b"Subject: warm\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n");
    for _ in 0..50 {
        s.client(BODY);
    }
    let before = allocations();
    const ROUNDS: u64 = 5_000;
    for _ in 0..ROUNDS {
        s.client(BODY);
    }
    let lines = ROUNDS * 4;
    let allocated = allocations() - before;
    assert_eq!(
        allocated, 0,
        "{allocated} allocations over {lines} body lines"
    );
}

#[test]
fn zero_allocations_per_transaction_once_warm() {
    let mut s = warm_session();
    let transaction = |s: &mut Session| {
        s.client(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
        s.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n");
        s.client(b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: t\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n");
        s.client(b"--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        s.client(BODY);
        s.client(b"--b1--\r\n.\r\n");
        s.server(b"250 2.0.0 Ok: queued\r\n");
    };
    for _ in 0..20 {
        transaction(&mut s);
    }
    let before = allocations();
    for _ in 0..1_000 {
        transaction(&mut s);
    }
    let allocated = allocations() - before;
    assert_eq!(
        allocated, 0,
        "{allocated} allocations over 1000 transactions"
    );
}

#[test]
fn the_counter_counts() {
    let before = allocations();
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(64));
    drop(v);
    let mut s = warm_session();
    let mid = allocations();
    // A command split across reads is copied into the framer's buffer, whose first
    // growth allocates.
    s.client(b"XYZZY ");
    s.client(b"plugh\r\n");
    assert!(mid > before);
    assert!(allocations() > mid);
}
