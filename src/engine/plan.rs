//! Device placement for the llama.cpp engine: how many layers fit a memory budget.
//!
//! The sizes come from the GGUF's own tensor table and metadata (exact for weights and the KV
//! cache, an estimate for llama.cpp's compute buffers), so the plan is printed and checked
//! before llama.cpp allocates anything. llama.cpp counts the output layer as slot `n_layer`
//! after the repeating layers and offloads the last `n_gpu_layers` slots
//! (`llama_model::load_tensors`: `i_gpu_start = n_layer + 1 - n_gpu_layers`, `dev_output =
//! get_layer_buft_list(n_layer)`): `-ngl N` puts the output and the last N - 1 repeating layers
//! (each with its KV cache) on the GPU, `-ngl n_layer + 1` everything; the token embedding
//! always stays in host memory.
//!
//! With no GPU the CPU plays the device: the whole model, its KV cache and compute buffers must
//! fit the budget (the CPU path), or the run is refused before loading.

use crate::gguf::GgufModel;
use std::fmt;

/// Parses `6GiB`, `512MiB`, `1.5 GiB`, `100KiB`, `4096` (bytes). `K`/`M`/`G`/`T` alone and
/// `KB`/`MB`/`GB`/`TB` are read as binary units too, as llama.cpp's tools do.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 6GiB, 512MiB, 4096)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "'{s}': unknown size unit '{}' (use KiB, MiB, GiB)",
                unit.trim()
            ))
        }
    };
    let v = x * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(v.round() as u64)
}

