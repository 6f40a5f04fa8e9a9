//! Output: markdown tables (medians and ratios), a CSV of every sample, and
//! two hand-written SVG line charts.

use std::fmt::Write as _;

use super::measure::median;
use super::target::Kind;
use super::{Config, Sample};

/// One line describing a sample, for progress output.
pub fn describe(s: &Sample) -> String {
    let head = format!(
        "{:<28} {:<11} rep {}",
        s.config.label(),
        s.target.name(),
        s.rep + 1
    );
    if let Some(e) = &s.error {
        return format!("{head}: ERROR {}", e.lines().next().unwrap_or(""));
    }
    if let Some(t) = &s.throughput {
        let cpu = t
            .cpu_s_per_mframe
            .map(|c| {
                format!(
                    ", switch CPU {c:.2} s/Mframe ({:.0}%)",
                    t.cpu_util.unwrap_or(0.0) * 100.0
                )
            })
            .unwrap_or_default();
        let warn = if t.learned {
            ""
        } else {
            " [learning check FAILED]"
        };
        return format!(
            "{head}: offered {} f/s, received {} f/s, {:.1} Mbit/s, loss {:.1}%{cpu}{warn}",
            thousands(t.offered_fps),
            thousands(t.rx_fps),
            t.rx_mbps,
            t.loss_pct
        );
    }
    if let Some(l) = &s.latency {
        return format!(
            "{head}: RTT p50 {:.1} us, p90 {:.1} us, p99 {:.1} us ({} lost)",
            l.p50_us, l.p90_us, l.p99_us, l.lost
        );
    }
    head
}

/// `1234567.8` -> `"1,234,568"`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_owned();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn fmt_opt(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "-".to_owned()
    }
}

/// Distinct configurations of `samples`, in first-seen order.
fn configs(samples: &[Sample]) -> Vec<Config> {
    let mut v: Vec<Config> = Vec::new();
    for s in samples {
        if !v.contains(&s.config) {
            v.push(s.config);
        }
    }
    v
}

/// Distinct targets in canonical order.
fn targets(samples: &[Sample]) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| samples.iter().any(|s| s.target == *k))
        .collect()
}

/// Median over the successful samples of (config, target) of `metric`.
fn med(
    samples: &[Sample],
    config: Config,
    kind: Kind,
    metric: impl Fn(&Sample) -> Option<f64>,
) -> f64 {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.config == config && s.target == kind && s.error.is_none())
        .filter_map(&metric)
        .collect();
    median(&v)
}

fn rx_fps(s: &Sample) -> Option<f64> {
    s.throughput.as_ref().map(|t| t.rx_fps)
}

fn p50(s: &Sample) -> Option<f64> {
    s.latency.as_ref().map(|l| l.p50_us)
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// The markdown report: summary with ratios, throughput details, latency.
pub fn markdown(samples: &[Sample]) -> String {
    let kinds = targets(samples);
    let has = |k: Kind| kinds.contains(&k);
    let mut out = String::new();

    // Summary.
    let _ = writeln!(
        out,
        "### Summary (medians; throughput = frames/s received, ping-pong = round trip in us, lower is better)\n"
    );
    let mut header = String::from("| configuration |");
    let mut rule = String::from("|---|");
    for k in &kinds {
        let _ = write!(header, " {} |", k.name());
        rule.push_str("---:|");
    }
    let ratio_cols: Vec<(Kind, Kind, &str)> = [
        (Kind::UmlSwitch, Kind::Vde, "uml-switch / vde_switch"),
        (Kind::UmlSwitch, Kind::Direct, "uml-switch / direct"),
        (Kind::Vde, Kind::Direct, "vde_switch / direct"),
    ]
    .into_iter()
    .filter(|(a, b, _)| has(*a) && has(*b))
    .collect();
    for (_, _, name) in &ratio_cols {
        let _ = write!(header, " {name} |");
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for config in configs(samples) {
        let metric: fn(&Sample) -> Option<f64> = match config {
            Config::Throughput { .. } => rx_fps,
            Config::PingPong => p50,
        };
        let values: Vec<f64> = kinds
            .iter()
            .map(|&k| med(samples, config, k, metric))
            .collect();
        let value_of = |k: Kind| {
            kinds
                .iter()
                .position(|&x| x == k)
                .map_or(f64::NAN, |i| values[i])
        };
        let mut row = format!("| {} |", config.label());
        for v in &values {
            let cell = match config {
                Config::Throughput { .. } => thousands(*v),
                Config::PingPong => fmt_opt(*v, 1),
            };
            let _ = write!(row, " {cell} |");
        }
        for (a, b, _) in &ratio_cols {
            let _ = write!(row, " {} |", ratio(value_of(*a), value_of(*b)));
        }
        let _ = writeln!(out, "{row}");
    }

    // Throughput details.
    let tput_configs: Vec<Config> = configs(samples)
        .into_iter()
        .filter(|c| matches!(c, Config::Throughput { .. }))
        .collect();
    if !tput_configs.is_empty() {
        let _ = writeln!(
            out,
            "\n### Throughput details (medians)\n\n\
             | configuration | target | offered frames/s | received frames/s | received Mbit/s | loss % | switch CPU s / Mframe | switch CPU % of a core | ok runs |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for config in tput_configs {
            for &k in &kinds {
                let t = |f: fn(&super::measure::Throughput) -> Option<f64>| {
                    med(samples, config, k, |s| s.throughput.as_ref().and_then(f))
                };
                let (ok, all) = counts(samples, config, k);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {ok}/{all} |",
                    config.label(),
                    k.name(),
                    thousands(t(|t| Some(t.offered_fps))),
                    thousands(t(|t| Some(t.rx_fps))),
                    fmt_opt(t(|t| Some(t.rx_mbps)), 1),
                    fmt_opt(t(|t| Some(t.loss_pct)), 1),
                    fmt_opt(t(|t| t.cpu_s_per_mframe), 2),
                    fmt_opt(t(|t| t.cpu_util.map(|u| u * 100.0)), 0),
                );
            }
        }
    }

    // Latency.
    if configs(samples).contains(&Config::PingPong) {
        let _ = writeln!(
            out,
            "\n### Ping-pong round trip (us, medians over runs)\n\n\
             | target | p50 | p90 | p99 | mean | lost pings | ok runs |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for &k in &kinds {
            let l = |f: fn(&super::measure::Latency) -> f64| {
                med(samples, Config::PingPong, k, |s| s.latency.as_ref().map(f))
            };
            let (ok, all) = counts(samples, Config::PingPong, k);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {ok}/{all} |",
                k.name(),
                fmt_opt(l(|l| l.p50_us), 1),
                fmt_opt(l(|l| l.p90_us), 1),
                fmt_opt(l(|l| l.p99_us), 1),
                fmt_opt(l(|l| l.mean_us), 1),
                fmt_opt(l(|l| l.lost as f64), 0),
            );
        }
    }

    let errors: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n### Failed measurements\n");
        for s in errors {
            let _ = writeln!(out, "- {}", describe(s));
        }
    }
    out
}

