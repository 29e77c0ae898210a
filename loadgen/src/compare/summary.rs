//! What `compare` reports: every run, each path's figures as median and
//! min..max over rounds, the cost of inspection, and the open-loop sweep
//! with the "cores needed for N msgs/s" it implies. Pure data and
//! arithmetic; rendering is in `render`.

use super::procs::Facts;
use crate::report::{Latencies, Percentiles, Step};
use serde::Serialize;
use std::collections::BTreeMap;

/// One measured run of one path.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// From 1, within its series (the closed-loop rounds, or the sweep's).
    pub round: usize,
    pub path: String,
    /// Open loop at this rate (the sweep); `None`: closed loop.
    pub offered_msgs_per_s: Option<f64>,
    pub elapsed_s: f64,
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    /// CPU seconds the relay process used during the run (none for direct).
    pub relay_cpu_s: Option<f64>,
    /// Relay CPU seconds per second: how many cores it kept busy.
    pub relay_cores: Option<f64>,
    pub relay_cpu_us_per_msg: Option<f64>,
    /// The load generator's and the sink's own CPU, to show neither was the
    /// bottleneck.
    pub loadgen_cpu_s: f64,
    pub sink_cpu_s: f64,
    /// Percentiles (µs) of each SMTP step in this run.
    pub latency_us: BTreeMap<String, Percentiles>,
    pub errors: BTreeMap<String, u64>,
}

impl RunResult {
    fn message_latency(&self) -> Option<&Percentiles> {
        self.latency_us.get(Step::Message.name())
    }
}

/// A figure measured once per round: its median and its extremes.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` when no value is finite.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }

    /// For figures every run has.
    fn of_all(values: impl IntoIterator<Item = f64>) -> Spread {
        Spread::of(values).unwrap_or(Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        })
    }
}

/// One point of a latency percentile curve.
#[derive(Clone, Debug, Serialize)]
pub struct PercentilePoint {
    /// "p50", "p90", "p99", "p99.9", "max".
    pub label: &'static str,
    /// From the histograms of all rounds added together.
    pub all_rounds_us: u64,
    /// The lowest and highest of the per-round values.
    pub min_us: u64,
    pub max_us: u64,
}

pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

