//! The I/O driver's own counters on `/metrics`: what the glommio reactors of every
//! core asked of the kernel (`io_uring_enter` calls, parks, SQEs by opcode, CQEs,
//! `membarrier` calls), so a benchmark can divide them by the messages relayed.
//! Read from glommio when `/metrics` is served; nothing here runs on the relay path.

use std::fmt::Write;

use glommio::{reactor_counters, SqeKind};

/// Appends the reactor counters in Prometheus text format.
pub fn append_prometheus(out: &mut String) {
    let c = reactor_counters();
    let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP smtpgate_reactor_{name} {help}");
        let _ = writeln!(out, "# TYPE smtpgate_reactor_{name} counter");
        for (labels, value) in samples {
            let _ = writeln!(out, "smtpgate_reactor_{name}{labels} {value}");
        }
    };
    let one = |v: u64| [(String::new(), v)];
    counter(
        "io_uring_enters_total",
        "io_uring_enter system calls (submissions and waits).",
        &one(c.io_uring_enters),
    );
    counter(
        "parks_total",
        "Times a core slept in the kernel waiting for events.",
        &one(c.parks),
    );
    counter("cqes_total", "io_uring completions consumed.", &one(c.cqes));
    counter(
        "membarriers_total",
        "membarrier system calls (interrupts to the other cores).",
        &one(c.membarriers),
    );
    let sqes: Vec<_> = SqeKind::ALL
        .iter()
        .map(|&kind| (format!("{{op=\"{}\"}}", kind.name()), c.sqes_of(kind)))
        .collect();
    counter("sqes_total", "io_uring submissions by operation.", &sqes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reactor_counter_is_rendered_once_with_its_type() {
        let mut out = String::new();
        append_prometheus(&mut out);
        for name in [
            "io_uring_enters_total",
            "parks_total",
            "cqes_total",
            "membarriers_total",
            "sqes_total",
        ] {
            let typed = format!("# TYPE smtpgate_reactor_{name} counter\n");
            assert_eq!(out.matches(&typed).count(), 1, "{out}");
        }
        assert!(out.contains("smtpgate_reactor_sqes_total{op=\"poll_add\"} "));
        assert_eq!(out.matches("smtpgate_reactor_sqes_total{").count(), 14);
    }
}
