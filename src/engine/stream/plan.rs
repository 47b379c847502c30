//! The streaming plan: from the device budget and the exact sizes of what must live on the
//! device, which layers stay resident and which stream through the ring.
//!
//! Fixed on the device: the output head (`token_embd`, tied, plus `output_norm`; it also feeds
//! the embedding lookup), the KV cache of every layer, the state (activations, inputs, masks)
//! and the compute buffer (measured by ggml's allocator on the worst-case graphs). The ring is
//! `n_slots` buffers of the largest streamed layer. Resident layers are spread evenly
//! while they fit beside the ring; if every layer fits, nothing streams and there is no ring.

use crate::engine::plan::fmt_size;
use serde_json::json;
use std::fmt;

/// Sizes the planner works from (bytes, as the backend allocates them).
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    /// Per layer, its bytes in each of the device's weight buffer types (the columns are
    /// [`Sizes::bufts`]): layers are not uniform (K-quant mixtures give some more bits), and
    /// each tensor lives in the buffer type llama.cpp would give it.
    pub layers: Vec<Vec<u64>>,
    /// Per layer, the bytes of its tensors in the file (what crosses per token when it streams).
    pub layer_file_bytes: Vec<u64>,
    /// Names of the buffer types, one per column of `layers`.
    pub bufts: Vec<String>,
    pub output: u64,
    pub kv: u64,
    pub state: u64,
    pub compute: u64,
    /// Kept free for what the device backend allocates outside our buffers (a GPU's memory
    /// pool and BLAS workspace; 0 on the CPU).
    pub scratch: u64,
}

impl Sizes {
    /// Device bytes of layer `l` (all buffer types).
    pub fn layer(&self, l: usize) -> u64 {
        self.layers[l].iter().sum()
    }

    /// A ring slot for `streamed`: per buffer type, room for the largest of those layers.
    pub fn slot_segments(&self, streamed: &[usize]) -> Vec<u64> {
        (0..self.bufts.len())
            .map(|b| {
                streamed
                    .iter()
                    .map(|&l| self.layers[l][b])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn largest_slot(&self) -> u64 {
        let all: Vec<usize> = (0..self.layers.len()).collect();
        self.slot_segments(&all).iter().sum()
    }
}

/// Which streamed layers compute on the CPU from the memory-mapped file instead of crossing
/// into the device (`--host-layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostLayers {
    /// Every layer computes on the device.
    #[default]
    Off,
    /// The last N streamed layers.
    N(usize),
    /// As many as the measured fill, device and host times say pays (see [`host_split`]).
    Auto,
}

impl std::str::FromStr for HostLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(HostLayers::Auto),
            "off" | "0" => Ok(HostLayers::Off),
            n => n
                .parse()
                .map(HostLayers::N)
                .map_err(|_| format!("'{s}' is not a number of layers, 'auto' or 'off'")),
        }
    }
}

/// What `--host-layers auto` measured on one streamed layer for a one-token step, and chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostCalibration {
    /// Seconds to bring the layer into a ring slot (read + upload, the path streaming uses).
    pub fill_s: f64,
    /// Seconds to compute it on the device.
    pub device_s: f64,
    /// Seconds to compute it on the CPU from the memory map.
    pub host_s: f64,
    /// Streamed layers moved to the host.
    pub chosen: usize,
}

/// Where a layer computes, in execution order (for [`step_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Resident,
    Streamed,
    Host,
}