fn pick(p: &Percentiles, label: &str) -> u64 {
    match label {
        "p50" => p.p50,
        "p90" => p.p90,
        "p99" => p.p99,
        "p99.9" => p.p99_9,
        _ => p.max,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PathSummary {
    pub path: String,
    /// False for the direct-to-sink baseline: no relay process to charge.
    pub has_relay: bool,
    pub rounds: usize,
    pub messages_ok: u64,
    pub messages_failed: u64,
    pub msgs_per_s: Spread,
    pub mb_per_s: Spread,
    pub relay_cores: Option<Spread>,
    pub relay_cpu_us_per_msg: Option<Spread>,
    /// msgs/s ÷ relay cores kept busy: what one fully busy core relays.
    pub msgs_per_s_per_busy_core: Option<Spread>,
    pub loadgen_cpu_us_per_msg: Spread,
    pub sink_cpu_us_per_msg: Spread,
    pub end_of_data_p99_us: Spread,
    /// Whole-transaction latency (MAIL to the final reply), per percentile.
    pub message_latency: Vec<PercentilePoint>,
}

impl PathSummary {
    /// `runs`: this path's closed-loop runs; `all_rounds`: their histograms added.
    pub fn of(path: &str, has_relay: bool, runs: &[&RunResult], all_rounds: &Latencies) -> Self {
        let per_msg = |cpu: f64, r: &RunResult| cpu * 1e6 / r.messages_ok as f64;
        let delivered: Vec<&&RunResult> = runs.iter().filter(|r| r.messages_ok > 0).collect();
        let merged = Percentiles::of(all_rounds.get(Step::Message));
        let message_latency = PERCENTILES
            .iter()
            .map(|&(label, _)| {
                let per_round: Vec<u64> = runs
                    .iter()
                    .filter_map(|r| r.message_latency())
                    .map(|p| pick(p, label))
                    .collect();
                PercentilePoint {
                    label,
                    all_rounds_us: pick(&merged, label),
                    min_us: per_round.iter().copied().min().unwrap_or(0),
                    max_us: per_round.iter().copied().max().unwrap_or(0),
                }
            })
            .collect();
        PathSummary {
            path: path.to_string(),
            has_relay,
            rounds: runs.len(),
            messages_ok: runs.iter().map(|r| r.messages_ok).sum(),
            messages_failed: runs.iter().map(|r| r.messages_failed).sum(),
            msgs_per_s: Spread::of_all(runs.iter().map(|r| r.msgs_per_s)),
            mb_per_s: Spread::of_all(runs.iter().map(|r| r.mb_per_s)),
            relay_cores: Spread::of(runs.iter().filter_map(|r| r.relay_cores)),
            relay_cpu_us_per_msg: Spread::of(runs.iter().filter_map(|r| r.relay_cpu_us_per_msg)),
            msgs_per_s_per_busy_core: Spread::of(
                runs.iter()
                    .filter_map(|r| Some(r.messages_ok as f64 / r.relay_cpu_s?)),
            ),
            loadgen_cpu_us_per_msg: Spread::of_all(
                delivered.iter().map(|r| per_msg(r.loadgen_cpu_s, r)),
            ),
            sink_cpu_us_per_msg: Spread::of_all(delivered.iter().map(|r| per_msg(r.sink_cpu_s, r))),
            end_of_data_p99_us: Spread::of_all(
                runs.iter()
                    .filter_map(|r| Some(r.latency_us.get(Step::EndOfData.name())?.p99 as f64)),
            ),
            message_latency,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CostOfInspection {
    /// inspect msgs/s ÷ exempt msgs/s, per round.
    pub throughput_ratio: Option<Spread>,
    /// inspect relay CPU per message ÷ exempt relay CPU per message, per round.
    pub cpu_per_message_ratio: Option<Spread>,
}

/// The closed-loop runs of `a` and `b` from the same round, paired.
fn same_round<'r>(runs: &'r [RunResult], a: &str, b: &str) -> Vec<(&'r RunResult, &'r RunResult)> {
    runs.iter()
        .filter(|x| x.path == a && x.offered_msgs_per_s.is_none())
        .filter_map(|x| {
            let y = runs
                .iter()
                .find(|y| y.path == b && y.round == x.round && y.offered_msgs_per_s.is_none())?;
            Some((x, y))
        })
        .collect()
}

impl CostOfInspection {
    /// Ratios of runs of the same round (closed loop), `inspect` over `exempt`.
    pub fn of(runs: &[RunResult], inspect: &str, exempt: &str) -> Self {
        let pairs = same_round(runs, inspect, exempt);
        CostOfInspection {
            throughput_ratio: Spread::of(pairs.iter().map(|(a, b)| a.msgs_per_s / b.msgs_per_s)),
            cpu_per_message_ratio: Spread::of(
                pairs
                    .iter()
                    .filter_map(|(a, b)| Some(a.relay_cpu_us_per_msg? / b.relay_cpu_us_per_msg?)),
            ),
        }
    }
}

/// Relay CPU per message of `a` minus that of `b`, per round (closed loop).
pub fn cpu_per_message_difference(runs: &[RunResult], a: &str, b: &str) -> Option<Spread> {
    Spread::of(
        same_round(runs, a, b)
            .iter()
            .filter_map(|(x, y)| Some(x.relay_cpu_us_per_msg? - y.relay_cpu_us_per_msg?)),
    )
}

/// What the STARTTLS sink received against what the TLS rows' senders
/// counted as accepted, compared as multisets of SHA-256 digests.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Every accepted message arrived, unaltered, and nothing else did.
    pub digests_match: bool,
}

impl Delivery {
    /// `sent` and `received`: one hex digest per line, any order.
    pub fn of(sent: &str, received: &str) -> Delivery {
        fn sorted(text: &str) -> Vec<&str> {
            let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            lines.sort_unstable();
            lines
        }
        let (sent, received) = (sorted(sent), sorted(received));
        Delivery {
            messages_sent: sent.len() as u64,
            messages_received: received.len() as u64,
            digests_match: sent == received,
        }
    }
}

/// The TLS rows: smtpgate terminating STARTTLS and inspecting, against
/// smtpgate relaying it blind, under the same STARTTLS client load.
#[derive(Clone, Debug, Serialize)]
pub struct TlsCost {
    /// TLS inspected over TLS exempt, per round: the cost of inspecting
    /// encrypted mail.
    pub inspected_over_exempt: CostOfInspection,
    /// TLS inspected over plaintext inspected, per round: what encryption
    /// adds to inspection.
    pub tls_over_plaintext: CostOfInspection,
    /// Length of each one-message-per-connection run, when that series ran.
    pub per_connection_duration_s: Option<f64>,
    /// One message per connection (a handshake each): plaintext inspected,
    /// TLS inspected, TLS exempt. Empty when the main load already is one
    /// message per connection; the figures below then come from its rows.
    pub per_connection: Vec<PathSummary>,
    /// Per round, one message per connection: TLS inspected's relay CPU per
    /// message minus plaintext inspected's. What TLS costs the relay per
    /// connection: the handshakes with the client and with the upstream,
    /// STARTTLS and the second EHLO, and one message's encryption.
    pub handshake_cpu_us_per_connection: Option<Spread>,
    /// TLS sessions smtpgate established during the whole run, by side.
    pub sessions_established: BTreeMap<String, u64>,
    pub delivery: Delivery,
}

/// One rate of the open-loop sweep for one path, over its rounds.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    pub path: String,
    /// `None`: the closed-loop runs, i.e. this path's saturation.
    pub offered_msgs_per_s: Option<f64>,
    pub achieved_msgs_per_s: Spread,
    pub relay_cores: Spread,
    pub relay_cpu_us_per_msg: Spread,
    pub message_p99_us: Spread,
    pub messages_failed: u64,
}

impl SweepPoint {
    pub fn of(path: &str, offered: Option<f64>, runs: &[&RunResult]) -> Option<SweepPoint> {
        Some(SweepPoint {
            path: path.to_string(),
            offered_msgs_per_s: offered,
            achieved_msgs_per_s: Spread::of(runs.iter().map(|r| r.msgs_per_s))?,
            relay_cores: Spread::of(runs.iter().filter_map(|r| r.relay_cores))?,
            relay_cpu_us_per_msg: Spread::of(runs.iter().filter_map(|r| r.relay_cpu_us_per_msg))?,
            message_p99_us: Spread::of_all(
                runs.iter()
                    .filter_map(|r| Some(r.message_latency()?.p99 as f64)),
            ),
            messages_failed: runs.iter().map(|r| r.messages_failed).sum(),
        })
    }
}

/// How a "cores needed" figure was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// Between two measured rates: read off the measured curve.
    Interpolated,
    /// Below the lowest measured rate: the cores used there, an upper bound.
    AtMost,
    /// Above the highest measured rate (saturation): the rate times the CPU
    /// per message measured there, the lowest of the curve.
    Extrapolated,
}

/// Cores one path needs for a message rate.
#[derive(Clone, Debug, Serialize)]
pub struct CoresNeeded {
    pub path: String,
    pub msgs_per_s: f64,
    /// Read off the median curve, and off the curves of the per-point
    /// minimum and maximum.
    pub cores: Spread,
    pub basis: Basis,
}

impl CoresNeeded {
    /// `points`: one path's sweep points (any order).
    pub fn of(points: &[&SweepPoint], msgs_per_s: f64) -> Option<CoresNeeded> {
        let mut points = points.to_vec();
        points.sort_by(|a, b| {
            a.achieved_msgs_per_s
                .median
                .total_cmp(&b.achieved_msgs_per_s.median)
        });
        let first = points.first()?;
        let last = points.last()?;
        let x = |p: &SweepPoint| p.achieved_msgs_per_s.median;
        let curve = |y: fn(&Spread) -> f64| -> f64 {
            if msgs_per_s <= x(first) {
                return y(&first.relay_cores);
            }
            if msgs_per_s >= x(last) {
                return msgs_per_s * y(&last.relay_cores) / x(last);
            }
            let i = points
                .windows(2)
                .position(|w| msgs_per_s <= x(w[1]))
                .expect("inside the measured range");
            let (a, b) = (points[i], points[i + 1]);
            let t = (msgs_per_s - x(a)) / (x(b) - x(a));
            y(&a.relay_cores) + t * (y(&b.relay_cores) - y(&a.relay_cores))
        };
        let basis = if msgs_per_s <= x(first) {
            Basis::AtMost
        } else if msgs_per_s > x(last) {
            Basis::Extrapolated
        } else {
            Basis::Interpolated
        };
        Some(CoresNeeded {
            path: first.path.clone(),
            msgs_per_s,
            cores: Spread {
                median: curve(|s| s.median),
                min: curve(|s| s.min),
                max: curve(|s| s.max),
            },
            basis,
        })
    }
}

/// Round targets for "cores needed": 1-2-5 steps across the measured
/// range, then decades up to a hundred times the highest measured rate.
pub fn default_targets(points: &[SweepPoint]) -> Vec<f64> {
    let rates = || points.iter().map(|p| p.achieved_msgs_per_s.median);
    let (Some(low), Some(high)) = (
        rates().filter(|r| *r > 0.0).reduce(f64::min),
        rates().reduce(f64::max),
    ) else {
        return Vec::new();
    };
    let mut targets = Vec::new();
    for k in low.log10().floor() as i32..=(high * 100.0).log10().floor() as i32 {
        let decade = 10f64.powi(k);
        for step in [1.0, 2.0, 5.0] {
            let target = step * decade;
            let measured = (low..=high).contains(&target);
            if measured || (target > high && step == 1.0) {
                targets.push(target);
            }
        }
    }
    targets
}

#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    pub duration_per_run_s: f64,
    pub rounds: usize,
    /// Offered rates, msgs/s, in the order given.
    pub rates: Vec<f64>,
    /// Per path: each offered rate, then the closed-loop saturation point.
    pub points: Vec<SweepPoint>,
    pub cores_needed: Vec<CoresNeeded>,
}