fn counts(samples: &[Sample], config: Config, kind: Kind) -> (usize, usize) {
    let all: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.config == config && s.target == kind)
        .collect();
    (all.iter().filter(|s| s.error.is_none()).count(), all.len())
}

/// Every sample as CSV (header line first).
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "kind,ports,frame_size,target,rep,offered_fps,rx_fps,rx_mbps,loss_pct,sent_total,rx_total,\
         stray,learned,switch_cpu_s_per_mframe,switch_cpu_util,p50_us,p90_us,p99_us,mean_us,\
         round_trips,lost_pings,error\n",
    );
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_default();
    for s in samples {
        let (kind, ports, size) = match s.config {
            Config::Throughput { ports, size } => ("throughput", ports, size),
            Config::PingPong => ("pingpong", 2, 64),
        };
        let _ = write!(out, "{kind},{ports},{size},{},{},", s.target.name(), s.rep);
        match &s.throughput {
            Some(t) => {
                let _ = write!(
                    out,
                    "{:.1},{:.1},{:.3},{:.3},{},{},{},{},{},{},",
                    t.offered_fps,
                    t.rx_fps,
                    t.rx_mbps,
                    t.loss_pct,
                    t.sent_total,
                    t.rx_total,
                    t.stray,
                    t.learned,
                    opt(t.cpu_s_per_mframe),
                    opt(t.cpu_util)
                );
            }
            None => out.push_str(",,,,,,,,,,"),
        }
        match &s.latency {
            Some(l) => {
                let _ = write!(
                    out,
                    "{:.2},{:.2},{:.2},{:.2},{},{},",
                    l.p50_us, l.p90_us, l.p99_us, l.mean_us, l.count, l.lost
                );
            }
            None => out.push_str(",,,,,,"),
        }
        let err = s
            .error
            .as_deref()
            .map(|e| format!("\"{}\"", e.replace('"', "'").replace('\n', " | ")))
            .unwrap_or_default();
        let _ = writeln!(out, "{err}");
    }
    out
}

/// Which sweep a chart shows.
#[derive(Clone, Copy, Debug)]
pub enum Sweep {
    /// Frames/s against frame size, at `ports` ports.
    FrameSize {
        /// Ports.
        ports: usize,
    },
    /// Frames/s against port count, at `size`-byte frames.
    Ports {
        /// Frame size.
        size: usize,
    },
}