/// `1.50 GiB`, `12.0 MiB`, `512 B`.
pub fn fmt_size(b: u64) -> String {
    let f = b as f64;
    if b >= 1 << 30 {
        format!("{:.2} GiB", f / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", f / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// What the planner needs to know about a model, read from its GGUF.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub arch: String,
    pub n_layer: u32,
    pub n_embd: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim_k: u64,
    pub head_dim_v: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    pub n_ctx_train: u32,
    /// Sliding-window size, when the model has sliding-window layers.
    pub n_swa: Option<u32>,
    /// Per layer: whether it uses the sliding window (`jq::arch::swa`: the bool array or the
    /// period of the file, else the architecture's default, as llama.cpp reads them).
    pub swa: Vec<bool>,
    /// Bytes of `blk.N.*` for each layer.
    pub layer_bytes: Vec<u64>,
    /// Bytes of the output layer (`output_norm`, `output`; with tied embeddings llama.cpp makes
    /// a device copy of `token_embd` for it).
    pub output_bytes: u64,
    /// Bytes of every tensor.
    pub total_bytes: u64,
}

impl ModelShape {
    pub fn from_gguf(f: &GgufModel) -> Result<ModelShape, String> {
        let arch = f
            .get_str("general.architecture")
            .map_err(|e| e.to_string())?
            .to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<u64, String> {
            f.get(&key(k))
                .and_then(|v| v.as_u64())
                .ok_or_else(|| format!("metadata key '{}' is missing or not an integer", key(k)))
        };
        let n_layer = u("block_count")? as u32;
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count").unwrap_or(1).max(1);
        let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head).max(1);
        let head_dim_k = u("attention.key_length").unwrap_or(n_embd / n_head);
        let head_dim_v = u("attention.value_length").unwrap_or(n_embd / n_head);
        let n_ff = u("feed_forward_length").unwrap_or(4 * n_embd);
        let n_ctx_train = u("context_length")? as u32;
        let n_swa = u("attention.sliding_window")
            .ok()
            .map(|x| x as u32)
            .filter(|&x| x > 0);
        let swa = if n_swa.is_some() {
            crate::arch::swa::swa_layers(
                f,
                &arch,
                n_layer as usize,
                crate::arch::swa::swa_default(&arch),
            )
            .map_err(|e| e.to_string())?
        } else {
            vec![false; n_layer as usize]
        };
        let mut layer_bytes = vec![0u64; n_layer as usize];
        let (mut output_bytes, mut total_bytes) = (0u64, 0u64);
        let mut n_vocab = 0u64;
        let mut embd_bytes = 0u64;
        let mut has_output = false;
        for t in f.tensor_infos() {
            let b = t.size;
            total_bytes += b;
            if let Some(rest) = t.name.strip_prefix("blk.") {
                if let Some(l) = rest.split('.').next().and_then(|x| x.parse::<usize>().ok()) {
                    if let Some(slot) = layer_bytes.get_mut(l) {
                        *slot += b;
                    }
                }
            } else if t.name == "token_embd.weight" {
                n_vocab = t.ne.get(1).copied().unwrap_or(0);
                embd_bytes = b;
            } else if t.name.starts_with("output") {
                has_output |= t.name == "output.weight";
                output_bytes += b;
            }
        }
        if !has_output {
            output_bytes += embd_bytes;
        }
        Ok(ModelShape {
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_ff,
            n_vocab,
            n_ctx_train,
            n_swa,
            swa,
            layer_bytes,
            output_bytes,
            total_bytes,
        })
    }

    fn is_swa(&self, il: u32) -> bool {
        self.n_swa.is_some() && self.swa.get(il as usize).copied().unwrap_or(false)
    }

    /// KV cache bytes of one layer (F16 K and V, as llama.cpp allocates by default; sliding
    /// layers hold `n_swa + n_ubatch` cells rounded up to 256, at most `n_ctx`).
    pub fn kv_bytes(&self, il: u32, n_ctx: u32, n_ubatch: u32) -> u64 {
        let cells = match self.n_swa {
            Some(w) if self.is_swa(il) => (u64::from(w) + u64::from(n_ubatch)).div_ceil(256) * 256,
            _ => u64::from(n_ctx),
        }
        .min(u64::from(n_ctx));
        cells * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * 2
    }

    /// An estimate of llama.cpp's compute buffer for one device: activations of one ubatch
    /// (hidden, q/k/v, FFN), the attention scores of one layer, and the logits when the output
    /// layer is on that device.
    pub fn compute_bytes(&self, n_ctx: u32, n_ubatch: u32, with_output: bool) -> u64 {
        let ub = u64::from(n_ubatch);
        let per_tok = 6 * self.n_embd
            + 2 * self.n_head * self.head_dim_k
            + 3 * self.n_ff
            + self.n_head * u64::from(n_ctx)
            + if with_output { self.n_vocab } else { 0 };
        4 * ub * per_tok
    }
}

/// How many layers to put on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    Auto,
    N(u32),
}

impl std::str::FromStr for GpuLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            Ok(GpuLayers::Auto)
        } else {
            s.parse()
                .map(GpuLayers::N)
                .map_err(|_| format!("'{s}' is not a layer count or 'auto'"))
        }
    }
}

/// The device memory a placement uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub weights: u64,
    pub kv: u64,
    pub compute: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.compute
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (weights {}, KV cache {}, compute ~{})",
            fmt_size(self.total()),
            fmt_size(self.weights),
            fmt_size(self.kv),
            fmt_size(self.compute)
        )
    }
}

/// A GPU llama.cpp can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub name: String,
    pub description: String,
    pub free: u64,
    pub total: u64,
}

/// The chosen placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `None`: CPU only (no GPU device).
    pub gpu: Option<Gpu>,
    pub n_gpu_layers: u32,
    /// Memory on the device (the GPU, or the host for the CPU path).
    pub usage: Usage,
    pub budget: Option<u64>,
    pub n_layer: u32,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let budget = self
            .budget
            .map(|b| format!(" of a {} budget", fmt_size(b)))
            .unwrap_or_default();
        match &self.gpu {
            None => write!(
                f,
                "plan: CPU only (no GPU device), all {} layers in host memory: {}{budget}",
                self.n_layer, self.usage
            ),
            Some(g) => {
                let out = if self.n_gpu_layers >= 1 {
                    " + output"
                } else {
                    ""
                };
                write!(
                    f,
                    "plan: {}/{} layers{out} on {} ({}, {} free): {}{budget}; the rest on the CPU",
                    repeating_on_gpu(self.n_gpu_layers, self.n_layer),
                    self.n_layer,
                    g.name,
                    g.description,
                    fmt_size(g.free),
                    self.usage
                )
            }
        }
    }
}