/// Seconds per one-token step in the steady state, simulated: layers compute one after the
/// other (`device_s` each on the device, `host_s` on the host); the reader fills the streamed
/// layers' slots in order, `fill_s` each, across step boundaries, at most `n_slots` ahead: a
/// fill starts when the reader is free and its slot's previous layer finished computing; a
/// streamed layer computes once its fill is done. Four steps are simulated, the last timed.
pub fn step_time(order: &[Where], n_slots: usize, fill_s: f64, device_s: f64, host_s: f64) -> f64 {
    let n_slots = n_slots.max(1);
    let (mut t, mut reader) = (0f64, 0f64);
    let mut compute_end: Vec<f64> = Vec::new();
    let mut last_step = 0f64;
    for _ in 0..4 {
        let start = t;
        for w in order {
            match w {
                Where::Resident => t += device_s,
                Where::Host => t += host_s,
                Where::Streamed => {
                    let j = compute_end.len();
                    let slot_free = if j >= n_slots {
                        compute_end[j - n_slots]
                    } else {
                        0.0
                    };
                    reader = reader.max(slot_free) + fill_s;
                    t = t.max(reader) + device_s;
                    compute_end.push(t);
                }
            }
        }
        last_step = t - start;
    }
    last_step
}

/// How many of the plan's streamed layers (taken from the end) to compute on the host, from
/// one layer's fill, device and host compute times: the k with the smallest [`step_time`]
/// (the first such k, so none when moving does not help).
pub fn host_split(plan: &Plan, fill_s: f64, device_s: f64, host_s: f64) -> usize {
    let n = plan.resident.len() + plan.streamed.len() + plan.host.len();
    let s = plan.streamed.len();
    let order = |k: usize| -> Vec<Where> {
        let host: Vec<usize> = plan.streamed[s - k..].to_vec();
        (0..n)
            .map(|l| {
                if plan.host.contains(&l) || host.contains(&l) {
                    Where::Host
                } else if plan.streamed.contains(&l) {
                    Where::Streamed
                } else {
                    Where::Resident
                }
            })
            .collect()
    };
    let mut best = (0, f64::INFINITY);
    for k in 0..=s {
        let t = step_time(&order(k), plan.n_slots, fill_s, device_s, host_s);
        if t < best.1 - 1e-12 {
            best = (k, t);
        }
    }
    best.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub budget: u64,
    pub n_slots: usize,
    pub resident: Vec<usize>,
    pub streamed: Vec<usize>,
    /// Layers computed on the CPU from the memory map (taken from the end of the streamed
    /// ones; not in device memory; their KV cache is in host memory).
    pub host: Vec<usize>,
    /// `--host-layers auto`'s measurements, once loaded.
    pub calibration: Option<HostCalibration>,
    /// A ring slot's bytes per buffer type (the columns of `Sizes::layers`).
    pub slot_segments: Vec<u64>,
    pub sizes: Sizes,
    /// Tokens per graph: the micro-batch prompts are split into (`-b`), and the one requested
    /// when it was reduced to fit the budget.
    pub n_ubatch: u32,
    pub n_ubatch_requested: u32,
    /// Logit rows the output buffer holds per graph (1: only the last position is asked for).
    pub n_outputs: u32,
    /// Weight bytes crossing into the ring per step (every streamed layer once).
    pub streamed_bytes_per_token: u64,
    /// Measured source -> host memory copy bandwidth of one streamed layer (bytes/s): the
    /// first read (from disk unless the file is cached) and a second one (from the page
    /// cache, unless `--direct-io`), when measured.
    pub read_bw: Option<f64>,
    pub read_bw_again: Option<f64>,
}

impl Plan {
    pub fn fixed_bytes(&self) -> u64 {
        self.sizes.output
            + self.sizes.kv
            + self.sizes.state
            + self.sizes.compute
            + self.sizes.scratch
    }

    pub fn resident_bytes(&self) -> u64 {
        self.resident.iter().map(|&l| self.sizes.layer(l)).sum()
    }

    /// One ring slot (all its buffer types).
    pub fn slot_bytes(&self) -> u64 {
        self.slot_segments.iter().sum()
    }

    pub fn ring_bytes(&self) -> u64 {
        if self.streamed.is_empty() {
            0
        } else {
            self.n_slots as u64 * self.slot_bytes()
        }
    }

    /// Device memory the plan allocates.
    pub fn device_bytes(&self) -> u64 {
        self.fixed_bytes() + self.resident_bytes() + self.ring_bytes()
    }