/// An SVG line chart of received frames/s for the sweep, one line per
/// target (median, with a min-max bar per point). None if < 2 points.
pub fn svg_chart(samples: &[Sample], sweep: Sweep) -> Option<String> {
    let xs: Vec<usize> = {
        let mut v: Vec<usize> = configs(samples)
            .into_iter()
            .filter_map(|c| match (c, sweep) {
                (Config::Throughput { ports, size }, Sweep::FrameSize { ports: p })
                    if ports == p =>
                {
                    Some(size)
                }
                (Config::Throughput { ports, size }, Sweep::Ports { size: s }) if size == s => {
                    Some(ports)
                }
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    if xs.len() < 2 {
        return None;
    }
    let config_at = |x: usize| match sweep {
        Sweep::FrameSize { ports } => Config::Throughput { ports, size: x },
        Sweep::Ports { size } => Config::Throughput { ports: x, size },
    };
    // (target, [(x, median, min, max)])
    let mut series = Vec::new();
    for k in targets(samples) {
        let mut points = Vec::new();
        for &x in &xs {
            let v: Vec<f64> = samples
                .iter()
                .filter(|s| s.config == config_at(x) && s.target == k && s.error.is_none())
                .filter_map(rx_fps)
                .collect();
            if v.is_empty() {
                continue;
            }
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            points.push((x as f64, median(&v), lo, hi));
        }
        if !points.is_empty() {
            series.push((k, points));
        }
    }
    let y_max_data = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.3))
        .fold(0.0, f64::max);
    let (title, x_label) = match sweep {
        Sweep::FrameSize { ports } => (
            format!(
                "Received frames/s against frame size ({ports} ports, {} pair{})",
                ports / 2,
                if ports / 2 == 1 { "" } else { "s" }
            ),
            "frame size (bytes)".to_owned(),
        ),
        Sweep::Ports { size } => (
            format!("Received frames/s against port count ({size}-byte frames)"),
            "ports (half senders, half receivers)".to_owned(),
        ),
    };
    let log_x = matches!(sweep, Sweep::Ports { .. });
    Some(line_chart(
        &title,
        &x_label,
        "frames/s received",
        &xs,
        log_x,
        y_max_data,
        &series,
    ))
}

fn color(k: Kind) -> &'static str {
    match k {
        Kind::Direct => "#7f7f7f",
        Kind::UmlSwitch => "#1f77b4",
        Kind::Vde => "#ff7f0e",
    }
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `n` ticks.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

type Series = (Kind, Vec<(f64, f64, f64, f64)>);

fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[usize],
    log_x: bool,
    y_max_data: f64,
    series: &[Series],
) -> String {
    let (w, h) = (760.0, 460.0);
    let (left, right, top, bottom) = (90.0, 170.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let step = nice_step(y_max_data.max(1.0) * 1.05, 6.0);
    let y_max = (y_max_data.max(1.0) * 1.05 / step).ceil() * step;
    let tx = |x: f64| -> f64 {
        let f = |v: f64| if log_x { v.log2() } else { v };
        let (a, b) = (f(xs[0] as f64), f(*xs.last().unwrap_or(&xs[0]) as f64));
        let span = if b > a { b - a } else { 1.0 };
        left + (f(x) - a) / span * pw
    };
    let ty = |y: f64| -> f64 { top + ph - y / y_max * ph };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        left + pw / 2.0,
        xml(title)
    );
    // Y grid, ticks and labels.
    let mut y = 0.0;
    while y <= y_max + step / 2.0 {
        let py = ty(y);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><line x1="{:.1}" y1="{py:.1}" x2="{left}" y2="{py:.1}" stroke="black"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 5.0,
            left - 8.0,
            py + 4.0,
            si(y)
        );
        y += step;
    }
    // X ticks at the data points.
    for &x in xs {
        let px = tx(x as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#f0f0f0"/><line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="black"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{x}</text>"##,
            top + ph,
            top + ph,
            top + ph + 5.0,
            top + ph + 19.0
        );
    }
    // Axes and labels.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="black"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        top + ph,
        top + ph,
        left + pw,
        top + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 15.0,
        xml(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        xml(y_label)
    );
    // Series.
    for (k, points) in series {
        let c = color(*k);
        let path: Vec<String> = points
            .iter()
            .map(|&(x, m, _, _)| format!("{:.1},{:.1}", tx(x), ty(m)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, m, lo, hi) in points {
            let px = tx(x);
            let _ = writeln!(
                s,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{c}" stroke-width="1"/><circle cx="{px:.1}" cy="{:.1}" r="3.5" fill="{c}"><title>{} at {x}: {} frames/s (min {}, max {})</title></circle>"#,
                ty(lo),
                ty(hi),
                ty(m),
                k.name(),
                super::report::thousands(m),
                super::report::thousands(lo),
                super::report::thousands(hi)
            );
        }
    }
    // Legend.
    let lx = left + pw + 20.0;
    for (i, (k, _)) in series.iter().enumerate() {
        let ly = top + 10.0 + i as f64 * 22.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="2"/><circle cx="{:.1}" cy="{ly}" r="3.5" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 28.0,
            color(*k),
            lx + 14.0,
            color(*k),
            lx + 36.0,
            ly + 4.0,
            k.name()
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{:.1}" font-size="10" fill="#555">median of runs;</text><text x="{lx}" y="{:.1}" font-size="10" fill="#555">bars: min to max</text>"##,
        top + 10.0 + series.len() as f64 * 22.0 + 8.0,
        top + 10.0 + series.len() as f64 * 22.0 + 21.0
    );
    s.push_str("</svg>\n");
    s
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