/// The load every run used.
#[derive(Clone, Debug, Serialize)]
pub struct Load {
    pub duration_per_run_s: f64,
    pub rounds: usize,
    pub connections: usize,
    pub size: String,
    pub recipients: u32,
    pub pipelining: bool,
    pub per_connection: bool,
    /// The TLS rows' clients do STARTTLS right after EHLO, as MTAs do.
    pub tls_rows: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub facts: Facts,
    pub load: Load,
    /// The smtpgate configuration the runs used, verbatim.
    pub smtpgate_config: String,
    pub haproxy_config: Option<String>,
    pub paths: Vec<PathSummary>,
    pub cost_of_inspection: CostOfInspection,
    /// `None` with `--tls off`.
    pub tls: Option<TlsCost>,
    pub sweep: Option<Sweep>,
    pub runs: Vec<RunResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(v: f64) -> Spread {
        Spread {
            median: v,
            min: v * 0.9,
            max: v * 1.1,
        }
    }

    fn point(msgs: f64, cores: f64) -> SweepPoint {
        SweepPoint {
            path: "inspect".into(),
            offered_msgs_per_s: Some(msgs),
            achieved_msgs_per_s: spread(msgs),
            relay_cores: spread(cores),
            relay_cpu_us_per_msg: spread(cores * 1e6 / msgs),
            message_p99_us: spread(1000.0),
            messages_failed: 0,
        }
    }

