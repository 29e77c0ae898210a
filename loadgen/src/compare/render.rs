//! `compare`'s output: the terminal table and the self-contained HTML page
//! (inline SVG charts, no scripts, no external files). Every figure is shown
//! as its median with the min..max over rounds; charts draw that range as
//! whiskers. Colours tell paths apart and carry no judgement.

use super::summary::{
    Basis, CompareReport, CostOfInspection, PathSummary, Spread, SweepPoint, TlsCost, PERCENTILES,
};
use std::fmt::Write as _;

/// One neutral colour per path, in the order paths are measured.
const PATH_COLOURS: [&str; 6] = [
    "#2f5d8a", "#8fa3b8", "#4f7f6e", "#9cbfae", "#7b6c99", "#a3a3a3",
];
const INK: &str = "#222";
const GRID: &str = "#e3e3e3";
const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\"";

fn colour(index: usize) -> &'static str {
    PATH_COLOURS[index % PATH_COLOURS.len()]
}

/// 1234567 -> "1 234 567" (groups split by a narrow no-break space, so a
/// table cell never wraps inside a number), with `decimals` digits.
pub fn number(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let text = format!("{:.*}", decimals, x.abs());
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push('\u{202f}');
        }
        grouped.push(c);
    }
    let sign = if x < 0.0 { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// Digits that suit the magnitude: 1234, 12.3, 1.23, 0.123.
pub fn auto(x: f64) -> String {
    let a = x.abs();
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    number(x, decimals)
}

/// An axis label: like [`auto`], without trailing zeros ("0.5", not "0.500").
fn tick_label(x: f64) -> String {
    let text = auto(x);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn spread_text(s: &Spread, format: fn(f64) -> String) -> String {
    format!(
        "{} ({}..{})",
        format(s.median),
        format(s.min),
        format(s.max)
    )
}

fn ms(us: f64) -> String {
    auto(us / 1000.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt_spread(s: &Option<Spread>, format: fn(f64) -> String) -> String {
    s.as_ref().map_or("-".into(), |s| spread_text(s, format))
}

/// A table cell's content: the median, the range below it in grey.
fn cell(s: &Spread, format: fn(f64) -> String) -> String {
    format!(
        "{}<br><span class=\"range\">{}..{}</span>",
        format(s.median),
        format(s.min),
        format(s.max)
    )
}

fn opt_cell(s: &Option<Spread>, format: fn(f64) -> String) -> String {
    s.as_ref().map_or("-".into(), |s| cell(s, format))
}

/// The terminal summary.
pub fn table(report: &CompareReport) -> String {
    let mut out = String::new();
    let f = &report.facts;
    let load = &report.load;
    let _ = writeln!(
        out,
        "\n{}, {} CPUs, kernel {}; {} (commit {}), --cores {}, placement {:?}",
        f.cpu_model,
        f.cpus,
        f.kernel,
        f.smtpgate_version,
        f.smtpgate_commit,
        f.relay_cores,
        f.placement
    );
    let _ = writeln!(
        out,
        "{} rounds x {}s, {} connections, size {}{}{}, closed loop; median (min..max over rounds)\n",
        load.rounds,
        load.duration_per_run_s,
        load.connections,
        load.size,
        if load.pipelining { ", pipelining" } else { "" },
        if load.per_connection {
            ", one message per connection"
        } else {
            ""
        }
    );
    for p in &report.paths {
        let _ = writeln!(out, "{}", p.path);
        let _ = writeln!(
            out,
            "  msgs/s                 {}",
            spread_text(&p.msgs_per_s, auto)
        );
        let _ = writeln!(
            out,
            "  MB/s                   {}",
            spread_text(&p.mb_per_s, auto)
        );
        let _ = writeln!(
            out,
            "  relay CPU µs/msg       {}",
            opt_spread(&p.relay_cpu_us_per_msg, auto)
        );
        let _ = writeln!(
            out,
            "  msgs/s per busy core   {}",
            opt_spread(&p.msgs_per_s_per_busy_core, auto)
        );
        let _ = writeln!(
            out,
            "  p99 end of data ms     {}",
            spread_text(&p.end_of_data_p99_us, ms)
        );
        let _ = writeln!(
            out,
            "  loadgen / sink µs/msg  {} / {}{}",
            auto(p.loadgen_cpu_us_per_msg.median),
            auto(p.sink_cpu_us_per_msg.median),
            if p.messages_failed > 0 {
                format!("   FAILED {}", p.messages_failed)
            } else {
                String::new()
            }
        );
    }
    ratio_lines(
        &mut out,
        "cost of inspection (inspect / exempt, per round):",
        &report.cost_of_inspection,
    );
    if let Some(tls) = &report.tls {
        tls_table(&mut out, tls);
    }
    if let Some(sweep) = &report.sweep {
        let _ = writeln!(
            out,
            "\nopen-loop sweep ({} rounds x {}s): relay cores busy, CPU per message",
            sweep.rounds, sweep.duration_per_run_s
        );
        for point in &sweep.points {
            let _ = writeln!(
                out,
                "  {:<26} {:>14}  achieved {:>8}  cores {}  µs/msg {}",
                point.path,
                point
                    .offered_msgs_per_s
                    .map_or("closed loop".into(), |r| format!("{} msgs/s", auto(r))),
                auto(point.achieved_msgs_per_s.median),
                spread_text(&point.relay_cores, auto),
                auto(point.relay_cpu_us_per_msg.median),
            );
        }
        let _ = writeln!(out, "cores needed (read off the curve above):");
        for need in &sweep.cores_needed {
            let _ = writeln!(
                out,
                "  {:<26} {:>10} msgs/s  {} cores  {}",
                need.path,
                auto(need.msgs_per_s),
                spread_text(&need.cores, auto),
                basis_text(need.basis)
            );
        }
    }
    out
}

fn ratio_lines(out: &mut String, title: &str, cost: &CostOfInspection) {
    let _ = writeln!(out, "\n{title}");
    let _ = writeln!(
        out,
        "  throughput        x{}",
        opt_spread(&cost.throughput_ratio, |x| number(x, 3))
    );
    let _ = writeln!(
        out,
        "  CPU per message   x{}",
        opt_spread(&cost.cpu_per_message_ratio, |x| number(x, 3))
    );
}

/// The TLS rows' ratios, the handshake's CPU and the delivery check.
fn tls_table(out: &mut String, tls: &TlsCost) {
    ratio_lines(
        out,
        "cost of inspecting TLS (TLS inspected / TLS exempt, per round):",
        &tls.inspected_over_exempt,
    );
    ratio_lines(
        out,
        "TLS inspected / plaintext inspected, per round:",
        &tls.tls_over_plaintext,
    );
    if let Some(seconds) = tls.per_connection_duration_s {
        let _ = writeln!(
            out,
            "\none message per connection ({} rounds x {seconds}s): msgs/s, relay CPU µs per connection",
            tls.per_connection.first().map_or(0, |p| p.rounds)
        );
    }
    for p in &tls.per_connection {
        let _ = writeln!(
            out,
            "  {:<42} {:>8}  {}{}",
            p.path,
            auto(p.msgs_per_s.median),
            opt_spread(&p.relay_cpu_us_per_msg, auto),
            if p.messages_failed > 0 {
                format!("   FAILED {}", p.messages_failed)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        out,
        "TLS CPU per connection, inspected (TLS minus plaintext, one message per connection): {} µs",
        opt_spread(&tls.handshake_cpu_us_per_connection, auto)
    );
    let sessions: Vec<String> = tls
        .sessions_established
        .iter()
        .map(|(side, n)| format!("{side} {n}"))
        .collect();
    let d = &tls.delivery;
    let _ = writeln!(
        out,
        "TLS sessions smtpgate established: {}; delivery: {} accepted, {} received by the STARTTLS sink, {}",
        if sessions.is_empty() {
            "none reported".to_string()
        } else {
            sessions.join(", ")
        },
        d.messages_sent,
        d.messages_received,
        if d.digests_match {
            "digests match"
        } else {
            "DIGESTS DIFFER"
        }
    );
}

fn basis_text(basis: Basis) -> &'static str {
    match basis {
        Basis::Interpolated => "interpolated between measured rates",
        Basis::AtMost => "at most: below the lowest measured rate",
        Basis::Extrapolated => "extrapolated past saturation at its CPU per message",
    }
}

/// Round gridline steps: 1, 2 or 5 times a power of ten, about five of them.
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let power = 10f64.powi(raw.log10().floor() as i32);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// One bar per path with a min..max whisker. `values`: (path index, label, spread).
fn bar_chart(title: &str, unit: &str, values: &[(usize, String, Spread)]) -> String {
    let (label_w, plot_w, row_h, top) = (190.0, 420.0, 30.0, 34.0);
    let width = label_w + plot_w + 250.0;
    let height = top + row_h * values.len() as f64 + 24.0;
    let max = values.iter().map(|v| v.2.max).fold(0.0, f64::max);
    let grid = ticks(max);
    let scale = plot_w / grid.last().copied().unwrap_or(1.0);
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" {FONT}><title>{t}</title>\
         <text x=\"0\" y=\"16\" font-size=\"14\" font-weight=\"bold\" fill=\"{INK}\">{t}</text>",
        t = escape(title)
    );
    let bottom = top + row_h * values.len() as f64;
    for tick in &grid {
        let x = label_w + tick * scale;
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"{GRID}\"/>\
             <text x=\"{x:.1}\" y=\"{ty}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
            tick_label(*tick),
            ty = bottom + 15.0
        );
    }
    for (row, (index, label, s)) in values.iter().enumerate() {
        let y = top + row_h * row as f64;
        let mid = y + row_h / 2.0;
        let _ = write!(
            svg,
            "<text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\" fill=\"{INK}\">{}</text>\
             <rect x=\"{label_w}\" y=\"{by}\" width=\"{bw:.1}\" height=\"{bh}\" fill=\"{}\"/>\
             <line x1=\"{x0:.1}\" y1=\"{mid}\" x2=\"{x1:.1}\" y2=\"{mid}\" stroke=\"{INK}\" stroke-width=\"1.5\"/>\
             <line x1=\"{x0:.1}\" y1=\"{c0}\" x2=\"{x0:.1}\" y2=\"{c1}\" stroke=\"{INK}\" stroke-width=\"1.5\"/>\
             <line x1=\"{x1:.1}\" y1=\"{c0}\" x2=\"{x1:.1}\" y2=\"{c1}\" stroke=\"{INK}\" stroke-width=\"1.5\"/>\
             <text x=\"{vx:.1}\" y=\"{ty}\" fill=\"{INK}\">{} {} <tspan fill=\"#666\">({}..{})</tspan></text>",
            escape(label),
            colour(*index),
            auto(s.median),
            escape(unit),
            auto(s.min),
            auto(s.max),
            lx = label_w - 8.0,
            ty = mid + 4.0,
            by = y + 5.0,
            bh = row_h - 10.0,
            bw = (s.median * scale).max(1.0),
            x0 = label_w + s.min * scale,
            x1 = label_w + s.max * scale,
            c0 = mid - 6.0,
            c1 = mid + 6.0,
            vx = label_w + s.max * scale + 8.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn legend(svg: &mut String, x: f64, y: f64, entries: &[(usize, &str)]) {
    for (row, (index, name)) in entries.iter().enumerate() {
        let ly = y + 18.0 * row as f64;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{ry}\" width=\"14\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{tx}\" y=\"{ly}\" fill=\"{INK}\">{}</text>",
            colour(*index),
            escape(name),
            ry = ly - 9.0,
            tx = x + 20.0
        );
    }
}

/// 10^exp µs as milliseconds: "0.01", "0.1", "1", "10", "1 000".
fn power_of_ten_ms(exp: f64) -> String {
    let decimals = (3.0 - exp).max(0.0) as usize;
    number(10f64.powf(exp) / 1000.0, decimals)
}

/// Whole-transaction latency per percentile, log scale, one line per path,
/// whiskers over the rounds.
fn latency_chart(paths: &[PathSummary]) -> String {
    let (left, top, plot_w, plot_h) = (70.0, 34.0, 520.0, 260.0);
    let width = left + plot_w + 240.0;
    let height = top + plot_h + 50.0;
    let all = || {
        paths
            .iter()
            .flat_map(|p| p.message_latency.iter())
            .flat_map(|q| [q.min_us, q.max_us, q.all_rounds_us])
            .filter(|v| *v > 0)
    };
    let low = all().min().unwrap_or(1) as f64;
    let high = all().max().unwrap_or(10) as f64;
    let (lo_exp, hi_exp) = (
        low.log10().floor(),
        high.log10().ceil().max(low.log10().floor() + 1.0),
    );
    let y = |us: f64| top + plot_h * (hi_exp - us.max(1.0).log10()) / (hi_exp - lo_exp);
    let x = |i: usize| left + plot_w * (i as f64 + 0.5) / PERCENTILES.len() as f64;
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" {FONT}>\
         <title>Latency percentiles</title>\
         <text x=\"0\" y=\"16\" font-size=\"14\" font-weight=\"bold\" fill=\"{INK}\">\
         Message latency by percentile (MAIL to final reply; ms, log scale)</text>"
    );
    let mut exp = lo_exp;
    while exp <= hi_exp {
        let gy = y(10f64.powf(exp));
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{r}\" y2=\"{gy:.1}\" stroke=\"{GRID}\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\" fill=\"#666\">{}</text>",
            power_of_ten_ms(exp),
            r = left + plot_w,
            tx = left - 6.0,
            ty = gy + 4.0
        );
        exp += 1.0;
    }
    for (i, (label, _)) in PERCENTILES.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"{INK}\">{label}</text>",
            x(i),
            top + plot_h + 18.0
        );
    }
    let paths_with_data: Vec<(usize, &PathSummary)> = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| p.message_latency.iter().any(|q| q.all_rounds_us > 0))
        .collect();
    let spacing = 8.0;
    for (n, (index, path)) in paths_with_data.iter().enumerate() {
        // Offset each path a little so whiskers do not hide one another.
        let dx = (n as f64 - (paths_with_data.len() as f64 - 1.0) / 2.0) * spacing;
        let points: Vec<String> = path
            .message_latency
            .iter()
            .enumerate()
            .map(|(i, q)| format!("{:.1},{:.1}", x(i) + dx, y(q.all_rounds_us as f64)))
            .collect();
        let c = colour(*index);
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            points.join(" ")
        );
        for (i, q) in path.message_latency.iter().enumerate() {
            let px = x(i) + dx;
            let _ = write!(
                svg,
                "<line x1=\"{px:.1}\" y1=\"{y0:.1}\" x2=\"{px:.1}\" y2=\"{y1:.1}\" stroke=\"{c}\" stroke-width=\"1.5\"/>\
                 <line x1=\"{a:.1}\" y1=\"{y0:.1}\" x2=\"{b:.1}\" y2=\"{y0:.1}\" stroke=\"{c}\"/>\
                 <line x1=\"{a:.1}\" y1=\"{y1:.1}\" x2=\"{b:.1}\" y2=\"{y1:.1}\" stroke=\"{c}\"/>\
                 <circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.5\" fill=\"{c}\"/>",
                y0 = y(q.min_us as f64),
                y1 = y(q.max_us as f64),
                py = y(q.all_rounds_us as f64),
                a = px - 3.0,
                b = px + 3.0,
            );
        }
    }
    let entries: Vec<(usize, &str)> = paths_with_data
        .iter()
        .map(|(i, p)| (*i, p.path.as_str()))
        .collect();
    legend(&mut svg, left + plot_w + 20.0, top + 10.0, &entries);
    svg.push_str("</svg>");
    svg
}