    /// Seconds per token if streaming ran at the measured copy bandwidth and nothing else
    /// took time (the floor of a decode step).
    pub fn floor_s_per_token(&self) -> Option<f64> {
        self.floor_at(self.read_bw)
    }

    /// The same at the second read's bandwidth (the file's pages cached).
    pub fn floor_again_s_per_token(&self) -> Option<f64> {
        self.floor_at(self.read_bw_again)
    }

    fn floor_at(&self, bw: Option<f64>) -> Option<f64> {
        bw.filter(|&b| b > 0.0)
            .map(|b| self.streamed_bytes_per_token as f64 / b)
    }

    /// A budget with room for exactly the fixed part, `resident` layers (spread as [`plan`]
    /// spreads them) and `n_slots` slots sized for the others: under it [`plan`] keeps at least
    /// that many layers resident (more if, layers differing in size, more fit).
    pub fn budget_for(&self, resident: usize, n_slots: usize) -> u64 {
        let n = self.sizes.layers.len();
        let res = spread(resident.min(n), n);
        let streamed: Vec<usize> = (0..n).filter(|l| !res.contains(l)).collect();
        let slot: u64 = self.sizes.slot_segments(&streamed).iter().sum();
        self.fixed_bytes()
            + res.iter().map(|&l| self.sizes.layer(l)).sum::<u64>()
            + if streamed.is_empty() {
                0
            } else {
                n_slots as u64 * slot
            }
    }

    /// Moves the last `k` streamed layers to the host (at most all of them).
    pub fn move_to_host(&mut self, k: usize) {
        let k = k.min(self.streamed.len());
        let moved = self.streamed.split_off(self.streamed.len() - k);
        self.host.extend(moved);
        self.host.sort_unstable();
        self.streamed_bytes_per_token = self
            .streamed
            .iter()
            .map(|&l| self.sizes.layer_file_bytes[l])
            .sum();
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "budget": self.budget,
            "device_bytes": self.device_bytes(),
            "n_slots": self.n_slots,
            "slot_bytes": self.slot_bytes(),
            "slot_segments": self.sizes.bufts.iter().zip(&self.slot_segments)
                .map(|(b, n)| json!({"buffer_type": b, "bytes": n})).collect::<Vec<_>>(),
            "n_ubatch": self.n_ubatch,
            "n_ubatch_requested": self.n_ubatch_requested,
            "n_outputs": self.n_outputs,
            "resident_layers": self.resident,
            "streamed_layers": self.streamed,
            "host_layers": self.host,
            "host_calibration": self.calibration.map(|c| json!({
                "fill_s": c.fill_s, "device_s": c.device_s, "host_s": c.host_s, "chosen": c.chosen,
            })),
            "output_bytes": self.sizes.output,
            "kv_bytes": self.sizes.kv,
            "state_bytes": self.sizes.state,
            "compute_bytes": self.sizes.compute,
            "scratch_bytes": self.sizes.scratch,
            "resident_bytes": self.resident_bytes(),
            "streamed_bytes_per_token": self.streamed_bytes_per_token,
            "read_bandwidth_bytes_per_s": self.read_bw,
            "read_again_bandwidth_bytes_per_s": self.read_bw_again,
            "floor_again_s_per_token": self.floor_again_s_per_token(),
            "floor_s_per_token": self.floor_s_per_token(),
        })
    }
}

