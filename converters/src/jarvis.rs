//! `jq-convert npz-to-gguf`: a Jarvis numpy checkpoint (`.npz` + `config.json` +
//! `tokenizer.json`) to GGUF, either native (`jarvis`) or the exact `gpt2` mapping that
//! llama.cpp and Ollama run.
//!
//! The mapping is data: `native_plan` / `gpt2_plan` list every output tensor with where its
//! values come from (`Source`); one driver (`write`) validates, encodes and writes them.

use anyhow::{anyhow, bail, Context, Result};
use jq::gguf::{GgufError, GgufWriter, MetaValue, ValueType};
use jq::models::jarvis::{keys, sinusoidal_table, Gelu};
use jq::npy::NpyArray;
use jq::output::AtomicFile;
use jq::quant::{quantize_to_vec, FileType, GgmlType};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Hyper-parameters of a checkpoint, from `config.json` or inferred from shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct JarvisConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    pub ctx: usize,
    pub eps: f32,
    pub gelu: Gelu,
    pub lowercase: bool,
}

/// A checkpoint, validated.
#[derive(Debug)]
pub struct Checkpoint {
    pub cfg: JarvisConfig,
    pub arrays: BTreeMap<String, NpyArray>,
    pub tokens: Vec<String>,
    /// The npz key of the final norm's gain and bias, when present.
    pub final_norm: Option<(String, String)>,
    pub name: String,
}

fn first<'a>(obj: &'a serde_json::Map<String, Json>, names: &[&str]) -> Option<&'a Json> {
    names.iter().find_map(|n| obj.get(*n))
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub use crate::tokenizer_json::read_tokenizer;

const FINAL_NORM_KEYS: [(&str, &str); 2] = [("final_g", "final_b"), ("ln_f_g", "ln_f_b")];

fn dims(arrays: &BTreeMap<String, Vec<usize>>, key: &str) -> Result<Vec<usize>> {
    arrays
        .get(key)
        .cloned()
        .ok_or_else(|| anyhow!("checkpoint has no '{key}'"))
}

