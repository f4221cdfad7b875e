//! A small Prometheus registry: labelled counters, histograms and gauges, rendered in the text
//! exposition format.
//!
//! Counters and histograms are recorded where things happen (intake, planning, submission,
//! reporting); gauges that describe the store (runs by state, outbox depth) are read from the
//! store when `/metrics` is scraped, so every replica reports the same truth. Every series is
//! prefixed `ferry_`. Kept dependency-free on purpose: a series is a number in a map behind a lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A series: metric name and its labels.
type Series = (String, Vec<(String, String)>);

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// A histogram's state: cumulative bucket counts, sum and count.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Counters and histograms keyed by (name, sorted labels).
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Series, u64>>,
    histograms: Mutex<BTreeMap<Series, Histogram>>,
    help: Mutex<BTreeMap<String, String>>,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(&self, name: &str, help: &str, labels: &[(&str, &str)]) {
        let key = series(name, labels);
        if let Ok(mut c) = self.counters.lock() {
            *c.entry(key).or_insert(0) += 1;
        }
        if let Ok(mut h) = self.help.lock() {
            h.entry(name.to_owned()).or_insert_with(|| help.to_owned());
        }
    }

    /// Records one observation (seconds) in a histogram with [`LATENCY_BUCKETS`].
    pub fn observe(&self, name: &str, help: &str, labels: &[(&str, &str)], seconds: f64) {
        let key = series(name, labels);
        if let Ok(mut h) = self.histograms.lock() {
            let entry = h.entry(key).or_insert_with(|| Histogram {
                buckets: vec![0; LATENCY_BUCKETS.len()],
                ..Histogram::default()
            });
            for (slot, bound) in entry.buckets.iter_mut().zip(LATENCY_BUCKETS) {
                if seconds <= bound {
                    *slot += 1;
                }
            }
            entry.sum += seconds;
            entry.count += 1;
        }
        if let Ok(mut h) = self.help.lock() {
            h.entry(name.to_owned()).or_insert_with(|| help.to_owned());
        }
    }

    /// How many observations a histogram has (for tests).
    pub fn observations(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = series(name, labels);
        self.histograms
            .lock()
            .ok()
            .and_then(|h| h.get(&key).map(|h| h.count))
            .unwrap_or(0)
    }

    /// The value of one counter (for tests).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = series(name, labels);
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&key).copied())
            .unwrap_or(0)
    }

    /// Renders every counter in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let help = self.help.lock().map(|h| h.clone()).unwrap_or_default();
        let mut last = "";
        for ((name, labels), value) in &counters {
            if name != last {
                let text = help.get(name).map_or("", String::as_str);
                let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} counter");
            }
            last = name;
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
        }
        let histograms = self
            .histograms
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default();
        let mut last = "";
        for ((name, labels), h) in &histograms {
            if name != last {
                let text = help.get(name).map_or("", String::as_str);
                let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} histogram");
            }
            last = name;
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let with = |extra: String| {
                let mut all = labels.clone();
                all.push(extra);
                all.join(",")
            };
            for (count, bound) in h.buckets.iter().zip(LATENCY_BUCKETS) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{}}} {count}",
                    with(format!("le=\"{bound}\""))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{}}} {}",
                with("le=\"+Inf\"".into()),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{{}}} {}", labels.join(","), h.sum);
            let _ = writeln!(out, "{name}_count{{{}}} {}", labels.join(","), h.count);
        }
        out
    }
}

/// Renders gauges (the value of each series now) in Prometheus text format.
pub fn render_gauges(name: &str, help: &str, values: &[(Vec<(&str, String)>, f64)]) -> String {
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (labels, value) in values {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
    out
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    (name.to_owned(), labels)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_counters() {
        let m = Metrics::default();
        m.inc(
            "ferry_deliveries_total",
            "Webhook deliveries.",
            &[("forge", "gitlab"), ("outcome", "stored")],
        );
        m.inc(
            "ferry_deliveries_total",
            "Webhook deliveries.",
            &[("forge", "gitlab"), ("outcome", "stored")],
        );
        assert_eq!(
            m.get(
                "ferry_deliveries_total",
                &[("forge", "gitlab"), ("outcome", "stored")]
            ),
            2
        );
        assert_eq!(
            m.render(),
            "# HELP ferry_deliveries_total Webhook deliveries.\n# TYPE ferry_deliveries_total counter\nferry_deliveries_total{forge=\"gitlab\",outcome=\"stored\"} 2\n"
        );
    }

    #[test]
    fn renders_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe("ferry_x_seconds", "X.", &[("executor", "local")], 0.003);
        m.observe("ferry_x_seconds", "X.", &[("executor", "local")], 2.0);
        assert_eq!(
            m.observations("ferry_x_seconds", &[("executor", "local")]),
            2
        );
        let text = m.render();
        assert!(
            text.contains("# TYPE ferry_x_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("ferry_x_seconds_bucket{executor=\"local\",le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("ferry_x_seconds_bucket{executor=\"local\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ferry_x_seconds_bucket{executor=\"local\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ferry_x_seconds_sum{executor=\"local\"} 2.003\n"),
            "{text}"
        );
        assert!(
            text.contains("ferry_x_seconds_count{executor=\"local\"} 2\n"),
            "{text}"
        );
        let g = render_gauges(
            "ferry_runs",
            "Runs by state.",
            &[(vec![("state", "queued".into())], 3.0)],
        );
        assert_eq!(
            g,
            "# HELP ferry_runs Runs by state.\n# TYPE ferry_runs gauge\nferry_runs{state=\"queued\"} 3\n"
        );
    }
}