/// Relay cores kept busy against msgs/s, per smtpgate path, with the line a
/// projection from saturation would draw, for contrast.
fn sweep_chart(points: &[SweepPoint], path_names: &[String]) -> String {
    let (left, top, plot_w, plot_h) = (60.0, 34.0, 520.0, 280.0);
    let width = left + plot_w + 260.0;
    let height = top + plot_h + 56.0;
    let x_max = points
        .iter()
        .map(|p| p.achieved_msgs_per_s.max)
        .fold(0.0, f64::max);
    let y_max = points.iter().map(|p| p.relay_cores.max).fold(0.0, f64::max);
    let (x_grid, y_grid) = (ticks(x_max), ticks(y_max));
    let x_top = x_grid.last().copied().unwrap_or(1.0);
    let y_top = y_grid.last().copied().unwrap_or(1.0);
    let x = |v: f64| left + plot_w * v / x_top;
    let y = |v: f64| top + plot_h * (1.0 - v / y_top);
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" {FONT}>\
         <title>Relay cores against message rate</title>\
         <text x=\"0\" y=\"16\" font-size=\"14\" font-weight=\"bold\" fill=\"{INK}\">\
         Relay cores busy against msgs/s (open loop; ring: closed loop)</text>"
    );
    for v in &x_grid {
        let _ = write!(
            svg,
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{b}\" stroke=\"{GRID}\"/>\
             <text x=\"{gx:.1}\" y=\"{ty}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
            tick_label(*v),
            gx = x(*v),
            b = top + plot_h,
            ty = top + plot_h + 15.0
        );
    }
    for v in &y_grid {
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{r}\" y2=\"{gy:.1}\" stroke=\"{GRID}\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\" fill=\"#666\">{}</text>",
            tick_label(*v),
            gy = y(*v),
            r = left + plot_w,
            tx = left - 6.0,
            ty = y(*v) + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"{INK}\">msgs/s relayed</text>\
         <text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{INK}\" \
         transform=\"rotate(-90 14 {:.1})\">relay cores busy</text>",
        left + plot_w / 2.0,
        top + plot_h + 34.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let mut entries = Vec::new();
    for (index, name) in path_names.iter().enumerate() {
        let mut mine: Vec<&SweepPoint> = points.iter().filter(|p| &p.path == name).collect();
        if mine.is_empty() {
            continue;
        }
        mine.sort_by(|a, b| {
            a.achieved_msgs_per_s
                .median
                .total_cmp(&b.achieved_msgs_per_s.median)
        });
        let c = colour(index);
        if let Some(last) = mine.last() {
            // What "saturation CPU per message x rate" would predict.
            let _ = write!(
                svg,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\" \
                 stroke-dasharray=\"4 4\" stroke-width=\"1\"/>",
                x(0.0),
                y(0.0),
                x(last.achieved_msgs_per_s.median),
                y(last.relay_cores.median)
            );
        }
        let line: Vec<String> = mine
            .iter()
            .map(|p| {
                format!(
                    "{:.1},{:.1}",
                    x(p.achieved_msgs_per_s.median),
                    y(p.relay_cores.median)
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            line.join(" ")
        );
        for p in &mine {
            let (px, py) = (x(p.achieved_msgs_per_s.median), y(p.relay_cores.median));
            let _ = write!(
                svg,
                "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-width=\"1.5\"/>\
                 <line x1=\"{:.1}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"{c}\" stroke-width=\"1.5\"/>\
                 <circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"{}\" fill=\"{}\" stroke=\"{c}\" stroke-width=\"2\"/>",
                y(p.relay_cores.min),
                y(p.relay_cores.max),
                x(p.achieved_msgs_per_s.min),
                x(p.achieved_msgs_per_s.max),
                if p.offered_msgs_per_s.is_none() { 5.0 } else { 3.5 },
                if p.offered_msgs_per_s.is_none() { "#fff" } else { c },
            );
            // CPU per message beside the first path's points only: labels
            // of two close curves would overlap (the table has them all).
            if index == 0 {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\" font-size=\"11\">{} µs/msg</text>",
                    px + 7.0,
                    py - 7.0,
                    auto(p.relay_cpu_us_per_msg.median)
                );
            }
        }
        entries.push((index, name.as_str()));
    }
    legend(&mut svg, left + plot_w + 20.0, top + 10.0, &entries);
    let note_y = top + 18.0 * entries.len() as f64 + 22.0;
    let _ = write!(
        svg,
        "<line x1=\"{lx}\" y1=\"{ny}\" x2=\"{lx2}\" y2=\"{ny}\" stroke=\"#666\" stroke-dasharray=\"4 4\"/>\
         <text x=\"{tx}\" y=\"{ty}\" fill=\"{INK}\">closed-loop µs/msg × rate</text>\
         <circle cx=\"{cx}\" cy=\"{cy}\" r=\"5\" fill=\"#fff\" stroke=\"#666\" stroke-width=\"2\"/>\
         <text x=\"{tx}\" y=\"{ty2}\" fill=\"{INK}\">closed loop (as fast as it goes)</text>",
        lx = left + plot_w + 20.0,
        lx2 = left + plot_w + 34.0,
        ny = note_y,
        tx = left + plot_w + 40.0,
        ty = note_y + 4.0,
        cx = left + plot_w + 27.0,
        cy = note_y + 18.0,
        ty2 = note_y + 22.0,
    );
    svg.push_str("</svg>");
    svg
}

fn headline(value: &str, range: &str, caption: &str) -> String {
    format!(
        "<div class=\"headline\"><div class=\"big\">{}</div><div class=\"range\">{}</div>\
         <div class=\"caption\">{}</div></div>",
        escape(value),
        escape(range),
        escape(caption)
    )
}

fn headlines(report: &CompareReport) -> String {
    let mut out = String::from("<div class=\"headlines\">");
    let cost = &report.cost_of_inspection;
    let range = |s: &Spread, f: fn(f64) -> String| format!("rounds {}..{}", f(s.min), f(s.max));
    let ratio = |x: f64| format!("×{}", number(x, 2));
    if let Some(t) = &cost.throughput_ratio {
        out += &headline(
            &ratio(t.median),
            &range(t, |x| number(x, 2)),
            "throughput, inspected ÷ exempt",
        );
    }
    if let Some(c) = &cost.cpu_per_message_ratio {
        out += &headline(
            &ratio(c.median),
            &range(c, |x| number(x, 2)),
            "relay CPU per message, inspected ÷ exempt",
        );
    }
    if let Some(tls) = &report.tls {
        if let Some(t) = &tls.inspected_over_exempt.throughput_ratio {
            out += &headline(
                &ratio(t.median),
                &range(t, |x| number(x, 2)),
                "throughput, TLS inspected ÷ TLS exempt",
            );
        }
        if let Some(c) = &tls.inspected_over_exempt.cpu_per_message_ratio {
            out += &headline(
                &ratio(c.median),
                &range(c, |x| number(x, 2)),
                "relay CPU per message, TLS inspected ÷ TLS exempt",
            );
        }
        if let Some(h) = &tls.handshake_cpu_us_per_connection {
            out += &headline(
                &format!("{} µs", auto(h.median)),
                &range(h, auto),
                "relay CPU a TLS connection adds to inspection (handshakes both sides)",
            );
        }
    }
    if let Some(per_core) = report
        .paths
        .first()
        .and_then(|p| p.msgs_per_s_per_busy_core)
    {
        out += &headline(
            &auto(per_core.median),
            &range(&per_core, auto),
            "inspected msgs/s per busy relay core (closed loop)",
        );
    }
    if let Some(need) = report.sweep.as_ref().and_then(|s| {
        s.cores_needed
            .iter()
            .rfind(|n| n.path == report.paths[0].path && n.basis == Basis::Interpolated)
            .or_else(|| {
                s.cores_needed
                    .iter()
                    .find(|n| n.path == report.paths[0].path)
            })
    }) {
        out += &headline(
            &auto(need.cores.median),
            &format!("{}..{}", auto(need.cores.min), auto(need.cores.max)),
            &format!("relay cores for {} inspected msgs/s", auto(need.msgs_per_s)),
        );
    }
    out.push_str("</div>");
    out
}

fn facts_table(report: &CompareReport) -> String {
    let f = &report.facts;
    let load = &report.load;
    let rows: Vec<(&str, String)> = vec![
        ("CPU", format!("{} ({} CPUs usable)", f.cpu_model, f.cpus)),
        ("memory", format!("{} GiB", f.memory_gib)),
        ("kernel", f.kernel.clone()),
        ("host", f.hostname.clone()),
        ("started (UTC)", f.started_utc.clone()),
        (
            "smtpgate",
            format!("{} commit {}", f.smtpgate_version, f.smtpgate_commit),
        ),
        ("smtpgate binary", f.smtpgate_binary.clone()),
        (
            "smtpgate cores, placement",
            format!("{}, {:?}", f.relay_cores, f.placement).to_lowercase(),
        ),
        (
            "load generator",
            format!(
                "smtpgate-loadgen {} ({} build), {} executors",
                f.loadgen_version, f.loadgen_build, f.loadgen_cores
            ),
        ),
        (
            "HAProxy",
            f.haproxy_version
                .clone()
                .unwrap_or_else(|| "not measured".into()),
        ),
        (
            "load",
            format!(
                "{} connections, size {}, {} recipient(s){}{}; {} rounds × {} s closed loop",
                load.connections,
                load.size,
                load.recipients,
                if load.pipelining { ", pipelining" } else { "" },
                if load.per_connection {
                    ", one message per connection"
                } else {
                    ", connections reused"
                },
                load.rounds,
                load.duration_per_run_s
            ),
        ),
    ];
    let mut out = String::from("<table class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(&v)
        );
    }
    out.push_str("</table>");
    out
}

