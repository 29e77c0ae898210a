//! Restarting smtpgate right after it carried traffic: its listening ports must bind
//! again at once, although the sessions it closed leave sockets in TIME-WAIT on them.

mod common;

use common::*;

/// One session that smtpgate closes first (after the upstream's 221), so the accepted
/// socket on the listening port is the one left in TIME-WAIT.
fn session_closed_by_the_gate(listen: std::net::SocketAddr) {
    let mut client = Client::connect(listen);
    assert_eq!(client.reply(), UPSTREAM_BANNER);
    client.send(b"HELO client.test\r\nQUIT\r\n");
    assert_eq!(client.reply(), b"250 mx.upstream.test\r\n");
    assert_eq!(client.reply(), b"221 2.0.0 Bye\r\n");
    assert_eq!(client.read_to_end(), b"", "the gate closes the session");
}

fn time_wait_on(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{port:04X}");
    // Columns: sl local_address rem_address st ...; state 06 is TIME_WAIT.
    table.lines().skip(1).any(|line| {
        let mut columns = line.split_whitespace().skip(1);
        let local = columns.next().unwrap_or("");
        let state = columns.nth(1).unwrap_or("");
        local.ends_with(&port) && state == "06"
    })
}

#[test]
fn a_restart_right_after_sigterm_binds_the_ports_that_carried_sessions() {
    let up = Upstream::start(&[]);
    let (conf, listen) = config(up.addr, "policy = \"none\"", "");
    let mut gate = Gate::start(&conf);
    session_closed_by_the_gate(listen);
    assert!(
        time_wait_on(listen.port()),
        "the closed session left no TIME-WAIT socket on {listen}, so this test proves nothing"
    );
    gate.signal(libc::SIGTERM);
    assert_eq!(gate.wait_exit(LIMIT), Some(0), "{}", gate.stderr());
    drop(gate);

    // The same config at once: every shard binds the listening port again (a failed
    // bind makes smtpgate exit with "cannot listen", and `start` panics with its log).
    let _restarted = Gate::start(&conf);
    session_closed_by_the_gate(listen);
}