fn ranges(v: &[usize]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            format!("{}", v[i])
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

impl Plan {
    /// " (AMX 10 MiB + CPU 1 MiB)" when a slot spans more than one buffer type.
    fn segments_text(&self) -> String {
        let parts: Vec<String> = self
            .sizes
            .bufts
            .iter()
            .zip(&self.slot_segments)
            .filter(|(_, &n)| n > 0)
            .map(|(b, &n)| format!("{b} {}", fmt_size(n)))
            .collect();
        if parts.len() > 1 {
            format!(" ({})", parts.join(" + "))
        } else {
            String::new()
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "stream plan: budget {}, device use {}",
            fmt_size(self.budget),
            fmt_size(self.device_bytes())
        )?;
        writeln!(
            f,
            "  fixed: output head {} + KV cache {} + state {} + compute buffer {} (micro-batch {}{}, {} logit row{} per graph)",
            fmt_size(self.sizes.output),
            fmt_size(self.sizes.kv),
            fmt_size(self.sizes.state),
            fmt_size(self.sizes.compute),
            self.n_ubatch,
            if self.n_ubatch < self.n_ubatch_requested {
                format!(", reduced from {} to fit the budget: -b {} gives llama.cpp the same", self.n_ubatch_requested, self.n_ubatch)
            } else {
                String::new()
            },
            self.n_outputs,
            if self.n_outputs == 1 { "" } else { "s" }
        )?;
        if self.sizes.scratch > 0 {
            writeln!(
                f,
                "  kept free for the backend's own scratch: {}",
                fmt_size(self.sizes.scratch)
            )?;
        }
        writeln!(
            f,
            "  resident layers ({}): {} = {}",
            self.resident.len(),
            ranges(&self.resident),
            fmt_size(self.resident_bytes())
        )?;
        write!(
            f,
            "  streamed layers ({}): {}",
            self.streamed.len(),
            ranges(&self.streamed)
        )?;
        if !self.streamed.is_empty() {
            write!(
                f,
                " through a ring of {} x {}{} = {}\n  streamed per token: {}",
                self.n_slots,
                fmt_size(self.slot_bytes()),
                self.segments_text(),
                fmt_size(self.ring_bytes()),
                fmt_size(self.streamed_bytes_per_token)
            )?;
            if let (Some(bw), Some(fl)) = (self.read_bw, self.floor_s_per_token()) {
                write!(
                    f,
                    "\n  one layer read: {:.2} GB/s first -> floor {:.3} s/token",
                    bw / 1e9,
                    fl
                )?;
                if let (Some(bw), Some(fl)) = (self.read_bw_again, self.floor_again_s_per_token()) {
                    write!(
                        f,
                        "; {:.2} GB/s again (cached) -> {:.3} s/token",
                        bw / 1e9,
                        fl
                    )?;
                }
            }
        }
        if !self.host.is_empty() {
            write!(
                f,
                "\n  host layers ({}): {} computed on the CPU from the memory map",
                self.host.len(),
                ranges(&self.host)
            )?;
        }
        if let Some(c) = self.calibration {
            write!(
                f,
                "\n  --host-layers auto: one layer fills a slot in {:.2} ms, computes in {:.2} ms on the device, {:.2} ms on the CPU -> {} to the CPU",
                c.fill_s * 1e3,
                c.device_s * 1e3,
                c.host_s * 1e3,
                c.chosen
            )?;
        }
        Ok(())
    }
}

/// `r` of `n` layer indices spread evenly (`floor(i n / r)`, layer 0 first). Resident layers
/// between streamed ones keep the reader busy: while a resident layer computes, the ring has
/// a free slot to fill. Kept as one prefix, the reader would stall once the ring is full for
/// the whole resident stretch (measured on the 27B shape: docs/BENCHMARKS.md).
pub fn spread(r: usize, n: usize) -> Vec<usize> {
    if r == 0 {
        return Vec::new();
    }
    (0..r).map(|i| i * n / r).collect()
}

/// Plans under `budget`, or says what does not fit. The micro-batch fields are the caller's
/// (it sized the compute buffer for them).
pub fn plan(budget: u64, n_slots: usize, sizes: Sizes) -> Result<Plan, String> {
    let n = sizes.layers.len();
    let fixed = sizes.output + sizes.kv + sizes.state + sizes.compute + sizes.scratch;
    let all: u64 = (0..n).map(|l| sizes.layer(l)).sum();
    let mk = |resident: Vec<usize>, streamed: Vec<usize>| {
        let per_token = streamed.iter().map(|&l| sizes.layer_file_bytes[l]).sum();
        let slot_segments = if streamed.is_empty() {
            vec![0; sizes.bufts.len()]
        } else {
            sizes.slot_segments(&streamed)
        };
        Plan {
            budget,
            n_slots,
            resident,
            streamed,
            host: Vec::new(),
            calibration: None,
            slot_segments,
            sizes: sizes.clone(),
            n_ubatch: 0,
            n_ubatch_requested: 0,
            n_outputs: 0,
            streamed_bytes_per_token: per_token,
            read_bw: None,
            read_bw_again: None,
        }
    };
    let fixed_msg = || {
        format!(
            "output head (token_embd + output_norm) {} + KV cache {} + state {} + compute buffer {}{}",
            fmt_size(sizes.output),
            fmt_size(sizes.kv),
            fmt_size(sizes.state),
            fmt_size(sizes.compute),
            if sizes.scratch > 0 {
                format!(" + backend scratch {}", fmt_size(sizes.scratch))
            } else {
                String::new()
            }
        )
    };
    if fixed > budget {
        return Err(format!(
            "device budget {} does not fit the fixed part: {} = {}",
            fmt_size(budget),
            fixed_msg(),
            fmt_size(fixed)
        ));
    }
    if fixed + all <= budget {
        return Ok(mk((0..n).collect(), Vec::new()));
    }
    if n_slots == 0 {
        return Err("--prefetch must be at least 1 ring slot".into());
    }
    let left = budget - fixed;
    // Keep r layers resident, spread evenly (see `spread`); the ring holds the largest of the
    // rest in each buffer type.
    let mut r = n;
    loop {
        let resident = spread(r, n);
        let streamed: Vec<usize> = (0..n).filter(|l| !resident.contains(l)).collect();
        let slot: u64 = sizes.slot_segments(&streamed).iter().sum();
        let res_bytes: u64 = resident.iter().map(|&l| sizes.layer(l)).sum();
        if r < n && res_bytes + n_slots as u64 * slot <= left {
            return Ok(mk(resident, streamed));
        }
        if r == 0 {
            let slot = sizes.largest_slot();
            return Err(format!(
                "device budget {} does not fit a ring of {} slot(s) x {} (the largest layer) beside the fixed part: {} = {}; at least {} is needed",
                fmt_size(budget),
                n_slots,
                fmt_size(slot),
                fixed_msg(),
                fmt_size(fixed),
                fmt_size(fixed + n_slots as u64 * slot)
            ));
        }
        r -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(n: usize) -> Sizes {
        Sizes {
            layers: vec![vec![100]; n],
            layer_file_bytes: vec![100; n],
            bufts: vec!["CPU".into()],
            output: 50,
            kv: 20,
            state: 5,
            compute: 25,
            scratch: 0,
        }
    }

    #[test]
    fn everything_resident_when_it_fits() {
        let p = plan(700, 2, sizes(6)).unwrap();
        assert_eq!(p.resident, (0..6).collect::<Vec<_>>());
        assert!(p.streamed.is_empty());
        assert_eq!(p.device_bytes(), 700);
    }

    #[test]
    fn streams_the_rest_through_the_ring() {
        let p = plan(500, 2, sizes(6)).unwrap();
        assert_eq!(p.resident, vec![0, 3]);
        assert_eq!(p.streamed, vec![1, 2, 4, 5]);
        assert_eq!(p.streamed_bytes_per_token, 400);
        assert_eq!(p.device_bytes(), 500);
        let p = plan(300, 2, sizes(6)).unwrap();
        assert!(p.resident.is_empty());
        assert_eq!(p.device_bytes(), 300);
    }

    #[test]
    fn step_time_follows_the_ring() {
        use Where::*;
        // One slot, two streamed layers: fill 4, compute 1, the second fill waits for the
        // first layer's compute: 10 a step.
        assert_eq!(step_time(&[Streamed, Streamed], 1, 4.0, 1.0, 3.0), 10.0);
        // The second on the host (3): its fill disappears and the next step's first fill
        // overlaps it: 5 a step.
        assert_eq!(step_time(&[Streamed, Host], 1, 4.0, 1.0, 3.0), 5.0);
        assert_eq!(step_time(&[Host, Host], 1, 4.0, 1.0, 3.0), 6.0);
        // Compute-bound: the reader is always ahead.
        assert_eq!(
            step_time(&[Resident, Streamed, Streamed], 2, 0.5, 1.0, 9.0),
            3.0
        );
    }

    #[test]
    fn host_split_picks_the_fastest_simulated_step() {
        let p = plan(200, 1, sizes(6)).unwrap();
        assert!(p.resident.is_empty());
        // Filling slower than computing, the host a bit slower than the device: some move.
        let k = host_split(&p, 4.0, 1.0, 3.0);
        assert!(k > 0 && k < 6, "{k}");
        // Filling faster than computing and the host slower: none. (With this one slot a
        // fill cannot overlap the compute before it, so a host as fast as the device would
        // still win: the model sees the ring's capacity.)
        assert_eq!(host_split(&p, 0.5, 1.0, 2.0), 0);
        assert!(host_split(&p, 0.5, 1.0, 1.0) > 0);
        // A host faster than the device: all.
        assert_eq!(host_split(&p, 4.0, 1.0, 0.5), 6);
    }

    #[test]
    fn move_to_host_takes_the_last_streamed_layers() {
        let mut p = plan(500, 2, sizes(6)).unwrap();
        p.move_to_host(3);
        assert_eq!(p.streamed, vec![1]);
        assert_eq!(p.host, vec![2, 4, 5]);
        assert_eq!(p.streamed_bytes_per_token, 100);
        p.move_to_host(9);
        assert!(p.streamed.is_empty());
        assert_eq!(p.host, vec![1, 2, 4, 5]);
    }

    #[test]
    fn budget_for_gives_that_plan() {
        // Two buffer types, layers of different sizes in each: the slot is the sum of the
        // per-type maxima of the streamed layers.
        let sizes = Sizes {
            layers: vec![vec![10, 100], vec![30, 50], vec![20, 70], vec![5, 90]],
            layer_file_bytes: vec![110, 80, 90, 95],
            bufts: vec!["AMX".into(), "CPU".into()],
            output: 7,
            kv: 3,
            state: 2,
            compute: 8,
            scratch: 0,
        };
        let big = plan(u64::MAX, 2, sizes.clone()).unwrap();
        for r in 0..=4 {
            let b = big.budget_for(r, 2);
            let p = plan(b, 2, sizes.clone()).unwrap();
            assert!(p.resident.len() >= r, "resident {r}: {p}");
            assert!(p.device_bytes() <= b, "resident {r}");
            if p.resident.len() == r {
                assert_eq!(p.resident, spread(r, 4));
                assert_eq!(p.device_bytes(), b);
            }
            if r < 4 {
                assert_eq!(p.slot_segments, sizes.slot_segments(&p.streamed));
            }
        }
        // Streaming layers 1 and 3 (resident 0 and 2): AMX max(30, 5), CPU max(50, 90).
        assert_eq!(sizes.slot_segments(&[1, 3]), vec![30, 90]);
    }

    #[test]
    fn resident_layers_are_spread() {
        assert_eq!(spread(0, 6), Vec::<usize>::new());
        assert_eq!(spread(1, 6), vec![0]);
        assert_eq!(spread(3, 6), vec![0, 2, 4]);
        assert_eq!(spread(6, 6), (0..6).collect::<Vec<_>>());
        let s = spread(21, 62);
        assert_eq!(s.len(), 21);
        assert!(
            s.windows(2).all(|w| w[1] - w[0] >= 2 && w[1] - w[0] <= 3),
            "{s:?}"
        );
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let e = plan(299, 2, sizes(6)).unwrap_err();
        assert!(e.contains("does not fit a ring of 2 slot(s)"), "{e}");
        let e = plan(99, 2, sizes(6)).unwrap_err();
        assert!(e.contains("does not fit the fixed part"), "{e}");
        assert!(e.contains("KV cache"), "{e}");
    }
}