fn summary_table(report: &CompareReport) -> String {
    let mut out = String::from(
        "<table><tr><th class=\"name\">path</th><th>msgs/s</th><th>MB/s</th><th>relay cores busy</th>\
         <th>relay CPU µs/msg</th><th>msgs/s per busy core</th><th>p99 end of data ms</th>\
         <th>loadgen / sink µs/msg</th><th>failed</th></tr>",
    );
    for (i, p) in report.paths.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td class=\"name\"><span class=\"swatch\" style=\"background:{}\"></span>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
            colour(i),
            escape(&p.path),
            cell(&p.msgs_per_s, auto),
            cell(&p.mb_per_s, auto),
            opt_cell(&p.relay_cores, auto),
            opt_cell(&p.relay_cpu_us_per_msg, auto),
            opt_cell(&p.msgs_per_s_per_busy_core, auto),
            cell(&p.end_of_data_p99_us, ms),
            auto(p.loadgen_cpu_us_per_msg.median),
            auto(p.sink_cpu_us_per_msg.median),
            p.messages_failed
        );
    }
    out.push_str("</table>");
    out
}

fn sweep_section(report: &CompareReport) -> String {
    let Some(sweep) = &report.sweep else {
        return "<p>No open-loop sweep was run (<code>--rates none</code>).</p>".into();
    };
    let names: Vec<String> = report.paths.iter().map(|p| p.path.clone()).collect();
    let mut out = format!(
        "<p>Each offered rate ran {} times for {} s through each smtpgate path (open loop, \
         latencies from the scheduled send time); the ring on each line is the closed-loop run, as \
         fast as this machine goes with the load generator and the sink on it. CPU per message \
         falls as the rate rises (more work per wake-up), so a line from the origin through the \
         closed-loop point (dashed) under-states the cores a lower rate needs. The table below \
         reads the measured curve instead.</p>",
        sweep.rounds, sweep.duration_per_run_s
    );
    out += &sweep_chart(&sweep.points, &names);
    out.push_str(
        "<table><tr><th class=\"name\">path</th><th>offered msgs/s</th><th>achieved msgs/s</th>\
         <th>relay cores busy</th><th>relay CPU µs/msg</th><th>p99 message ms</th><th>failed</th></tr>",
    );
    for p in &sweep.points {
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.path),
            p.offered_msgs_per_s
                .map_or("closed loop".into(), auto),
            cell(&p.achieved_msgs_per_s, auto),
            cell(&p.relay_cores, auto),
            cell(&p.relay_cpu_us_per_msg, auto),
            cell(&p.message_p99_us, ms),
            p.messages_failed
        );
    }
    out.push_str("</table><h3>Cores needed for a message rate</h3>");
    out.push_str(
        "<table><tr><th class=\"name\">path</th><th>msgs/s</th><th>relay cores</th><th class=\"name\">how</th></tr>",
    );
    for need in &sweep.cores_needed {
        let _ = write!(
            out,
            "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td class=\"name\">{}</td></tr>",
            escape(&need.path),
            auto(need.msgs_per_s),
            cell(&need.cores, auto),
            basis_text(need.basis)
        );
    }
    out.push_str("</table>");
    out
}

