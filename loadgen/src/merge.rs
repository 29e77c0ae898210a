//! `merge`: one report from the `send --json` results of several processes
//! that ran at the same time (several load generator hosts, or several
//! processes on one host).
//!
//! Counters add up, rates add up (the processes ran side by side), and the
//! latency percentiles come from the sum of the processes' histograms — a
//! p99 of p99s would mean nothing. Reports of different loads (another size,
//! mode or envelope shape) are refused rather than blended.

use crate::report::{Latencies, Report};
use serde::Serialize;

/// The merged report: the fields of a `send` report plus where it came from.
#[derive(Serialize)]
pub struct Merged {
    pub merged_from: Vec<String>,
    #[serde(flatten)]
    pub report: Report,
}

/// Merges `(name, report)` pairs; `name` (a file name) appears in errors.
pub fn merge(inputs: &[(String, Report)]) -> Result<Merged, String> {
    let Some(((first_name, first), rest)) = inputs.split_first() else {
        return Err("nothing to merge".into());
    };
    for (name, report) in rest {
        same_load(first_name, first, name, report)?;
    }
    let mut latencies = Latencies::default();
    let mut merged = Report {
        size: first.size.clone(),
        recipients: first.recipients,
        pipelining: first.pipelining,
        bdat: first.bdat,
        per_connection: first.per_connection,
        mode: first.mode.clone(),
        ..Report::default()
    };
    let mut targets: Vec<&str> = Vec::new();
    let mut target_rate = Some(0.0);
    for (name, report) in inputs {
        if report.histograms.is_empty() && report.messages_attempted > 0 {
            return Err(format!(
                "{name} carries no latency histograms (written by an older smtpgate-loadgen?)"
            ));
        }
        latencies.merge(&Latencies::from_report(report).map_err(|e| format!("{name}: {e}"))?);
        if !targets.contains(&report.target.as_str()) {
            targets.push(&report.target);
        }
        target_rate = target_rate.zip(report.target_rate).map(|(a, b)| a + b);
        merged.connections += report.connections;
        merged.cores += report.cores;
        // Side by side: the merged run lasted as long as the longest one.
        merged.elapsed_s = merged.elapsed_s.max(report.elapsed_s);
        merged.messages_attempted += report.messages_attempted;
        merged.messages_ok += report.messages_ok;
        merged.messages_failed += report.messages_failed;
        merged.bytes_ok += report.bytes_ok;
        merged.msgs_per_s += report.msgs_per_s;
        merged.mb_per_s += report.mb_per_s;
        merged.connections_opened += report.connections_opened;
        merged.connections_per_s += report.connections_per_s;
        for (key, count) in &report.errors {
            *merged.errors.entry(key.clone()).or_insert(0) += count;
        }
        for (key, count) in &report.errors_by_code {
            *merged.errors_by_code.entry(key.clone()).or_insert(0) += count;
        }
        merged.loadgen_cpu_s += report.loadgen_cpu_s;
    }
    merged.target = targets.join(",");
    merged.target_rate = target_rate;
    merged.loadgen_cpu_us_per_msg = if merged.messages_attempted > 0 {
        merged.loadgen_cpu_s * 1e6 / merged.messages_attempted as f64
    } else {
        0.0
    };
    merged.fill_latencies(&latencies);
    Ok(Merged {
        merged_from: inputs.iter().map(|(name, _)| name.clone()).collect(),
        report: merged,
    })
}