/// Loads and validates a checkpoint. `heads` overrides (or replaces a missing) config value.
pub fn load(
    npz: &Path,
    config: Option<&Path>,
    tokenizer: Option<&Path>,
    heads: Option<usize>,
) -> Result<Checkpoint> {
    // Headers only: names and shapes are checked against the configuration before any array
    // is decompressed.
    let mut archive = jq::npz::NpzArchive::open(npz)?;
    let arrays: BTreeMap<String, Vec<usize>> = archive
        .members()
        .iter()
        .map(|m| (m.key.clone(), m.header.shape.clone()))
        .collect();
    let dir = match npz.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let emb = dims(&arrays, "embedding")?;
    if emb.len() != 2 {
        bail!("'embedding' must be 2-D [vocab, d_model], is {emb:?}");
    }
    let n_layers_found = (0..)
        .take_while(|i| arrays.contains_key(&format!("layer_{i}_q")))
        .count();

    let config_path: Option<PathBuf> = config
        .map(Path::to_path_buf)
        .or_else(|| Some(dir.join("config.json")).filter(|p| p.exists()));
    let cfg = match &config_path {
        Some(p) => {
            let j = read_json(p)?;
            let o = j
                .as_object()
                .ok_or_else(|| anyhow!("{}: expected a JSON object", p.display()))?;
            let num = |names: &[&str]| -> Result<Option<usize>> {
                match first(o, names) {
                    None => Ok(None),
                    // Every size is stored as a u32 in the GGUF: larger is an error, not a
                    // silent truncation.
                    Some(v) => v
                        .as_u64()
                        .filter(|&x| x <= u64::from(u32::MAX))
                        .map(|x| Some(x as usize))
                        .ok_or_else(|| {
                            anyhow!(
                                "{}: '{}' must be an integer in 0..={}, is {v}",
                                p.display(),
                                names[0],
                                u32::MAX
                            )
                        }),
                }
            };
            let need = |names: &[&str], inferred: usize| -> Result<usize> {
                Ok(num(names)?.unwrap_or_else(|| {
                    eprintln!(
                        "warning: {} has no '{}'; using {inferred} from the weights",
                        p.display(),
                        names[0]
                    );
                    inferred
                }))
            };
            let n_heads = match (heads, num(&["n_heads", "num_heads", "n_head", "num_attention_heads"])?) {
                (Some(h), _) | (None, Some(h)) => h,
                (None, None) => bail!("{}: no 'n_heads' and no --heads: the head count cannot be inferred from shapes", p.display()),
            };
            let gelu = match first(o, &["gelu", "activation"]).and_then(Json::as_str) {
                None | Some("gelu") | Some("tanh") | Some("gelu_tanh") | Some("gelu_new") => {
                    Gelu::Tanh
                }
                Some("erf") | Some("gelu_erf") => Gelu::Erf,
                Some(other) => bail!("{}: unknown GELU form '{other}' (tanh or erf)", p.display()),
            };
            JarvisConfig {
                vocab: need(&["vocab_size", "n_vocab"], emb[0])?,
                d_model: need(
                    &["d_model", "embed_dim", "n_embd", "hidden_size", "dim"],
                    emb[1],
                )?,
                n_layers: need(
                    &["n_layers", "num_layers", "n_layer", "num_hidden_layers"],
                    n_layers_found,
                )?,
                n_heads,
                d_ff: need(
                    &["d_ff", "ffn_dim", "d_ffn", "ff_dim", "intermediate_size"],
                    dims(&arrays, "layer_0_ffn1")?.get(1).copied().unwrap_or(0),
                )?,
                ctx: need(
                    &[
                        "max_seq_len",
                        "max_len",
                        "context_length",
                        "n_ctx",
                        "max_position_embeddings",
                    ],
                    512,
                )?,
                eps: match first(o, &["layer_norm_eps", "eps", "layer_norm_epsilon"]) {
                    None => 1e-5,
                    Some(v) => v
                        .as_f64()
                        .filter(|e| e.is_finite() && *e > 0.0 && *e as f32 > 0.0)
                        .ok_or_else(|| {
                            anyhow!(
                                "{}: 'layer_norm_eps' must be a positive number, is {v}",
                                p.display()
                            )
                        })? as f32,
                },
                gelu,
                lowercase: first(o, &["lowercase"])
                    .and_then(Json::as_bool)
                    .unwrap_or(true),
            }
        }
        None => {
            let n_heads = heads.ok_or_else(|| {
                anyhow!("no config.json beside {} and no --heads: the head count cannot be inferred from shapes", npz.display())
            })?;
            eprintln!("warning: no config.json: inferring sizes from the weights, context length 512, eps 1e-5, GELU tanh");
            JarvisConfig {
                vocab: emb[0],
                d_model: emb[1],
                n_layers: n_layers_found,
                n_heads,
                d_ff: dims(&arrays, "layer_0_ffn1")?.get(1).copied().unwrap_or(0),
                ctx: 512,
                eps: 1e-5,
                gelu: Gelu::Tanh,
                lowercase: true,
            }
        }
    };
    if cfg.n_heads == 0 || cfg.d_model % cfg.n_heads != 0 {
        bail!(
            "n_heads {} does not divide d_model {}",
            cfg.n_heads,
            cfg.d_model
        );
    }
    for (name, v, min) in [
        ("vocab_size", cfg.vocab, 1),
        ("d_model", cfg.d_model, 1),
        ("n_layers", cfg.n_layers, 1),
        ("d_ff", cfg.d_ff, 1),
        ("max_seq_len", cfg.ctx, 2),
    ] {
        if v < min || v > u32::MAX as usize {
            bail!("{name} is {v}: must be in {min}..={}", u32::MAX);
        }
    }
    // The layer count is compared with the arrays present before anything is built from it.
    if cfg.n_layers != n_layers_found {
        bail!(
            "{}: the configuration says {} layers but the checkpoint has arrays for {n_layers_found} (missing or extra 'layer_{}_q')",
            npz.display(),
            cfg.n_layers,
            cfg.n_layers.min(n_layers_found)
        );
    }

    // Every key with its expected shape; anything else in the archive is an error.
    let (v, d, f) = (cfg.vocab, cfg.d_model, cfg.d_ff);
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("embedding".into(), vec![v, d]),
        ("output_projection".into(), vec![d, v]),
    ];
    for i in 0..cfg.n_layers {
        for (s, shape) in [
            ("q", vec![d, d]),
            ("k", vec![d, d]),
            ("v", vec![d, d]),
            ("ffn1", vec![d, f]),
            ("ffn2", vec![f, d]),
            ("g1", vec![d]),
            ("b1", vec![d]),
            ("g2", vec![d]),
            ("b2", vec![d]),
        ] {
            expected.push((format!("layer_{i}_{s}"), shape));
        }
    }
    let final_norm = FINAL_NORM_KEYS
        .iter()
        .find(|(g, _)| arrays.contains_key(*g))
        .map(|(g, b)| (g.to_string(), b.to_string()));
    if let Some((g, b)) = &final_norm {
        expected.push((g.clone(), vec![d]));
        expected.push((b.clone(), vec![d]));
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let extra: Vec<&String> = arrays
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    if !extra.is_empty() {
        bail!(
            "{}: unexpected keys {extra:?} (not part of a {}-layer Jarvis checkpoint)",
            npz.display(),
            cfg.n_layers
        );
    }
    for (key, shape) in &expected {
        let m = archive.member(key).ok_or_else(|| {
            anyhow!(
                "{}: missing '{key}' (expected shape {shape:?})",
                npz.display()
            )
        })?;
        if &m.header.shape != shape {
            bail!(
                "{}: '{key}' has shape {:?}, expected {shape:?} from the configuration",
                npz.display(),
                m.header.shape
            );
        }
        if !matches!(m.header.descr.as_str(), "<f4" | "<f8" | "<f2") {
            bail!(
                "{}: '{key}' has element type {}, expected a float type",
                npz.display(),
                m.header.descr
            );
        }
    }
    let mut values = BTreeMap::new();
    for (key, _) in &expected {
        let a = archive.read(key)?;
        if let Some(i) = a.data.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: '{key}' holds {} at flat index {i} (of {} NaN or infinite values); refusing to convert",
                npz.display(),
                a.data[i],
                a.data.iter().filter(|x| !x.is_finite()).count()
            );
        }
        values.insert(key.clone(), a);
    }
    let arrays = values;

    let tok_path = tokenizer
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("tokenizer.json"));
    let tokens = read_tokenizer(&tok_path)?;
    if tokens.len() != cfg.vocab {
        bail!(
            "{}: {} tokens, but the embedding has {} rows",
            tok_path.display(),
            tokens.len(),
            cfg.vocab
        );
    }
    let name = npz
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "jarvis".into());
    Ok(Checkpoint {
        cfg,
        arrays,
        tokens,
        final_norm,
        name,
    })
}