    fn run(path: &str, round: usize, msgs_per_s: f64, cpu_us_per_msg: f64) -> RunResult {
        RunResult {
            round,
            path: path.into(),
            offered_msgs_per_s: None,
            elapsed_s: 1.0,
            messages_ok: msgs_per_s as u64,
            messages_failed: 0,
            msgs_per_s,
            mb_per_s: 1.0,
            relay_cpu_s: Some(cpu_us_per_msg * msgs_per_s / 1e6),
            relay_cores: Some(cpu_us_per_msg * msgs_per_s / 1e6),
            relay_cpu_us_per_msg: Some(cpu_us_per_msg),
            loadgen_cpu_s: 0.1,
            sink_cpu_s: 0.1,
            latency_us: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn ratios_and_differences_pair_runs_of_the_same_round() {
        let runs = [
            run("tls", 1, 500.0, 300.0),
            run("plain", 1, 1000.0, 100.0),
            run("plain", 2, 800.0, 120.0),
            run("tls", 2, 400.0, 400.0),
            // An open-loop run is not paired with closed-loop ones.
            RunResult {
                offered_msgs_per_s: Some(100.0),
                ..run("tls", 1, 100.0, 900.0)
            },
        ];
        let cost = CostOfInspection::of(&runs, "tls", "plain");
        let t = cost.throughput_ratio.unwrap();
        assert_eq!((t.min, t.max), (0.5, 0.5));
        let c = cost.cpu_per_message_ratio.unwrap();
        assert!((c.min - 3.0).abs() < 1e-9 && (c.max - 400.0 / 120.0).abs() < 1e-9);
        let d = cpu_per_message_difference(&runs, "tls", "plain").unwrap();
        assert!(
            (d.min - 200.0).abs() < 1e-9 && (d.max - 280.0).abs() < 1e-9,
            "{d:?}"
        );
        assert!(cpu_per_message_difference(&runs, "tls", "none").is_none());
    }

    #[test]
    fn delivery_compares_digests_as_multisets() {
        let ok = Delivery::of("b\na\na\n", "a\nb\na\n");
        assert!(ok.digests_match);
        assert_eq!((ok.messages_sent, ok.messages_received), (3, 3));
        assert!(!Delivery::of("a\na\n", "a\nb\n").digests_match);
        assert!(!Delivery::of("a\n", "a\na\n").digests_match);
    }

    #[test]
    fn spread_is_median_and_extremes_of_the_finite_values() {
        let s = Spread::of([0.9, f64::NAN, 0.8, 1.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (0.9, 0.8, 1.0));
        assert_eq!(Spread::of([1.0, 3.0]).unwrap().median, 2.0);
        assert!(Spread::of([f64::NAN]).is_none());
    }

    #[test]
    fn cores_needed_follows_the_measured_curve_not_a_line_through_saturation() {
        // 400 µs per message at 250 msgs/s, 116 µs at saturation (2000 msgs/s):
        // a line through saturation would say 0.029 cores for 250 msgs/s.
        let points = [point(250.0, 0.1), point(1000.0, 0.2), point(2000.0, 0.232)];
        let refs: Vec<&SweepPoint> = points.iter().collect();
        let at = |n| CoresNeeded::of(&refs, n).unwrap();
        assert_eq!(at(250.0).cores.median, 0.1);
        assert_eq!(at(250.0).basis, Basis::AtMost);
        let mid = at(625.0);
        assert_eq!(mid.basis, Basis::Interpolated);
        assert!((mid.cores.median - 0.15).abs() < 1e-9, "{mid:?}");
        assert!((mid.cores.min - 0.135).abs() < 1e-9 && (mid.cores.max - 0.165).abs() < 1e-9);
        let beyond = at(20_000.0);
        assert_eq!(beyond.basis, Basis::Extrapolated);
        assert!((beyond.cores.median - 2.32).abs() < 1e-9, "{beyond:?}");
        assert_eq!(at(100.0).basis, Basis::AtMost);
        assert!(CoresNeeded::of(&[], 1.0).is_none());
    }

    #[test]
    fn default_targets_step_through_the_measured_range_then_by_decades() {
        let points = [point(480.0, 0.1), point(2400.0, 0.3)];
        assert_eq!(default_targets(&points), [500.0, 1e3, 2e3, 1e4, 1e5]);
        assert!(default_targets(&[]).is_empty());
    }

    #[test]
    fn inspection_cost_pairs_runs_of_the_same_round() {
        let run = |path: &str, round, msgs_per_s, cpu: f64| RunResult {
            round,
            path: path.into(),
            offered_msgs_per_s: None,
            elapsed_s: 1.0,
            messages_ok: msgs_per_s as u64,
            messages_failed: 0,
            msgs_per_s,
            mb_per_s: 1.0,
            relay_cpu_s: Some(cpu),
            relay_cores: Some(cpu),
            relay_cpu_us_per_msg: Some(cpu * 1e6 / msgs_per_s),
            loadgen_cpu_s: 0.1,
            sink_cpu_s: 0.1,
            latency_us: BTreeMap::new(),
            errors: BTreeMap::new(),
        };
        let runs = [
            run("i", 1, 800.0, 0.8),
            run("e", 1, 1000.0, 0.5),
            run("e", 2, 1000.0, 0.5),
            run("i", 2, 900.0, 0.9),
        ];
        let cost = CostOfInspection::of(&runs, "i", "e");
        let t = cost.throughput_ratio.unwrap();
        assert_eq!((t.min, t.max), (0.8, 0.9));
        let c = cost.cpu_per_message_ratio.unwrap();
        assert!(
            (c.min - 2.0).abs() < 1e-9 && (c.max - 2.0).abs() < 1e-9,
            "{c:?}"
        );
        let all_rounds = Latencies::default();
        let mine: Vec<&RunResult> = runs.iter().filter(|r| r.path == "i").collect();
        let summary = PathSummary::of("i", true, &mine, &all_rounds);
        let per_core = summary.msgs_per_s_per_busy_core.unwrap();
        assert_eq!((per_core.min, per_core.max), (1000.0, 1000.0));
        assert_eq!(summary.msgs_per_s.median, 850.0);
    }
}
