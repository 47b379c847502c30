//! Layers across several devices: the local CPU plus llama.cpp's device list (remote RPC
//! devices first, then local GPUs, as llama.cpp orders them), each under its own budget.
//!
//! [`assign`] is llama.cpp's own rule (`llama_model_base::load_tensors`): the CPU keeps the
//! first `n_layer + 1 - n_gpu_layers` layers, the rest (the output layer counts as layer
//! `n_layer`) go to the devices in order, in shares given by the split fractions. The plan is
//! computed and checked against every budget before llama.cpp allocates anything.

use super::plan::{fmt_size, GpuLayers, ModelShape, Usage};
use std::fmt;

/// A device of llama.cpp's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// ggml's name: `RPC0`, `CUDA0`.
    pub name: String,
    /// The RPC server (`HOST:PORT`) for remote devices.
    pub endpoint: Option<String>,
    pub free: u64,
}

impl Device {
    /// What the plan and errors call it.
    pub fn label(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("RPC server {e} ({})", self.name),
            None => self.name.clone(),
        }
    }
}

/// `--vram-budget`: one size, or `KEY=SIZE,...` with keys `local` (this machine: the CPU's
/// host memory), `HOST:PORT` (each device of that RPC server) or a local GPU's name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Budgets {
    /// A bare size: the whole budget when there is one device, else the local one.
    pub one: Option<u64>,
    pub keyed: Vec<(String, u64)>,
}

impl std::str::FromStr for Budgets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut b = Budgets::default();
        for part in s.split(',') {
            match part.rsplit_once('=') {
                Some((k, v)) => {
                    let k = k.trim().to_string();
                    if k.is_empty() {
                        return Err(format!("'{part}': the key before '=' is empty"));
                    }
                    if b.keyed.iter().any(|(x, _)| *x == k) {
                        return Err(format!("'{k}' has two budgets"));
                    }
                    b.keyed.push((k, super::plan::parse_size(v)?));
                }
                None if b.one.is_none() => b.one = Some(super::plan::parse_size(part)?),
                None => {
                    return Err(format!(
                    "'{s}': more than one budget without a KEY= (use local=SIZE,HOST:PORT=SIZE)"
                ))
                }
            }
        }
        Ok(b)
    }
}