/// Where an output tensor's values come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An npz array as stored (row-major).
    Copy(String),
    /// The transpose of a 2-D npz array (numpy `[in, out]` -> ggml `ne = [in, out]`).
    Transpose(String),
    /// Transposes of several `[d, d]` arrays stacked (the fused `attn_qkv`).
    StackTransposed(Vec<String>),
    Zeros(usize),
    Identity(usize),
    /// The sinusoidal position table, `ctx x d`.
    Positions(usize, usize),
}

/// One output tensor: name, ggml dimensions, source, and whether it takes the chosen type.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub source: Source,
    pub quantizable: bool,
}

fn t(name: impl Into<String>, ne: &[usize], source: Source, quantizable: bool) -> PlannedTensor {
    PlannedTensor {
        name: name.into(),
        ne: ne.iter().map(|&x| x as u64).collect(),
        source,
        quantizable,
    }
}

/// The native `jarvis` layout.
pub fn native_plan(ck: &Checkpoint) -> Vec<PlannedTensor> {
    let c = &ck.cfg;
    let (v, d, f) = (c.vocab, c.d_model, c.d_ff);
    let mut out = vec![t(
        "token_embd.weight",
        &[d, v],
        Source::Copy("embedding".into()),
        true,
    )];
    for i in 0..c.n_layers {
        let k = |s: &str| format!("layer_{i}_{s}");
        let n = |s: &str| format!("blk.{i}.{s}");
        out.extend([
            t(n("attn_norm.weight"), &[d], Source::Copy(k("g1")), false),
            t(n("attn_norm.bias"), &[d], Source::Copy(k("b1")), false),
            t(n("attn_q.weight"), &[d, d], Source::Transpose(k("q")), true),
            t(n("attn_k.weight"), &[d, d], Source::Transpose(k("k")), true),
            t(n("attn_v.weight"), &[d, d], Source::Transpose(k("v")), true),
            t(n("ffn_norm.weight"), &[d], Source::Copy(k("g2")), false),
            t(n("ffn_norm.bias"), &[d], Source::Copy(k("b2")), false),
            t(
                n("ffn_up.weight"),
                &[d, f],
                Source::Transpose(k("ffn1")),
                true,
            ),
            t(
                n("ffn_down.weight"),
                &[f, d],
                Source::Transpose(k("ffn2")),
                true,
            ),
        ]);
    }
    if let Some((g, b)) = &ck.final_norm {
        out.push(t(
            "output_norm.weight",
            &[d],
            Source::Copy(g.clone()),
            false,
        ));
        out.push(t("output_norm.bias", &[d], Source::Copy(b.clone()), false));
    }
    out.push(t(
        "output.weight",
        &[d, v],
        Source::Transpose("output_projection".into()),
        true,
    ));
    out
}

