//! Where time and memory went: a shared event log (reader and executor both write to it, so
//! tests can check the order of reads and computes), and per-step statistics derived from it.

use serde_json::json;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvKind {
    ReadStart,
    ReadEnd,
    WaitStart,
    WaitEnd,
    ComputeStart,
    ComputeEnd,
}

/// One timestamped event: `t` seconds since the executor started; `layer` is the layer index
/// (`n_layer` for the output head).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub t: f64,
    pub kind: EvKind,
    pub layer: usize,
}

/// Events kept: the newest ones (about 6 MiB; a 62-layer model logs ~250 a token).
const EVENTS_KEPT: usize = 1 << 18;

/// The shared log (bounded: the oldest events go first).
#[derive(Debug, Clone)]
pub struct Events {
    t0: Instant,
    log: Arc<Mutex<VecDeque<Event>>>,
}

impl Events {
    pub fn new() -> Events {
        Events {
            t0: Instant::now(),
            log: Arc::new(Mutex::new(VecDeque::with_capacity(1 << 12))),
        }
    }

    pub fn push(&self, kind: EvKind, layer: usize) {
        let t = self.t0.elapsed().as_secs_f64();
        if let Ok(mut l) = self.log.lock() {
            if l.len() == EVENTS_KEPT {
                l.pop_front();
            }
            l.push_back(Event { t, kind, layer });
        }
    }

    pub fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub fn snapshot(&self) -> Vec<Event> {
        self.log
            .lock()
            .map(|l| l.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// Time of one layer in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTime {
    pub layer: usize,
    pub streamed: bool,
    /// Computed on the CPU from the memory map (`--host-layers`).
    pub host: bool,
    /// Seconds the executor waited for the layer's bytes.
    pub wait_s: f64,
    pub compute_s: f64,
}

/// One `eval` call (a prompt batch or one decoded token).
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    pub n_tokens: usize,
    pub bytes_streamed: u64,
    /// Seconds the reader spent on the layers this step consumed (copy time).
    pub read_s: f64,
    pub wait_s: f64,
    pub compute_s: f64,
    pub total_s: f64,
    pub layers: Vec<LayerTime>,
    pub peak_rss: Option<u64>,
}

impl StepStats {
    /// An empty record of a step of `n_tokens` over `n_layer` layers.
    pub fn new(n_tokens: usize, n_layer: usize) -> StepStats {
        StepStats {
            n_tokens,
            bytes_streamed: 0,
            read_s: 0.0,
            wait_s: 0.0,
            compute_s: 0.0,
            total_s: 0.0,
            layers: Vec::with_capacity(n_layer),
            peak_rss: None,
        }
    }

    /// Streamed bytes over the wall time of the step.
    pub fn effective_gbps(&self) -> f64 {
        if self.total_s > 0.0 {
            self.bytes_streamed as f64 / self.total_s / 1e9
        } else {
            0.0
        }
    }

    /// Streamed bytes over the reader's busy time.
    pub fn read_gbps(&self) -> f64 {
        if self.read_s > 0.0 {
            self.bytes_streamed as f64 / self.read_s / 1e9
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "n_tokens": self.n_tokens,
            "bytes_streamed": self.bytes_streamed,
            "read_s": self.read_s,
            "read_gbps": self.read_gbps(),
            "effective_gbps": self.effective_gbps(),
            "wait_s": self.wait_s,
            "compute_s": self.compute_s,
            "total_s": self.total_s,
            "peak_rss": self.peak_rss,
            "layers": self.layers.iter().map(|l| json!({
                "layer": l.layer, "streamed": l.streamed, "host": l.host, "wait_s": l.wait_s, "compute_s": l.compute_s
            })).collect::<Vec<_>>(),
        })
    }

    /// A human-readable report (stderr).
    pub fn report(&self, step: usize) -> String {
        let mut s = format!(
            "step {step}: {} token(s), {:.2} ms total, compute {:.2} ms, waited {:.2} ms ({:.0}%), streamed {} ({:.2} GB/s read, {:.2} GB/s effective), peak RSS {}\n",
            self.n_tokens,
            self.total_s * 1e3,
            self.compute_s * 1e3,
            self.wait_s * 1e3,
            if self.total_s > 0.0 { 100.0 * self.wait_s / self.total_s } else { 0.0 },
            crate::engine::plan::fmt_size(self.bytes_streamed),
            self.read_gbps(),
            self.effective_gbps(),
            self.peak_rss.map_or("?".into(), crate::engine::plan::fmt_size),
        );
        for l in &self.layers {
            s.push_str(&format!(
                "  layer {:>3} {:<8} wait {:8.3} ms  compute {:8.3} ms\n",
                l.layer,
                if l.host {
                    "host"
                } else if l.streamed {
                    "streamed"
                } else {
                    "resident"
                },
                l.wait_s * 1e3,
                l.compute_s * 1e3
            ));
        }
        s
    }
}