fn ratio_cells(cost: &CostOfInspection) -> String {
    let f = |x: f64| format!("×{}", number(x, 3));
    format!(
        "<td>{}</td><td>{}</td>",
        opt_cell(&cost.throughput_ratio, f),
        opt_cell(&cost.cpu_per_message_ratio, f)
    )
}

fn tls_section(report: &CompareReport) -> String {
    let Some(tls) = &report.tls else {
        return "<p>The TLS rows were not measured (<code>--tls off</code>).</p>".into();
    };
    let mut out = String::from(
        "<p>The clients of the two TLS rows do STARTTLS right after EHLO, as MTAs do, into a \
         second sink that offers it. <em>TLS inspected</em>: smtpgate answers STARTTLS itself, \
         does the handshake, applies every rule to the decrypted dialogue and starts TLS \
         again towards the sink (<code>starttls = \"inspect\"</code>, \
         <code>upstream_tls = \"opportunistic\"</code>). <em>TLS exempt</em>: smtpgate relays \
         the client's STARTTLS to the sink and is blind after it \
         (<code>starttls = \"passthrough\"</code>). Ratios pair the runs of each round.</p>\
         <table><tr><th class=\"name\">per round</th><th>throughput</th><th>relay CPU per message</th></tr>",
    );
    let _ = write!(
        out,
        "<tr><td class=\"name\">TLS inspected ÷ TLS exempt (the cost of inspecting encrypted mail)</td>{}</tr>\
         <tr><td class=\"name\">TLS inspected ÷ plaintext inspected (what encryption adds)</td>{}</tr></table>",
        ratio_cells(&tls.inspected_over_exempt),
        ratio_cells(&tls.tls_over_plaintext)
    );
    if let Some(seconds) = tls.per_connection_duration_s {
        let _ = write!(
            out,
            "<h3>One message per connection</h3><p>A handshake for every message: {} rounds × {seconds} s \
             of each path, alternating. Relay CPU per message is here CPU per connection.</p>\
             <table><tr><th class=\"name\">path</th><th>msgs/s</th><th>relay CPU µs per connection</th>\
             <th>p99 message ms</th><th>failed</th></tr>",
            tls.per_connection.first().map_or(0, |p| p.rounds)
        );
        for p in &tls.per_connection {
            let _ = write!(
                out,
                "<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&p.path),
                cell(&p.msgs_per_s, auto),
                opt_cell(&p.relay_cpu_us_per_msg, auto),
                p.message_latency
                    .iter()
                    .find(|q| q.label == "p99")
                    .map_or("-".into(), |q| ms(q.all_rounds_us as f64)),
                p.messages_failed
            );
        }
        out.push_str("</table>");
    }
    let sessions: Vec<String> = tls
        .sessions_established
        .iter()
        .map(|(side, n)| format!("{} {}", escape(side), number(*n as f64, 0)))
        .collect();
    let d = &tls.delivery;
    let _ = write!(
        out,
        "<p><strong>TLS CPU per connection, inspected: {} µs</strong> — per round, TLS inspected's \
         relay CPU per message minus plaintext inspected's, one message per connection: the \
         handshakes with the client and with the sink, STARTTLS and the second EHLO, and one \
         message's encryption.</p>\
         <p>TLS sessions smtpgate established over the whole run: {}. Delivery on the TLS rows: \
         {} messages accepted, {} received by the STARTTLS sink; {}.</p>",
        opt_spread(&tls.handshake_cpu_us_per_connection, auto),
        if sessions.is_empty() {
            "none reported".to_string()
        } else {
            sessions.join(", ")
        },
        number(d.messages_sent as f64, 0),
        number(d.messages_received as f64, 0),
        if d.digests_match {
            "their SHA-256 digests match"
        } else {
            "<strong>their digests differ</strong>"
        }
    );
    out
}