/// Device memory with the last `n` of llama.cpp's `n_layer + 1` slots offloaded: the output
/// layer from `n = 1`, then repeating layers from the last one backwards.
pub fn gpu_usage(m: &ModelShape, n: u32, n_ctx: u32, n_ubatch: u32) -> Usage {
    let n_off = repeating_on_gpu(n, m.n_layer);
    let first = m.n_layer - n_off;
    let with_output = n >= 1;
    Usage {
        weights: m.layer_bytes[first as usize..].iter().sum::<u64>()
            + if with_output { m.output_bytes } else { 0 },
        kv: (first..m.n_layer)
            .map(|il| m.kv_bytes(il, n_ctx, n_ubatch))
            .sum(),
        compute: m.compute_bytes(n_ctx, n_ubatch, with_output),
    }
}

/// Repeating layers on the GPU for `--n-gpu-layers n` (the first offloaded slot is the output).
fn repeating_on_gpu(n: u32, n_layer: u32) -> u32 {
    n.min(n_layer + 1).saturating_sub(1)
}

/// Host memory of the CPU path: every tensor, every layer's KV cache, the compute buffer.
pub fn cpu_usage(m: &ModelShape, n_ctx: u32, n_ubatch: u32) -> Usage {
    Usage {
        weights: m.total_bytes,
        kv: (0..m.n_layer)
            .map(|il| m.kv_bytes(il, n_ctx, n_ubatch))
            .sum(),
        compute: m.compute_bytes(n_ctx, n_ubatch, true),
    }
}

