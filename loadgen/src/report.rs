//! The `send` report: latency histograms per SMTP step, counters, and their
//! rendering as a text table and as JSON (the same fields, plus each step's
//! whole histogram so that results of several processes can be merged
//! exactly rather than averaged).

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// SMTP steps whose latency is recorded. With `--pipelining`, MAIL/RCPT/DATA
/// are measured from the write of the whole group to each reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// TCP connect plus the 220 greeting.
    Connect,
    Ehlo,
    Mail,
    Rcpt,
    /// DATA command to its 354 (absent with BDAT).
    DataCommand,
    /// Last body byte sent (DATA body or last BDAT chunk) to the final reply.
    EndOfData,
    /// Whole transaction, from its intended start (open loop: the scheduled
    /// time, so stalls are not hidden — coordinated omission) to the final reply.
    Message,
}

pub const STEPS: [Step; 7] = [
    Step::Connect,
    Step::Ehlo,
    Step::Mail,
    Step::Rcpt,
    Step::DataCommand,
    Step::EndOfData,
    Step::Message,
];

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Ehlo => "ehlo",
            Step::Mail => "mail",
            Step::Rcpt => "rcpt",
            Step::DataCommand => "data_command",
            Step::EndOfData => "end_of_data",
            Step::Message => "message",
        }
    }

    pub fn from_name(name: &str) -> Option<Step> {
        STEPS.into_iter().find(|step| step.name() == name)
    }
}

/// Recorded latencies are clamped to 1 µs .. 10 min.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 600_000_000;

/// One histogram per step, in microseconds, 1 µs .. 10 min, 3 significant digits.
#[derive(Clone)]
pub struct Latencies(Vec<Histogram<u64>>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(
            STEPS
                .iter()
                .map(|_| {
                    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, 3).expect("histogram bounds")
                })
                .collect(),
        )
    }
}

impl Latencies {
    pub fn record(&mut self, step: Step, elapsed: std::time::Duration) {
        let us = (elapsed.as_micros() as u64).clamp(LOWEST_US, HIGHEST_US);
        let _ = self.0[step as usize].record(us);
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.add(theirs);
        }
    }

    /// The histograms a report carries (`Report::histograms`), decoded.
    pub fn from_report(report: &Report) -> Result<Latencies, String> {
        let mut latencies = Latencies::default();
        for (name, encoded) in &report.histograms {
            let step = Step::from_name(name)
                .ok_or_else(|| format!("unknown latency step {name:?} in histograms"))?;
            let decoded = decode_histogram(encoded)
                .map_err(|e| format!("histogram {name:?} does not decode: {e}"))?;
            latencies.0[step as usize]
                .add(&decoded)
                .map_err(|e| format!("histogram {name:?} is out of range: {e:?}"))?;
        }
        Ok(latencies)
    }

    pub fn get(&self, step: Step) -> &Histogram<u64> {
        &self.0[step as usize]
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Everything `send` reports; `--json` serializes exactly this, and `merge`
/// reads it back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub connections: usize,
    pub cores: usize,
    pub size: String,
    pub recipients: u32,
    pub pipelining: bool,
    pub bdat: bool,
    pub per_connection: bool,
    /// "closed-loop" or "open-loop".
    pub mode: String,
    pub target_rate: Option<f64>,
    pub elapsed_s: f64,
    pub messages_attempted: u64,
    pub messages_ok: u64,
    pub messages_failed: u64,
    /// Content bytes of accepted messages.
    pub bytes_ok: u64,
    pub msgs_per_s: f64,
    /// Megabytes (10^6 bytes) of accepted content per second.
    pub mb_per_s: f64,
    pub connections_opened: u64,
    pub connections_per_s: f64,
    /// Failures keyed by step and reply code ("MAIL 451") or I/O error
    /// ("io end_of_data UnexpectedEof"). One entry per failed message, plus
    /// refused recipients of messages that were still delivered.
    pub errors: BTreeMap<String, u64>,
    /// The same failures keyed by reply code alone ("451"); I/O errors as "io".
    pub errors_by_code: BTreeMap<String, u64>,
    /// Latency percentiles in microseconds per step.
    pub latency_us: BTreeMap<String, Percentiles>,
    /// Each step's whole latency histogram (µs): HdrHistogram's V2 format with
    /// deflate, base64. Any HdrHistogram library reads it; `merge` adds them.
    #[serde(default)]
    pub histograms: BTreeMap<String, String>,
    /// CPU time (user+system) this loadgen process used during the run.
    pub loadgen_cpu_s: f64,
    pub loadgen_cpu_us_per_msg: f64,
}

