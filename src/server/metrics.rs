//! `GET /metrics`: counters in the Prometheus text format, written by hand (a handful of
//! series do not need a metrics framework).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds: from an OCR of a small crop to a
/// question that reads a 12-megapixel photo several times.
const BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (c, &b) in self.counts.iter_mut().zip(BUCKETS.iter()) {
            if secs <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Default)]
struct Counters {
    /// (endpoint, status) → requests.
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    /// agent → (calls, seconds).
    agents: BTreeMap<String, (u64, f64)>,
}

/// The server's counters; one per server, shared by every request.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    /// Requests admitted and waiting for a worker.
    pub queued: AtomicUsize,
    /// Requests being worked on.
    pub running: AtomicUsize,
    /// (model, seconds to load), filled at start-up.
    loads: Mutex<Vec<(String, f64)>>,
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, status: u16, took: Duration) {
        if let Ok(mut c) = self.counters.lock() {
            *c.requests.entry((endpoint, status)).or_default() += 1;
            c.latency
                .entry(endpoint)
                .or_default()
                .observe(took.as_secs_f64());
        }
    }

    pub fn agent(&self, agent: &str, took: Duration) {
        if let Ok(mut c) = self.counters.lock() {
            let e = c.agents.entry(agent.to_string()).or_default();
            e.0 += 1;
            e.1 += took.as_secs_f64();
        }
    }

    pub fn model_loaded(&self, model: &str, took: Duration) {
        if let Ok(mut l) = self.loads.lock() {
            l.push((model.to_string(), took.as_secs_f64()));
        }
    }

    /// The Prometheus text exposition of every series; `sessions` is the live session count.
    pub fn render(&self, sessions: usize) -> String {
        let mut o = String::new();
        let c = match self.counters.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let _ = writeln!(
            o,
            "# HELP p2g_requests_total Requests answered, by endpoint and HTTP status."
        );
        let _ = writeln!(o, "# TYPE p2g_requests_total counter");
        for ((endpoint, status), n) in &c.requests {
            let _ = writeln!(
                o,
                "p2g_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP p2g_request_seconds Time from admission to response."
        );
        let _ = writeln!(o, "# TYPE p2g_request_seconds histogram");
        for (endpoint, h) in &c.latency {
            for (b, n) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    o,
                    "p2g_request_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{b}\"}} {n}"
                );
            }
            let _ = writeln!(
                o,
                "p2g_request_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "p2g_request_seconds_sum{{endpoint=\"{endpoint}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "p2g_request_seconds_count{{endpoint=\"{endpoint}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(o, "# HELP p2g_agent_calls_total Agent calls, by agent.");
        let _ = writeln!(o, "# TYPE p2g_agent_calls_total counter");
        for (agent, (n, _)) in &c.agents {
            let _ = writeln!(o, "p2g_agent_calls_total{{agent=\"{agent}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP p2g_agent_seconds_total Time spent in agent calls, by agent."
        );
        let _ = writeln!(o, "# TYPE p2g_agent_seconds_total counter");
        for (agent, (_, s)) in &c.agents {
            let _ = writeln!(o, "p2g_agent_seconds_total{{agent=\"{agent}\"}} {s}");
        }
        drop(c);
        let gauge = |o: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name} {v}");
        };
        gauge(
            &mut o,
            "p2g_queue_depth",
            "Requests admitted and waiting for a worker.",
            self.queued.load(Ordering::Relaxed),
        );
        gauge(
            &mut o,
            "p2g_in_flight",
            "Requests being worked on.",
            self.running.load(Ordering::Relaxed),
        );
        gauge(&mut o, "p2g_sessions", "Sessions held.", sessions);
        let _ = writeln!(
            o,
            "# HELP p2g_model_load_seconds Time to load each model at start-up."
        );
        let _ = writeln!(o, "# TYPE p2g_model_load_seconds gauge");
        if let Ok(l) = self.loads.lock() {
            for (model, s) in l.iter() {
                let _ = writeln!(o, "p2g_model_load_seconds{{model=\"{model}\"}} {s}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.request("ask", 200, Duration::from_millis(700));
        m.request("ask", 429, Duration::from_millis(1));
        m.agent("ocr", Duration::from_millis(500));
        m.model_loaded("controller", Duration::from_secs(2));
        let text = m.render(3);
        assert!(text.contains("p2g_requests_total{endpoint=\"ask\",status=\"200\"} 1"));
        assert!(text.contains("p2g_requests_total{endpoint=\"ask\",status=\"429\"} 1"));
        assert!(text.contains("p2g_request_seconds_bucket{endpoint=\"ask\",le=\"0.5\"} 1"));
        assert!(text.contains("p2g_request_seconds_bucket{endpoint=\"ask\",le=\"1\"} 2"));
        assert!(text.contains("p2g_request_seconds_count{endpoint=\"ask\"} 2"));
        assert!(text.contains("p2g_agent_seconds_total{agent=\"ocr\"} 0.5"));
        assert!(text.contains("p2g_sessions 3"));
        assert!(text.contains("p2g_model_load_seconds{model=\"controller\"} 2"));
    }
}