/// Chooses the placement. Errors are one line naming what did not fit.
pub fn plan(
    m: &ModelShape,
    want: GpuLayers,
    budget: Option<u64>,
    gpu: Option<Gpu>,
    n_ctx: u32,
    n_ubatch: u32,
) -> Result<Plan, String> {
    let Some(g) = gpu else {
        let usage = cpu_usage(m, n_ctx, n_ubatch);
        if let Some(b) = budget {
            if usage.total() > b {
                return Err(format!(
                    "--vram-budget {} is too small for even the CPU path (no GPU device here, so the budget bounds host memory): it needs {usage}",
                    fmt_size(b)
                ));
            }
        }
        return Ok(Plan {
            gpu: None,
            n_gpu_layers: 0,
            usage,
            budget,
            n_layer: m.n_layer,
        });
    };
    let avail = budget.map_or(g.free, |b| b.min(g.free));
    let n = match want {
        GpuLayers::N(n) => {
            let n = n.min(m.n_layer + 1);
            let u = gpu_usage(m, n, n_ctx, n_ubatch);
            if budget.is_some() && u.total() > avail {
                return Err(format!(
                    "--n-gpu-layers {n} needs {u} on {}, more than the {} available",
                    g.name,
                    fmt_size(avail)
                ));
            }
            n
        }
        GpuLayers::Auto => {
            let u0 = gpu_usage(m, 0, n_ctx, n_ubatch);
            if u0.total() > avail {
                return Err(format!(
                    "--vram-budget {} is too small for even the CPU path: llama.cpp still needs {u0} on {} for its compute buffers",
                    fmt_size(avail),
                    g.name
                ));
            }
            (0..=m.n_layer + 1)
                .rev()
                .find(|&n| gpu_usage(m, n, n_ctx, n_ubatch).total() <= avail)
                .unwrap_or(0)
        }
    };
    Ok(Plan {
        usage: gpu_usage(m, n, n_ctx, n_ubatch),
        gpu: Some(g),
        n_gpu_layers: n,
        budget,
        n_layer: m.n_layer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("6GiB").unwrap(), 6 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("100KiB").unwrap(), 102_400);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("6 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("-1GiB").is_err());
    }

    fn shape() -> ModelShape {
        ModelShape {
            arch: "gemma3".into(),
            n_layer: 4,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            head_dim_k: 16,
            head_dim_v: 16,
            n_ff: 128,
            n_vocab: 1000,
            n_ctx_train: 1024,
            n_swa: Some(8),
            swa: crate::arch::swa::swa_of_period(4, 2, false),
            layer_bytes: vec![1000, 1000, 1000, 1000],
            output_bytes: 500,
            total_bytes: 4000 + 500 + 700,
        }
    }

    #[test]
    fn kv_of_sliding_and_global_layers() {
        let m = shape();
        // layer 0 sliding: 8 + 32 cells round up to 256, capped by n_ctx 128
        assert_eq!(m.kv_bytes(0, 128, 32), 128 * 2 * 32 * 2);
        assert_eq!(m.kv_bytes(0, 1024, 32), 256 * 2 * 32 * 2);
        assert_eq!(m.kv_bytes(1, 1024, 32), 1024 * 2 * 32 * 2);
    }

    #[test]
    fn auto_picks_the_largest_fit() {
        let m = shape();
        let g = Gpu {
            name: "CUDA0".into(),
            description: "test".into(),
            free: 1 << 40,
            total: 1 << 40,
        };
        let (c, ub) = (64, 16);
        for n in 0..=5 {
            let need = gpu_usage(&m, n, c, ub).total();
            let p = plan(&m, GpuLayers::Auto, Some(need), Some(g.clone()), c, ub).unwrap();
            assert_eq!(p.n_gpu_layers, n, "budget {need}");
            let p = plan(&m, GpuLayers::Auto, Some(need + 1), Some(g.clone()), c, ub).unwrap();
            assert_eq!(p.n_gpu_layers, n);
        }
        let too_small = gpu_usage(&m, 0, c, ub).total() - 1;
        let e = plan(&m, GpuLayers::Auto, Some(too_small), Some(g.clone()), c, ub).unwrap_err();
        assert!(e.contains("too small for even the CPU path"), "{e}");
        let e = plan(&m, GpuLayers::N(5), Some(too_small), Some(g), c, ub).unwrap_err();
        assert!(e.contains("--n-gpu-layers 5 needs"), "{e}");
    }

    /// llama.cpp's slots: -ngl 1 is the output alone, -ngl 2 the output and the last layer,
    /// -ngl n_layer + 1 (or more) everything.
    #[test]
    fn output_is_the_first_slot_offloaded() {
        let m = shape();
        let w = |n| gpu_usage(&m, n, 64, 16).weights;
        assert_eq!(w(0), 0);
        assert_eq!(w(1), 500);
        assert_eq!(w(2), 500 + 1000);
        assert_eq!(w(4), 500 + 3000);
        assert_eq!(w(5), 500 + 4000);
        assert_eq!(w(99), 500 + 4000);
        assert_eq!(gpu_usage(&m, 1, 64, 16).kv, 0);
        assert_eq!(gpu_usage(&m, 2, 64, 16).kv, m.kv_bytes(3, 64, 16));
    }

    #[test]
    fn cpu_path_checks_the_budget() {
        let m = shape();
        let need = cpu_usage(&m, 64, 16).total();
        assert_eq!(
            plan(&m, GpuLayers::Auto, Some(need), None, 64, 16)
                .unwrap()
                .n_gpu_layers,
            0
        );
        let e = plan(&m, GpuLayers::Auto, Some(need - 1), None, 64, 16).unwrap_err();
        assert!(e.contains("too small for even the CPU path"), "{e}");
    }
}