/// The exact `gpt2` layout (requires the final norm).
pub fn gpt2_plan(ck: &Checkpoint) -> Vec<PlannedTensor> {
    let c = &ck.cfg;
    let (v, d, f) = (c.vocab, c.d_model, c.d_ff);
    let (g, b) = ck.final_norm.clone().expect("checked by the caller");
    let mut out = vec![
        t(
            "token_embd.weight",
            &[d, v],
            Source::Copy("embedding".into()),
            true,
        ),
        t(
            "position_embd.weight",
            &[d, c.ctx],
            Source::Positions(c.ctx, d),
            false,
        ),
    ];
    for i in 0..c.n_layers {
        let k = |s: &str| format!("layer_{i}_{s}");
        let n = |s: &str| format!("blk.{i}.{s}");
        out.extend([
            t(n("attn_norm.weight"), &[d], Source::Copy(k("g1")), false),
            t(n("attn_norm.bias"), &[d], Source::Copy(k("b1")), false),
            t(
                n("attn_qkv.weight"),
                &[d, 3 * d],
                Source::StackTransposed(vec![k("q"), k("k"), k("v")]),
                true,
            ),
            t(n("attn_qkv.bias"), &[3 * d], Source::Zeros(3 * d), false),
            t(n("attn_output.weight"), &[d, d], Source::Identity(d), true),
            t(n("attn_output.bias"), &[d], Source::Zeros(d), false),
            t(n("ffn_norm.weight"), &[d], Source::Copy(k("g2")), false),
            t(n("ffn_norm.bias"), &[d], Source::Copy(k("b2")), false),
            t(
                n("ffn_up.weight"),
                &[d, f],
                Source::Transpose(k("ffn1")),
                true,
            ),
            t(n("ffn_up.bias"), &[f], Source::Zeros(f), false),
            t(
                n("ffn_down.weight"),
                &[f, d],
                Source::Transpose(k("ffn2")),
                true,
            ),
            t(n("ffn_down.bias"), &[d], Source::Zeros(d), false),
        ]);
    }
    out.extend([
        t("output_norm.weight", &[d], Source::Copy(g), false),
        t("output_norm.bias", &[d], Source::Copy(b), false),
        t(
            "output.weight",
            &[d, v],
            Source::Transpose("output_projection".into()),
            true,
        ),
    ]);
    out
}

fn transpose(a: &NpyArray) -> Vec<f32> {
    let (r, c) = (a.shape[0], a.shape[1]);
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = a.data[i * c + j];
        }
    }
    out
}

