//! The HTML of `GET /`: one self-contained page (inline CSS, inline SVG charts, a
//! few lines of script, no external assets), rendered in full on the server so that
//! viewers without JavaScript see everything. The script re-fetches the page every
//! 2 seconds and swaps in the new `<main>`.

use std::fmt::Write;
use std::time::Duration;

use super::{DbStatus, Status};
use crate::resilience::{Override, State};

const STYLE: &str = r#"
:root{--ok:#2b8a3e;--ok-bg:#d3f9d8;--warn:#b35c00;--warn-bg:#fff3bf;--bad:#c92a2a;--bad-bg:#ffe3e3;--mute:#868e96;--line:#e9ecef;--p50:#1c7ed6;--p99:#e8590c}
*{box-sizing:border-box}
body{margin:0;padding:24px 28px;background:#f4f5f7;color:#212529;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{display:flex;align-items:baseline;gap:18px;flex-wrap:wrap;margin-bottom:14px}
h1{font-size:20px;margin:0;font-weight:650;letter-spacing:-.01em}
.meta{color:#495057}.meta b{font-weight:600;color:#212529}
.badge{margin-left:auto;padding:3px 10px;border-radius:12px;font-weight:600;font-size:13px}
.badge.ok{background:var(--ok-bg);color:var(--ok)}.badge.bad{background:var(--bad-bg);color:var(--bad)}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);overflow-x:auto}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th{text-align:left;font-weight:600;font-size:12px;color:var(--mute);text-transform:uppercase;letter-spacing:.04em;padding:9px 10px;border-bottom:1px solid var(--line);white-space:nowrap}
td{padding:4px 10px;border-bottom:1px solid var(--line);white-space:nowrap;vertical-align:middle}
tr:last-child td{border-bottom:0}
td.n,th.n{text-align:right}
tr.db{border-left:4px solid transparent}
tr.circuit-open{border-left-color:var(--bad);background:#fff8f8}
tr.circuit-half-open{border-left-color:#f59f00;background:#fffcf0}
.name{font-weight:600}.up{color:#495057;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.state{display:inline-block;min-width:74px;text-align:center;padding:2px 8px;border-radius:10px;font-weight:600;font-size:12px}
.state.circuit-closed{background:var(--ok-bg);color:var(--ok)}
.state.circuit-half-open{background:var(--warn-bg);color:var(--warn)}
.state.circuit-open{background:var(--bad-bg);color:var(--bad)}
small{color:var(--mute);margin-left:6px}
.dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:6px;background:var(--mute)}
.dot.ok{background:var(--ok)}.dot.bad{background:var(--bad)}
.err{color:var(--bad);font-weight:600}.dim{color:#adb5bd}
.key{font-size:11px;font-weight:600;text-transform:none;letter-spacing:0}.key i{font-style:normal;display:inline-block;width:12px;height:3px;vertical-align:middle;margin:0 3px 0 8px}
svg.chart{display:block}
svg text{font:9px system-ui,sans-serif;fill:var(--mute)}
footer{margin-top:12px;color:var(--mute);font-size:12px}footer a{color:inherit}
body.stale main{opacity:.55}body.stale footer::before{content:"connection lost, retrying \2014  ";color:var(--bad);font-weight:600}
"#;

const SCRIPT: &str = r#"
(function(){var busy=false;setInterval(function(){if(busy)return;busy=true;
fetch(location.pathname,{cache:"no-store"}).then(function(r){if(!r.ok)throw r.status;return r.text()})
.then(function(t){var m=new DOMParser().parseFromString(t,"text/html").getElementById("status");
if(m)document.getElementById("status").replaceWith(m);document.body.classList.remove("stale")})
.catch(function(){document.body.classList.add("stale")}).finally(function(){busy=false})},2000)})();
"#;

/// Text escaped for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "<span class=\"dim\">–</span>".into(),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) if v < 100.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.0} ms"),
    }
}

fn ops(v: f64) -> String {
    if v == 0.0 {
        "<span class=\"dim\">0</span>".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else if v < 10_000.0 {
        format!("{v:.0}")
    } else {
        format!("{:.1}k", v / 1000.0)
    }
}

fn rate(v: f64) -> String {
    if v <= 0.0 {
        "<span class=\"dim\">0 %</span>".into()
    } else if v < 0.001 {
        "<span class=\"err\">&lt;0.1 %</span>".into()
    } else {
        format!("<span class=\"err\">{:.1} %</span>", v * 100.0)
    }
}

/// `12 s`, `3 m 04 s`, `2 h 05 m`, `3 d 04 h`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} m {:02} s", s / 60, s % 60),
        3600..86400 => format!("{} h {:02} m", s / 3600, s % 3600 / 60),
        _ => format!("{} d {:02} h", s / 86400, s % 86400 / 3600),
    }
}

fn span_label(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 120 && s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// The smallest of 1, 2, 5 × 10^k that is at least `v`.
fn nice_ceil(v: f64) -> f64 {
    let v = v.max(0.01);
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&c| c >= v * 0.999)
        .unwrap_or(10.0 * mag)
}

/// The latency chart of one database: p50 and p99 over the history span, open (red)
/// and half-open (amber) intervals shaded, intervals with errors ticked in red.
fn chart(d: &DbStatus, now: f64, span_d: Duration, interval: Duration) -> String {
    const W: f64 = 330.0;
    const H: f64 = 40.0;
    const X0: f64 = 40.0;
    const X1: f64 = 326.0;
    const Y0: f64 = 3.0;
    const Y1: f64 = 37.0;
    let (span, interval) = (span_d.as_secs_f64(), interval.as_secs_f64());
    let x = |t: f64| (X1 - (now - t) / span.max(1e-3) * (X1 - X0)).clamp(X0, X1);
    let top = nice_ceil(
        d.history
            .iter()
            .filter_map(|s| s.p99_ms.or(s.p50_ms))
            .fold(0.0, f64::max),
    );
    let y = |v: f64| Y1 - (v / top).min(1.0) * (Y1 - Y0);
    let mut o = format!(
        "<svg class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"latency of {} over the last {}\">",
        escape(&d.name),
        span_label(span_d)
    );
    for s in &d.history {
        let fill = match s.circuit {
            State::Open => "#ffc9c9",
            State::HalfOpen => "#ffec99",
            State::Closed => continue,
        };
        let (a, b) = (x(s.t - interval), x(s.t));
        let _ = write!(
            o,
            "<rect x=\"{a:.1}\" y=\"{Y0}\" width=\"{:.1}\" height=\"{}\" fill=\"{fill}\"/>",
            (b - a + 0.6).max(1.0),
            Y1 - Y0
        );
    }
    let _ = write!(
        o,
        "<path d=\"M{X0} {Y0}H{X1}M{X0} {:.1}H{X1}\" stroke=\"#f1f3f5\"/><path d=\"M{X0} {Y1}H{X1}\" stroke=\"#ced4da\"/>",
        (Y0 + Y1) / 2.0
    );
    for s in d.history.iter().filter(|s| s.errors > 0.0) {
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{}\" width=\"2\" height=\"4\" fill=\"#e03131\"/>",
            x(s.t) - 1.0,
            Y1 - 4.0
        );
    }
    let mut any = false;
    for (pick, colour, width) in [(0usize, "var(--p50)", 1.5), (1usize, "var(--p99)", 1.5)] {
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for s in &d.history {
            let v = if pick == 0 { s.p50_ms } else { s.p99_ms };
            match v {
                Some(v) => segments
                    .last_mut()
                    .into_iter()
                    .for_each(|seg| seg.push((x(s.t), y(v)))),
                None => segments.push(Vec::new()),
            }
        }
        for seg in segments.iter().filter(|s| !s.is_empty()) {
            any = true;
            if let [(px, py)] = seg.as_slice() {
                let _ = write!(
                    o,
                    "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"1.6\" fill=\"{colour}\"/>"
                );
                continue;
            }
            o.push_str("<polyline fill=\"none\" stroke-linejoin=\"round\" points=\"");
            for (px, py) in seg {
                let _ = write!(o, "{px:.1},{py:.1} ");
            }
            let _ = write!(o, "\" stroke=\"{colour}\" stroke-width=\"{width}\"/>");
        }
    }
    if !any {
        let _ = write!(
            o,
            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">no commands</text></svg>",
            (X0 + X1) / 2.0,
            (Y0 + Y1) / 2.0 + 3.0
        );
        return o;
    }
    let top_label = if top < 1.0 {
        format!("{top:.2}")
    } else {
        format!("{top:.0}")
    };
    let _ = write!(
        o,
        "<text x=\"{lx}\" y=\"{}\" text-anchor=\"end\">{top_label} ms</text><text x=\"{lx}\" y=\"{Y1}\" text-anchor=\"end\">0</text></svg>",
        Y0 + 7.0,
        lx = X0 - 4.0,
    );
    o
}