fn runs_table(report: &CompareReport) -> String {
    let mut out = String::from(
        "<table><tr><th>series</th><th>round</th><th class=\"name\">path</th><th>msgs/s</th><th>MB/s</th>\
         <th>relay cores</th><th>relay CPU µs/msg</th><th>p99 message ms</th><th>failed</th></tr>",
    );
    for r in &report.runs {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            r.offered_msgs_per_s
                .map_or("closed loop".into(), |x| format!("{} msgs/s", auto(x))),
            r.round,
            escape(&r.path),
            auto(r.msgs_per_s),
            auto(r.mb_per_s),
            r.relay_cores.map_or("-".into(), auto),
            r.relay_cpu_us_per_msg.map_or("-".into(), auto),
            r.latency_us
                .get("message")
                .map_or("-".into(), |p| ms(p.p99 as f64)),
            r.messages_failed
        );
    }
    out.push_str("</table>");
    out
}

pub fn html(report: &CompareReport) -> String {
    let bars = |f: fn(&PathSummary) -> Option<Spread>| -> Vec<(usize, String, Spread)> {
        report
            .paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.path.clone(), f(p)?)))
            .collect()
    };
    let f = &report.facts;
    let warning = if f.loadgen_build == "debug" || f.smtpgate_binary.contains("/debug/") {
        "<p class=\"warning\">Debug build: these figures measure unoptimized code. \
         Build with <code>cargo build --release --workspace</code> before sizing anything.</p>"
    } else {
        ""
    };
    let failed: u64 = report.paths.iter().map(|p| p.messages_failed).sum();
    let failures = if failed > 0 {
        format!(
            "<p class=\"warning\">{failed} messages failed during the closed-loop runs; \
             see every run below and the processes' logs.</p>"
        )
    } else {
        String::new()
    };
    let haproxy = report.haproxy_config.as_ref().map_or(String::new(), |c| {
        format!("<h3>haproxy.cfg</h3><pre>{}</pre>", escape(c))
    });
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>smtpgate capacity report</title><style>\
body{{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:2em auto;max-width:68em;color:{INK};padding:0 1em}}\
h1{{margin-bottom:0.2em}}.sub{{color:#555;margin-top:0}}\
.headlines{{display:flex;flex-wrap:wrap;gap:1.2em;margin:1.5em 0}}\
.headline{{border:1px solid #d5d5d5;border-radius:6px;padding:0.8em 1.2em;min-width:12em;flex:1}}\
.big{{font-size:2.6em;font-weight:bold;color:#2f5d8a}}.range{{color:#555}}.caption{{margin-top:0.3em}}\
table{{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}}\
td,th{{border:1px solid #d5d5d5;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}\
td.name,th.name,table.facts td,table.facts th{{text-align:left}}td{{white-space:nowrap}}.range{{color:#666;font-size:0.9em}}\
.swatch{{display:inline-block;width:0.8em;height:0.8em;margin-right:0.4em}}\
pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}\
.warning{{border-left:4px solid #8a6d3b;background:#faf6ee;padding:0.5em 1em}}\
svg.chart{{display:block;margin:1em 0}}</style></head><body>\
<h1>smtpgate capacity report</h1>\
<p class=\"sub\">{cpu}, {cpus} CPUs, kernel {kernel} · {version} (commit {commit}) · {started}</p>\
{warning}{failures}{headlines}\
<p>The same load through smtpgate inspecting (policy <code>default</code>) and exempt \
(policy <code>none</code>){tls_rows}{baseline}, alternating, into one sink{sinks}. Every figure is the median \
over rounds with the lowest and highest round in brackets; whiskers on the charts span them.</p>\
<h2>Throughput</h2>{throughput}\
<h2>Relay CPU</h2>{cpu_chart}{per_core}\
<h2>Latency</h2>{latency}\
<h2>Summary</h2>{summary}\
<h2>TLS</h2>{tls}\
<h2>Cores against load</h2>{sweep}\
<h2>Machine and build</h2>{facts}\
<h2>Configuration</h2><h3>smtpgate.toml</h3><pre>{config}</pre>{haproxy}\
<h2>Every run</h2>{runs}\
<p class=\"sub\">Relay CPU is user + system time of the relay process from /proc/PID/stat \
around each run; cores busy = CPU seconds ÷ wall seconds.</p>\
</body></html>\n",
        cpu = escape(&f.cpu_model),
        cpus = f.cpus,
        kernel = escape(&f.kernel),
        version = escape(&f.smtpgate_version),
        commit = escape(&f.smtpgate_commit),
        started = escape(&f.started_utc),
        headlines = headlines(report),
        baseline = if report.haproxy_config.is_some() || report.paths.iter().any(|p| !p.has_relay) {
            ", with the baselines measured the same way"
        } else {
            ""
        },
        tls_rows = if report.tls.is_some() {
            ", and under a STARTTLS load inspecting TLS and passing it through"
        } else {
            ""
        },
        sinks = if report.tls.is_some() {
            " (the TLS rows into a second, offering STARTTLS)"
        } else {
            ""
        },
        throughput = bar_chart(
            "Messages per second",
            "msgs/s",
            &bars(|p| Some(p.msgs_per_s))
        ),
        cpu_chart = bar_chart(
            "Relay CPU per message (µs)",
            "µs",
            &bars(|p| p.relay_cpu_us_per_msg)
        ),
        per_core = bar_chart(
            "Messages per second per busy relay core",
            "msgs/s",
            &bars(|p| p.msgs_per_s_per_busy_core)
        ),
        latency = latency_chart(&report.paths),
        summary = summary_table(report),
        tls = tls_section(report),
        sweep = sweep_section(report),
        facts = facts_table(report),
        config = escape(&report.smtpgate_config),
        runs = runs_table(report),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_sized_to_their_magnitude() {
        assert_eq!(auto(1234567.0), "1\u{202f}234\u{202f}567");
        assert_eq!(auto(123.4), "123");
        assert_eq!(auto(12.34), "12.3");
        assert_eq!(auto(1.234), "1.23");
        assert_eq!(auto(0.1234), "0.123");
        assert_eq!(auto(-1500.0), "-1\u{202f}500");
        assert_eq!(auto(f64::NAN), "n/a");
        assert_eq!(auto(0.0), "0");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(50.0), "50");
        assert_eq!(tick_label(1500.0), "1\u{202f}500");
    }

    #[test]
    fn gridlines_are_round_steps_covering_the_maximum() {
        assert_eq!(ticks(9.0), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(2300.0), [0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0]);
        assert_eq!(ticks(0.0), [0.0, 1.0]);
    }

    #[test]
    fn a_bar_chart_has_a_bar_and_a_whisker_per_path_and_escapes_labels() {
        let s = |m| Spread {
            median: m,
            min: m * 0.9,
            max: m * 1.1,
        };
        let svg = bar_chart(
            "t",
            "u",
            &[(0, "a<b".into(), s(2.0)), (1, "c".into(), s(1.0))],
        );
        assert!(svg.contains("a&lt;b"));
        assert_eq!(svg.matches("<rect").count(), 2);
        // A whisker is three lines: the span and two caps.
        assert_eq!(svg.matches("stroke-width=\"1.5\"").count(), 6);
        assert!(svg.contains(colour(0)) && svg.contains(colour(1)));
    }
}