fn values(ck: &Checkpoint, s: &Source) -> Vec<f32> {
    let get = |k: &String| &ck.arrays[k];
    match s {
        Source::Copy(k) => get(k).data.clone(),
        Source::Transpose(k) => transpose(get(k)),
        Source::StackTransposed(ks) => ks.iter().flat_map(|k| transpose(get(k))).collect(),
        Source::Zeros(n) => vec![0.0; *n],
        Source::Identity(n) => {
            let mut m = vec![0f32; n * n];
            for i in 0..*n {
                m[i * n + i] = 1.0;
            }
            m
        }
        Source::Positions(ctx, d) => sinusoidal_table(*ctx, *d),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Native,
    Ollama,
}

fn tokenizer_metadata(w: &mut GgufWriter, ck: &Checkpoint, target: Target) -> Result<()> {
    let id = |s: &str| ck.tokens.iter().position(|t| t == s).map(|i| i as u32);
    let (pad, unk, eos, bos) = (id("<pad>"), id("<unk>"), id("<eos>"), id("<bos>"));
    let special = |i: usize| [pad, eos, bos].contains(&Some(i as u32));
    // For the Ollama target, a word the native decoder writes without a space before it (one
    // punctuation or symbol character) is USER_DEFINED with its bare text: llama.cpp matches
    // such tokens in the raw text before its WPM tokenizer runs (the ids are the same, since
    // the native tokenizer makes every such character a word of its own) and writes their
    // text as it is, where a NORMAL "▁." would print " .". So llama.cpp's (and Ollama's)
    // per-token pieces give the native engine's text.
    let attached =
        |i: usize| target == Target::Ollama && jq::models::jarvis::attaches_left(&ck.tokens[i]);
    let types: Vec<i32> = (0..ck.tokens.len())
        .map(|i| {
            if Some(i as u32) == unk {
                2 // UNKNOWN
            } else if special(i) {
                3 // CONTROL
            } else if attached(i) {
                4 // USER_DEFINED
            } else {
                1 // NORMAL
            }
        })
        .collect();
    match target {
        Target::Native => {
            w.add("tokenizer.ggml.model", "jarvis-word")?;
            w.add("tokenizer.ggml.tokens", MetaValue::strings(&ck.tokens))?;
        }
        Target::Ollama => {
            // llama.cpp's WPM tokenizer looks words up with the "▁" word-start marker.
            let pieces: Vec<String> = ck
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if special(i) || Some(i as u32) == unk || attached(i) {
                        t.clone()
                    } else {
                        format!("\u{2581}{t}")
                    }
                })
                .collect();
            w.add("tokenizer.ggml.model", "bert")?;
            w.add("tokenizer.ggml.pre", "default")?;
            w.add("tokenizer.ggml.tokens", MetaValue::strings(&pieces))?;
            // Override the bert defaults: no automatic BOS/SEP, and explicit special ids
            // (llama.cpp otherwise assumes 101/100/102/0/103).
            w.add("tokenizer.ggml.add_bos_token", false)?;
            w.add("tokenizer.ggml.add_sep_token", false)?;
            let fallback = eos.or(pad).unwrap_or(0);
            w.add("tokenizer.ggml.seperator_token_id", fallback)?;
            w.add("tokenizer.ggml.mask_token_id", pad.unwrap_or(fallback))?;
        }
    }
    w.add(
        "tokenizer.ggml.token_type",
        MetaValue::array(ValueType::I32, types),
    )?;
    w.add("tokenizer.ggml.normalizer.lowercase", ck.cfg.lowercase)?;
    w.add("tokenizer.ggml.normalizer.strip_accents", ck.cfg.lowercase)?;
    let eos_id = eos.ok_or_else(|| anyhow!("the vocabulary has no <eos> token"))?;
    w.add("tokenizer.ggml.eos_token_id", eos_id)?;
    if let Some(u) = unk {
        w.add("tokenizer.ggml.unknown_token_id", u)?;
    }
    if let Some(p) = pad {
        w.add("tokenizer.ggml.padding_token_id", p)?;
    }
    match (bos, target) {
        (Some(b), _) => w.add("tokenizer.ggml.bos_token_id", b)?,
        (None, Target::Ollama) => w.add("tokenizer.ggml.bos_token_id", eos_id)?,
        (None, Target::Native) => {}
    }
    Ok(())
}

pub struct Options {
    pub ty: GgmlType,
    pub target: Target,
    pub approximate: bool,
    pub progress: bool,
}