fn row(o: &mut String, d: &DbStatus, s: &Status) {
    let class = match d.circuit {
        State::Closed => "circuit-closed",
        State::Open => "circuit-open",
        State::HalfOpen => "circuit-half-open",
    };
    let label = match d.circuit {
        State::HalfOpen => "half-open",
        other => other.as_str(),
    };
    let forced = match d.circuit_override {
        Override::Auto => "",
        Override::ForcedOpen | Override::ForcedClosed => "forced · ",
    };
    let health = if !d.probed {
        "<span class=\"dot\"></span><span class=\"dim\">pending</span>".to_string()
    } else if d.healthy {
        format!("<span class=\"dot ok\"></span>{:.2} ms", d.probe_latency_ms)
    } else {
        format!(
            "<span class=\"dot bad\"></span><span class=\"err\" title=\"{}\">down</span>",
            escape(d.last_error.as_deref().unwrap_or(""))
        )
    };
    let _ = write!(
        o,
        "<tr class=\"db {class}\" id=\"db-{}\"><td class=\"n\">{}</td><td class=\"name\">{}</td><td class=\"up\">{}/{}</td>\
         <td><span class=\"state {class}\">{label}</span><small>{forced}{}</small></td><td>{health}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
        d.db,
        d.db,
        escape(&d.name),
        escape(&d.upstream),
        d.upstream_db,
        duration(d.circuit_since),
        ops(d.ops_per_sec),
        rate(d.error_rate),
        ms(d.p50_ms),
        ms(d.p99_ms),
        chart(
            d,
            s.now,
            s.history_span,
            s.sample_interval
        ),
    );
}

