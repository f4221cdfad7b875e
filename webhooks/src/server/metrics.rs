//! A small Prometheus registry: labelled counters, rendered in the text exposition format.
//!
//! Only what intake needs today (deliveries by forge, event and outcome); every series is
//! prefixed `ferry_`. Kept dependency-free on purpose: a counter is an atomic in a map.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A series: metric name and its labels.
type Series = (String, Vec<(String, String)>);

/// Counters keyed by (name, sorted labels).
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Series, u64>>,
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
        out
    }
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
}