impl Report {
    /// Percentiles and serialized histograms of every step that has samples.
    pub fn fill_latencies(&mut self, latencies: &Latencies) {
        self.latency_us.clear();
        self.histograms.clear();
        for step in STEPS {
            let h = latencies.get(step);
            if !h.is_empty() {
                self.latency_us
                    .insert(step.name().to_string(), Percentiles::of(h));
                self.histograms
                    .insert(step.name().to_string(), encode_histogram(h));
            }
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "target {}  connections {}  cores {}  size {}  recipients {}  {}{}{}{}",
            self.target,
            self.connections,
            self.cores,
            self.size,
            self.recipients,
            self.mode,
            if self.pipelining { "  pipelining" } else { "" },
            if self.bdat { "  bdat" } else { "" },
            if self.per_connection {
                "  one message per connection"
            } else {
                ""
            },
        );
        let _ = writeln!(
            out,
            "messages ok {}  failed {}  in {:.2}s",
            self.messages_ok, self.messages_failed, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "throughput {:.0} msgs/s  {:.2} MB/s  {:.1} connections/s",
            self.msgs_per_s, self.mb_per_s, self.connections_per_s
        );
        let _ = writeln!(
            out,
            "loadgen cpu {:.2}s  ({:.1} us/msg)",
            self.loadgen_cpu_s, self.loadgen_cpu_us_per_msg
        );
        if !self.errors.is_empty() {
            let _ = writeln!(out, "errors:");
            for (key, count) in &self.errors {
                let _ = writeln!(out, "  {key:<40} {count}");
            }
        }
        let _ = writeln!(
            out,
            "latency (us)   {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for step in STEPS {
            if let Some(p) = self.latency_us.get(step.name()) {
                let _ = writeln!(
                    out,
                    "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    step.name(),
                    p.count,
                    p.p50,
                    p.p90,
                    p.p99,
                    p.p99_9,
                    p.max
                );
            }
        }
        out
    }
}

fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("a histogram serializes into memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_histogram(encoded: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| e.to_string())?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histograms_survive_the_json_round_trip() {
        let mut latencies = Latencies::default();
        for us in [3, 50, 700, 9_000, 120_000] {
            latencies.record(Step::EndOfData, Duration::from_micros(us));
        }
        latencies.record(Step::Connect, Duration::from_micros(42));
        let mut report = Report::default();
        report.fill_latencies(&latencies);
        assert_eq!(
            report.histograms.keys().collect::<Vec<_>>(),
            ["connect", "end_of_data"]
        );
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        let decoded = Latencies::from_report(&back).unwrap();
        for step in STEPS {
            assert_eq!(decoded.get(step), latencies.get(step), "{}", step.name());
        }
    }

    #[test]
    fn a_corrupt_histogram_is_an_error_naming_its_step() {
        let mut report = Report::default();
        report
            .histograms
            .insert("end_of_data".into(), "bm90IGEgaGlzdG9ncmFt".into());
        let error = Latencies::from_report(&report).err().unwrap();
        assert!(error.contains("end_of_data"), "{error}");
        report.histograms.clear();
        report.histograms.insert("teleport".into(), String::new());
        assert!(Latencies::from_report(&report).is_err());
    }
}