/// `GET /`.
pub fn html(s: &Status) -> String {
    let mut o = String::with_capacity(64 * 1024);
    o.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>redis-sidecar status</title><style>");
    o.push_str(STYLE);
    o.push_str("</style></head><body><main id=\"status\">");
    let count = |f: &dyn Fn(&DbStatus) -> bool| s.databases.iter().filter(|d| f(d)).count();
    let problems: Vec<String> = [
        (
            count(&|d| d.circuit == State::Open),
            "circuit open",
            "circuits open",
        ),
        (
            count(&|d| d.circuit == State::HalfOpen),
            "circuit half-open",
            "circuits half-open",
        ),
        (
            count(&|d| d.probed && !d.healthy),
            "upstream down",
            "upstreams down",
        ),
    ]
    .into_iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
    .collect();
    let badge = if problems.is_empty() {
        format!(
            "<span class=\"badge ok\">all {} databases healthy</span>",
            s.databases.len()
        )
    } else {
        format!("<span class=\"badge bad\">{}</span>", problems.join(" · "))
    };
    let _ = write!(
        o,
        "<header><h1>redis-sidecar</h1><span class=\"meta\">v{} · listening <b>{}</b> · up <b>{}</b> · <b id=\"clients\">{}</b> clients · <b>{:.0}</b> ops/s</span>{badge}</header>",
        escape(s.version),
        escape(&s.listen),
        duration(s.uptime),
        s.clients_connected,
        s.ops_per_sec
    );
    let span = span_label(s.history_span);
    let _ = write!(
        o,
        "<div class=\"card\"><table><thead><tr><th class=\"n\">db</th><th>name</th><th>upstream</th><th>circuit</th><th>probe</th>\
         <th class=\"n\">ops/s</th><th class=\"n\">errors</th><th class=\"n\">p50</th><th class=\"n\">p99</th>\
         <th>latency, last {span}<span class=\"key\"><i style=\"background:var(--p50)\"></i>p50<i style=\"background:var(--p99)\"></i>p99</span></th></tr></thead><tbody>"
    );
    for d in &s.databases {
        row(&mut o, d, s);
    }
    let secs = s.now as u64 % 86400;
    let _ = write!(
        o,
        "</tbody></table></div><footer>updated {:02}:{:02}:{:02} UTC · figures per {} sample · refreshes every 2 s · \
         <a href=\"/status.json\">/status.json</a> · <a href=\"/metrics\">/metrics</a></footer></main><script>{SCRIPT}</script></body></html>",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        span_label(s.sample_interval)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Sample;

    fn db(name: &str, circuit: State) -> DbStatus {
        DbStatus {
            name: name.into(),
            db: 3,
            upstream: "127.0.0.1:6379".into(),
            upstream_db: 3,
            circuit,
            circuit_override: Override::ForcedOpen,
            circuit_since: Duration::from_secs(75),
            healthy: true,
            probed: true,
            probe_latency_ms: 0.25,
            last_error: None,
            ops_per_sec: 120.0,
            error_rate: 0.0,
            p50_ms: Some(0.1),
            p99_ms: Some(1.2),
            history: (0..5)
                .map(|i| Sample {
                    t: 1000.0 + i as f64 * 5.0,
                    ops: 10.0,
                    errors: 0.0,
                    p50_ms: (i != 2).then_some(0.1),
                    p99_ms: (i != 2).then_some(1.2),
                    circuit,
                })
                .collect(),
        }
    }

    fn status(dbs: Vec<DbStatus>) -> Status {
        Status {
            version: "0.1.0",
            uptime: Duration::from_secs(3700),
            listen: "127.0.0.1:6380".into(),
            clients_connected: 4,
            ops_per_sec: 120.0,
            sample_interval: Duration::from_secs(5),
            history_span: Duration::from_secs(600),
            now: 1020.0,
            databases: dbs,
        }
    }

    #[test]
    fn names_are_escaped() {
        let page = html(&status(vec![db("<b>x</b>&\"", State::Closed)]));
        assert!(page.contains("&lt;b&gt;x&lt;/b&gt;&amp;&quot;"));
        assert!(!page.contains("<b>x</b>"));
    }

    #[test]
    fn rows_states_and_charts() {
        let page = html(&status(vec![
            db("main", State::Open),
            db("cache", State::Closed),
        ]));
        assert_eq!(page.matches("<tr class=\"db ").count(), 2);
        assert!(page.contains(
            "<span class=\"state circuit-open\">open</span><small>forced · 1 m 15 s</small>"
        ));
        assert_eq!(page.matches("<svg class=\"chart\"").count(), 2);
        // A gap in the samples splits the line: two segments per percentile.
        assert_eq!(page.matches("<polyline").count(), 8);
        assert!(page.contains("fill=\"#ffc9c9\""), "open intervals shaded");
        assert!(page.contains("latency, last 10 min"));
        assert!(page.contains("<span class=\"badge bad\">1 circuit open</span>"));
    }

    #[test]
    fn chart_scale_and_durations() {
        assert_eq!(nice_ceil(1.2), 2.0);
        assert_eq!(nice_ceil(0.3), 0.5);
        assert_eq!(nice_ceil(5.0), 5.0);
        assert_eq!(nice_ceil(0.0), 0.01);
        assert_eq!(duration(Duration::from_secs(59)), "59 s");
        assert_eq!(duration(Duration::from_secs(7260)), "2 h 01 m");
    }
}