impl Budgets {
    /// The single budget of a run on one device (`6GiB` or `local=6GiB`); per-device keys
    /// need --rpc.
    pub fn single(&self) -> Result<Option<u64>, String> {
        match &self.keyed[..] {
            [] => Ok(self.one),
            [(k, v)] if k == "local" && self.one.is_none() => Ok(Some(*v)),
            _ => Err(format!(
                "--vram-budget: per-device budgets ({}) apply to --rpc runs; give one size here",
                self.keyed
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The local (CPU) budget and one per device; every key must name something.
    fn resolve(&self, devices: &[Device]) -> Result<(Option<u64>, Vec<Option<u64>>), String> {
        for (k, _) in &self.keyed {
            let known = k == "local"
                || devices
                    .iter()
                    .any(|d| d.endpoint.as_deref() == Some(k.as_str()) || d.name == *k);
            if !known {
                let mut names = vec!["local".to_string()];
                names.extend(
                    devices
                        .iter()
                        .map(|d| d.endpoint.clone().unwrap_or_else(|| d.name.clone())),
                );
                names.dedup();
                return Err(format!(
                    "--vram-budget {k}=...: no such device (keys: {})",
                    names.join(", ")
                ));
            }
        }
        let get = |k: &str| self.keyed.iter().find(|(x, _)| x == k).map(|(_, v)| *v);
        let local = get("local").or(self.one);
        let per = devices
            .iter()
            .map(|d| d.endpoint.as_deref().and_then(get).or_else(|| get(&d.name)))
            .collect();
        Ok((local, per))
    }
}

/// Which device holds each of layers `0..=n_layer` (`n_layer` is the output layer); `None`
/// is the CPU. llama.cpp's rule, in its f32 arithmetic.
pub fn assign(n_layer: u32, n_gpu_layers: u32, split: &[f32]) -> Vec<Option<usize>> {
    let n_all = n_layer as i64;
    let start = (n_all + 1 - i64::from(n_gpu_layers)).max(0);
    let act = if split.is_empty() {
        0
    } else {
        i64::from(n_gpu_layers).min(n_all + 1)
    };
    let mut cum = Vec::with_capacity(split.len());
    let mut sum = 0f32;
    for &s in split {
        sum += s;
        cum.push(sum);
    }
    for c in &mut cum {
        *c /= sum;
    }
    (0..=n_all)
        .map(|il| {
            if il < start || il - start >= act {
                return None;
            }
            let x = (il - start) as f32 / act as f32;
            let d = cum.partition_point(|&c| c <= x);
            Some(d.min(split.len() - 1))
        })
        .collect()
}

/// A placement over the CPU and several devices.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiPlan {
    pub devices: Vec<Device>,
    pub n_gpu_layers: u32,
    pub split: Vec<f32>,
    /// Per layer `0..=n_layer`: the device index, `None` for the CPU.
    pub layers: Vec<Option<usize>>,
    pub cpu: Usage,
    pub cpu_budget: Option<u64>,
    pub usage: Vec<Usage>,
    pub budgets: Vec<Option<u64>>,
    /// Bytes that cross the network per decoded token, besides the attention masks.
    pub net_per_token: u64,
    /// The largest attention mask sent per token and remote device (at a full context).
    pub mask_per_token: u64,
    pub n_layer: u32,
}

fn usage_of(
    m: &ModelShape,
    layers: &[Option<usize>],
    d: Option<usize>,
    n_ctx: u32,
    n_ubatch: u32,
) -> Usage {
    let n = m.n_layer as usize;
    let mine = |il: usize| layers[il] == d;
    let with_output = mine(n);
    let mut u = Usage::default();
    for il in (0..n).filter(|&il| mine(il)) {
        u.weights += m.layer_bytes[il];
        u.kv += m.kv_bytes(il as u32, n_ctx, n_ubatch);
    }
    if d.is_none() {
        // The CPU also keeps the token embedding and whatever is not a layer.
        let on_devices: u64 = (0..n)
            .filter(|&il| layers[il].is_some())
            .map(|il| m.layer_bytes[il])
            .sum();
        u.weights = m.total_bytes.saturating_sub(on_devices);
        u.compute = m.compute_bytes(n_ctx, n_ubatch, with_output);
    } else {
        if with_output {
            u.weights += m.output_bytes;
        }
        if u.weights > 0 {
            u.compute = m.compute_bytes(n_ctx, n_ubatch, with_output);
        }
    }
    u
}

/// Bytes per decoded token that cross the network: the hidden state (f32) at every change of
/// device where one side is remote, and the logits when a remote device holds the output
/// layer; and the attention mask (f32 per cached position) each remote device receives.
fn network(m: &ModelShape, layers: &[Option<usize>], devices: &[Device], n_ctx: u32) -> (u64, u64) {
    let remote = |d: Option<usize>| d.is_some_and(|i| devices[i].endpoint.is_some());
    let mut path = vec![None];
    path.extend(layers.iter().copied());
    let mut bytes = 0;
    for w in path.windows(2) {
        if w[0] != w[1] && (remote(w[0]) || remote(w[1])) {
            bytes += 4 * m.n_embd;
        }
    }
    let out = layers[m.n_layer as usize];
    if remote(out) {
        bytes += 4 * m.n_vocab;
    }
    let n_remote = (0..devices.len())
        .filter(|&i| devices[i].endpoint.is_some() && layers.contains(&Some(i)))
        .count() as u64;
    (bytes, n_remote * 4 * u64::from(n_ctx))
}

fn range_text(layers: &[Option<usize>], d: Option<usize>, n_layer: u32) -> String {
    let idx: Vec<usize> = (0..n_layer as usize)
        .filter(|&il| layers[il] == d)
        .collect();
    let mut s = match (idx.first(), idx.last()) {
        (Some(a), Some(b)) if a == b => format!("layer {a}"),
        (Some(a), Some(b)) => format!("layers {a}-{b}"),
        _ => "no layers".to_string(),
    };
    if layers[n_layer as usize] == d {
        s.push_str(" + output");
    }
    s
}

impl MultiPlan {
    /// The layers (`0..n_layer`) device `d` holds (`None`: the CPU).
    pub fn layers_on(&self, d: Option<usize>) -> Vec<u32> {
        (0..self.n_layer)
            .filter(|&il| self.layers[il as usize] == d)
            .collect()
    }
}

impl fmt::Display for MultiPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let split: Vec<String> = self.split.iter().map(|x| format!("{x}")).collect();
        writeln!(
            f,
            "plan: {}/{} layers{} on {} device(s) (llama.cpp split {}), the rest on the local CPU:",
            (0..self.n_layer as usize)
                .filter(|&il| self.layers[il].is_some())
                .count(),
            self.n_layer,
            // llama.cpp's slot n_layer is the output layer.
            if self
                .layers
                .get(self.n_layer as usize)
                .is_some_and(Option::is_some)
            {
                " + output"
            } else {
                ""
            },
            self.devices.len(),
            split.join(",")
        )?;
        let budget = |b: Option<u64>| {
            b.map(|b| format!(" of a {} budget", fmt_size(b)))
                .unwrap_or_default()
        };
        writeln!(
            f,
            "  local CPU: {} + token_embd: {}{}",
            range_text(&self.layers, None, self.n_layer),
            self.cpu,
            budget(self.cpu_budget)
        )?;
        for (i, d) in self.devices.iter().enumerate() {
            writeln!(
                f,
                "  {}: {}: {}{}",
                d.label(),
                range_text(&self.layers, Some(i), self.n_layer),
                self.usage[i],
                budget(self.budgets[i])
            )?;
        }
        write!(
            f,
            "  network per decoded token: ~{} of activations and logits, plus attention masks (up to {} at a full context) and ggml's graph and command messages (not estimated)",
            fmt_size(self.net_per_token),
            fmt_size(self.mask_per_token)
        )
    }
}

/// Places `m` on the CPU and `devices`. `split`: `--tensor-split` (one share per device),
/// else shares in proportion to each device's budget (or free memory). `want`: a layer count
/// (checked against every budget) or `auto` (the most that fit every budget). Errors are one
/// line naming the device and its budget.
pub fn plan_multi(
    m: &ModelShape,
    want: GpuLayers,
    split: Option<&[f32]>,
    devices: &[Device],
    budgets: &Budgets,
    n_ctx: u32,
    n_ubatch: u32,
) -> Result<MultiPlan, String> {
    if devices.is_empty() {
        return Err("no device to place layers on".into());
    }
    let (cpu_budget, per) = budgets.resolve(devices)?;
    let avail: Vec<u64> = devices
        .iter()
        .zip(&per)
        .map(|(d, b)| b.map_or(d.free, |b| if d.free > 0 { b.min(d.free) } else { b }))
        .collect();
    let split: Vec<f32> = match split {
        Some(s) => {
            if s.len() != devices.len() {
                return Err(format!(
                    "--tensor-split has {} shares for {} devices ({})",
                    s.len(),
                    devices.len(),
                    devices
                        .iter()
                        .map(Device::label)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if s.iter().any(|x| !x.is_finite() || *x < 0.0) || s.iter().sum::<f32>() <= 0.0 {
                return Err("--tensor-split: shares must be non-negative and not all zero".into());
            }
            s.to_vec()
        }
        None => avail.iter().map(|&a| a.max(1) as f32).collect(),
    };
    let build = |n: u32| {
        let layers = assign(m.n_layer, n, &split);
        let usage: Vec<Usage> = (0..devices.len())
            .map(|i| usage_of(m, &layers, Some(i), n_ctx, n_ubatch))
            .collect();
        let cpu = usage_of(m, &layers, None, n_ctx, n_ubatch);
        let (net, mask) = network(m, &layers, devices, n_ctx);
        MultiPlan {
            devices: devices.to_vec(),
            n_gpu_layers: n,
            split: split.clone(),
            layers,
            cpu,
            cpu_budget,
            usage,
            budgets: per.clone(),
            net_per_token: net,
            mask_per_token: mask,
            n_layer: m.n_layer,
        }
    };
    let check = |p: &MultiPlan| -> Result<(), String> {
        for (i, d) in devices.iter().enumerate() {
            if p.usage[i].total() > avail[i] {
                let what = if per[i].is_some() {
                    "its budget"
                } else {
                    "its free memory"
                };
                return Err(format!(
                    "{} would hold {} and needs {}, more than {what} of {}",
                    d.label(),
                    range_text(&p.layers, Some(i), m.n_layer),
                    p.usage[i],
                    fmt_size(avail[i])
                ));
            }
        }
        if let Some(b) = cpu_budget {
            if p.cpu.total() > b {
                return Err(format!(
                    "the local CPU would hold {} + token_embd and needs {}, more than its budget of {}",
                    range_text(&p.layers, None, m.n_layer),
                    p.cpu,
                    fmt_size(b)
                ));
            }
        }
        Ok(())
    };
    match want {
        GpuLayers::N(n) => {
            let p = build(n.min(m.n_layer + 1));
            check(&p).map_err(|e| format!("--vram-budget: {e}"))?;
            Ok(p)
        }
        GpuLayers::Auto => {
            let mut first_err = None;
            for n in (0..=m.n_layer + 1).rev() {
                let p = build(n);
                match check(&p) {
                    Ok(()) => return Ok(p),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            Err(format!(
                "--vram-budget: no placement fits: with every layer on the devices, {}",
                first_err.unwrap_or_default()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_follows_llama_cpp() {
        // 6 layers + output, 5 "gpu layers": layers 0-1 on the CPU, the rest 1:1.
        let a = assign(6, 5, &[1.0, 1.0]);
        assert_eq!(
            a,
            vec![None, None, Some(0), Some(0), Some(0), Some(1), Some(1)]
        );
        // everything on the devices
        let a = assign(4, 5, &[1.0, 3.0]);
        assert_eq!(a, vec![Some(0), Some(0), Some(1), Some(1), Some(1)]);
        // no gpu layers
        assert_eq!(assign(3, 0, &[1.0]), vec![None; 4]);
        // one: the output layer only
        assert_eq!(assign(3, 1, &[1.0]), vec![None, None, None, Some(0)]);
        // a zero share skips its device
        assert_eq!(assign(2, 3, &[0.0, 1.0]), vec![Some(1); 3]);
    }

    fn shape() -> ModelShape {
        ModelShape {
            arch: "llama".into(),
            n_layer: 4,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            head_dim_k: 16,
            head_dim_v: 16,
            n_ff: 128,
            n_vocab: 1000,
            n_ctx_train: 1024,
            n_swa: None,
            swa: vec![false; 4],
            layer_bytes: vec![1000; 4],
            output_bytes: 500,
            total_bytes: 4000 + 500 + 700,
        }
    }

    fn devs() -> Vec<Device> {
        ["127.0.0.1:1", "127.0.0.1:2"]
            .iter()
            .enumerate()
            .map(|(i, e)| Device {
                name: format!("RPC{i}"),
                endpoint: Some(e.to_string()),
                free: 1 << 40,
            })
            .collect()
    }

    #[test]
    fn budgets_parse_and_resolve() {
        let b: Budgets = "local=1GiB,127.0.0.1:2=2MiB".parse().unwrap();
        assert_eq!(b.keyed[1], ("127.0.0.1:2".to_string(), 2 << 20));
        let (local, per) = b.resolve(&devs()).unwrap();
        assert_eq!(local, Some(1 << 30));
        assert_eq!(per, vec![None, Some(2 << 20)]);
        let e = "h:9=1GiB"
            .parse::<Budgets>()
            .unwrap()
            .resolve(&devs())
            .unwrap_err();
        assert!(e.contains("h:9") && e.contains("127.0.0.1:1"), "{e}");
        assert_eq!(
            "6GiB".parse::<Budgets>().unwrap().single().unwrap(),
            Some(6 << 30)
        );
        assert!("a:1=1GiB".parse::<Budgets>().unwrap().single().is_err());
    }

    #[test]
    fn budgets_bound_each_device() {
        let m = shape();
        let (c, ub) = (64, 16);
        let all = Budgets::default();
        let p = plan_multi(&m, GpuLayers::N(5), Some(&[1.0, 1.0]), &devs(), &all, c, ub).unwrap();
        // 5 slots (4 layers + output) at 1:1: slots 0-2 (fractions 0, .2, .4 < .5), then 3-4
        assert_eq!(p.layers_on(Some(0)), vec![0, 1, 2]);
        assert_eq!(p.layers_on(Some(1)), vec![3]);
        let need1 = p.usage[1].total();
        // a budget one byte short for server 2 is refused, naming it
        let b: Budgets = format!("127.0.0.1:2={}", need1 - 1).parse().unwrap();
        let e = plan_multi(&m, GpuLayers::N(5), Some(&[1.0, 1.0]), &devs(), &b, c, ub).unwrap_err();
        assert!(
            e.contains("127.0.0.1:2") && e.contains("layer 3 + output"),
            "{e}"
        );
        // auto keeps fewer layers on the devices until the budget holds
        let p = plan_multi(&m, GpuLayers::Auto, Some(&[1.0, 1.0]), &devs(), &b, c, ub).unwrap();
        assert!(p.usage[1].total() < need1);
        assert!(p.n_gpu_layers < 5);
    }

    #[test]
    fn network_counts_remote_hops() {
        let m = shape();
        let layers = assign(4, 5, &[1.0, 1.0]);
        let (b, mask) = network(&m, &layers, &devs(), 64);
        // CPU -> RPC0, RPC0 -> RPC1 hidden states, then logits from RPC1
        assert_eq!(b, 2 * 4 * 64 + 4 * 1000);
        assert_eq!(mask, 2 * 4 * 64);
    }
}