/// Converts `ck` into `out`'s temporary file; the caller renames it into place with
/// [`AtomicFile::commit`]. Returns the number of weights that fell back to F16 because their
/// rows are not whole blocks.
pub fn write(ck: &Checkpoint, out: &Path, opts: &Options) -> Result<(usize, AtomicFile)> {
    let c = &ck.cfg;
    let ftype =
        FileType::for_type(opts.ty).ok_or_else(|| anyhow!("unsupported type {}", opts.ty))?;
    let plan = match opts.target {
        Target::Native => native_plan(ck),
        Target::Ollama if ck.final_norm.is_some() => gpt2_plan(ck),
        Target::Ollama if opts.approximate => {
            bail!("--approximate is not implemented: the checkpoint has no final LayerNorm, and llama.cpp's gpt2 graph always applies one, so no exact gpt2 export exists")
        }
        Target::Ollama => bail!(
            "{} has no final LayerNorm (final_g/final_b): llama.cpp's gpt2 graph always applies one, so it cannot be exported exactly for Ollama; use --target native",
            ck.name
        ),
    };
    if opts.target == Target::Ollama {
        // The gpt2 export materialises a ctx x d_model position table.
        let bytes = (c.ctx as u64)
            .saturating_mul(c.d_model as u64)
            .saturating_mul(4);
        if bytes > 1 << 32 {
            bail!(
                "max_seq_len {} x d_model {} makes a {} MiB position table for the gpt2 export; refusing (at most 4 GiB)",
                c.ctx,
                c.d_model,
                bytes >> 20
            );
        }
    }
    let mut w = GgufWriter::new();
    let arch = match opts.target {
        Target::Native => keys::ARCH,
        Target::Ollama => "gpt2",
    };
    w.add("general.architecture", arch)?;
    w.add("general.name", ck.name.as_str())?;
    w.add("general.file_type", ftype as u32)?;
    w.add("general.quantization_version", 2u32)?;
    let k = |s: &str| format!("{arch}.{s}");
    w.add(k("context_length"), c.ctx as u32)?;
    w.add(k("embedding_length"), c.d_model as u32)?;
    w.add(k("feed_forward_length"), c.d_ff as u32)?;
    w.add(k("block_count"), c.n_layers as u32)?;
    w.add(k("attention.head_count"), c.n_heads as u32)?;
    w.add(k("attention.layer_norm_epsilon"), c.eps)?;
    if opts.target == Target::Native {
        // Decisions the seed left open, recorded so that no reader has to guess.
        w.add(keys::GELU, c.gelu.name())?;
        w.add(keys::POSITIONAL, "sinusoidal")?;
        w.add(keys::CONTEXT_SHIFT, "keep-last-half")?;
    } else if c.gelu != Gelu::Tanh {
        bail!(
            "llama.cpp's gpt2 graph uses the tanh GELU; this checkpoint uses {}",
            c.gelu.name()
        );
    }
    tokenizer_metadata(&mut w, ck, opts.target)?;

    let mut fallbacks = 0;
    let mut types = Vec::with_capacity(plan.len());
    for p in &plan {
        let mut ty = if p.quantizable {
            opts.ty
        } else {
            GgmlType::F32
        };
        if ty.block_size() > 1 && p.ne[0] % ty.block_size() != 0 {
            eprintln!(
                "warning: {}: {} columns is not a multiple of {}; stored as F16",
                p.name,
                p.ne[0],
                ty.block_size()
            );
            ty = GgmlType::F16;
            fallbacks += 1;
        }
        w.add_tensor(&p.name, ty, &p.ne)?;
        types.push(ty);
    }
    let total: u64 = w.tensors().iter().map(|t| t.size).sum();
    let pb = crate::progress::byte_bar(total, opts.progress);
    let file = w
        .write_pending(out, |i, t, o| {
            pb.set_message(t.name.clone());
            let bytes =
                quantize_to_vec(types[i], &values(ck, &plan[i].source)).map_err(|source| {
                    GgufError::Codec {
                        name: t.name.clone(),
                        source,
                    }
                })?;
            o.write_all(&bytes)
                .map_err(|e| GgufError::io("<output>", e))?;
            pb.inc(t.size);
            Ok(())
        })
        .with_context(|| format!("writing {}", out.display()))?;
    pb.finish_and_clear();
    Ok((fallbacks, file))
}