/// Refuses to blend reports of different loads.
fn same_load(a_name: &str, a: &Report, b_name: &str, b: &Report) -> Result<(), String> {
    let shape = |r: &Report| {
        [
            ("size", r.size.clone()),
            ("recipients", r.recipients.to_string()),
            ("pipelining", r.pipelining.to_string()),
            ("bdat", r.bdat.to_string()),
            ("per_connection", r.per_connection.to_string()),
            ("mode", r.mode.clone()),
        ]
    };
    for ((field, x), (_, y)) in shape(a).into_iter().zip(shape(b)) {
        if x != y {
            return Err(format!(
                "{a_name} and {b_name} measured different loads ({field} {x} vs {y}); \
                 merge only results of one load split over processes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Step;
    use std::time::Duration;

    /// A report as `send` would write it, with these end-of-data latencies.
    fn report(target: &str, end_of_data_us: &[u64], elapsed_s: f64) -> Report {
        let mut latencies = Latencies::default();
        for &us in end_of_data_us {
            latencies.record(Step::EndOfData, Duration::from_micros(us));
            latencies.record(Step::Message, Duration::from_micros(us + 100));
        }
        let ok = end_of_data_us.len() as u64;
        let mut report = Report {
            target: target.into(),
            connections: 10,
            cores: 1,
            size: "1k".into(),
            recipients: 1,
            mode: "closed-loop".into(),
            elapsed_s,
            messages_attempted: ok + 1,
            messages_ok: ok,
            messages_failed: 1,
            bytes_ok: ok * 1024,
            msgs_per_s: ok as f64 / elapsed_s,
            mb_per_s: (ok * 1024) as f64 / 1e6 / elapsed_s,
            loadgen_cpu_s: 0.5,
            ..Report::default()
        };
        report.errors.insert("MAIL 451".into(), 1);
        report.errors_by_code.insert("451".into(), 1);
        report.fill_latencies(&latencies);
        report
    }

    #[test]
    fn percentiles_come_from_the_summed_histograms_not_an_average() {
        // A: 99 fast messages. B: one fast and 9 slow ones. Averaging the
        // two p99s would say ~50 ms; in the 109 messages together the p99 is
        // one of B's slow ones and the p50 one of A's fast ones.
        let a = report("127.0.0.1:25", &[100; 99], 2.0);
        let mut slow = vec![100_000; 9];
        slow.push(100);
        let b = report("127.0.0.1:25", &slow, 2.0);
        let merged = merge(&[("a.json".into(), a), ("b.json".into(), b)])
            .unwrap()
            .report;
        let eod = &merged.latency_us["end_of_data"];
        assert_eq!(eod.count, 109);
        assert_eq!(eod.p50, 100);
        assert!((99_900..=100_100).contains(&eod.p99), "{eod:?}");
        assert!((99_900..=100_100).contains(&eod.max), "{eod:?}");
        assert_eq!(merged.latency_us["message"].count, 109);
        let decoded = Latencies::from_report(&merged).unwrap();
        assert_eq!(decoded.get(Step::EndOfData).len(), 109);
    }

    #[test]
    fn counters_and_rates_add_up_and_errors_merge_by_key() {
        let a = report("10.0.0.1:25", &[100; 40], 2.0);
        let b = report("10.0.0.2:25", &[100; 60], 4.0);
        let (a_rate, b_rate) = (a.msgs_per_s, b.msgs_per_s);
        let merged = merge(&[("a.json".into(), a), ("b.json".into(), b)]).unwrap();
        assert_eq!(merged.merged_from, ["a.json", "b.json"]);
        let r = &merged.report;
        assert_eq!(r.messages_ok, 100);
        assert_eq!(r.messages_failed, 2);
        assert_eq!(r.messages_attempted, 102);
        assert_eq!(r.bytes_ok, 100 * 1024);
        assert_eq!(r.connections, 20);
        assert_eq!(r.cores, 2);
        assert_eq!(r.elapsed_s, 4.0);
        assert_eq!(r.msgs_per_s, a_rate + b_rate);
        assert_eq!(r.errors["MAIL 451"], 2);
        assert_eq!(r.errors_by_code["451"], 2);
        assert_eq!(r.target, "10.0.0.1:25,10.0.0.2:25");
        assert!((r.loadgen_cpu_us_per_msg - 1e6 / 102.0).abs() < 1e-6);
    }

    #[test]
    fn the_merged_json_reads_back_as_a_report_and_merges_again() {
        let a = report("127.0.0.1:25", &[100; 5], 1.0);
        let b = report("127.0.0.1:25", &[200; 5], 1.0);
        let merged = merge(&[("a".into(), a.clone()), ("b".into(), b)]).unwrap();
        let json = serde_json::to_string(&merged).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["merged_from"][1], "b");
        assert_eq!(value["messages_ok"], 10);
        let back: Report = serde_json::from_str(&json).unwrap();
        let again = merge(&[("ab".into(), back), ("a".into(), a)]).unwrap();
        assert_eq!(again.report.latency_us["end_of_data"].count, 15);
    }

    #[test]
    fn different_loads_are_refused() {
        let a = report("127.0.0.1:25", &[100], 1.0);
        let mut b = report("127.0.0.1:25", &[100], 1.0);
        b.size = "10k".into();
        let error = merge(&[("a.json".into(), a.clone()), ("b.json".into(), b)])
            .err()
            .unwrap();
        assert!(error.contains("size 1k vs 10k"), "{error}");
        let mut c = report("127.0.0.1:25", &[100], 1.0);
        c.histograms.clear();
        let error = merge(&[("a.json".into(), a), ("c.json".into(), c)])
            .err()
            .unwrap();
        assert!(
            error.contains("c.json carries no latency histograms"),
            "{error}"
        );
        assert!(merge(&[]).is_err());
    }
}
