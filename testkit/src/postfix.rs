//! Postfix's smtp-sink as a foreign SMTP server. It cannot report a port it picked,
//! so this is the one server started on a port chosen beforehand ([`free_port`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::process::{free_port, local, peer, scratch_dir, wait_for_listener};

/// A running smtp-sink, killed on drop; its stdout (the `-c` counters) is a file.
pub struct PostfixSink {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout: PathBuf,
}

impl PostfixSink {
    /// `smtp-sink [ARGS] ADDR BACKLOG`, e.g. `args = ["-c"]` for the counters.
    pub fn start(args: &[&str], backlog: u32) -> PostfixSink {
        let addr = local(free_port());
        let dir = scratch_dir("smtp-sink");
        let stdout = dir.join("sink.out");
        let mut command = Command::new(peer("smtp-sink"));
        // smtp-sink refuses to run as root without a user to switch to.
        if unsafe { libc::geteuid() } == 0 {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .args(args)
            .arg(addr.to_string())
            .arg(backlog.to_string())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(dir.join("sink.err")).unwrap())
            .spawn()
            .expect("spawn smtp-sink");
        let sink = PostfixSink {
            child,
            addr,
            stdout,
        };
        wait_for_listener(addr, Duration::from_secs(10));
        sink
    }

    /// With `-c`: the last `mesg=N` count it printed (0 before the first message).
    pub fn messages(&self) -> u64 {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .rsplit("mesg=")
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
