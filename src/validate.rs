//! The metadata and tensor-shape checks every engine runs before it builds anything from a GGUF:
//! the native Jarvis engine, llama.cpp (which aborts the process on some of these, e.g. its
//! `GGML_ASSERT(n_layer > 0 && n_layer <= LLAMA_MAX_LAYERS)`, or lets a C++ exception cross into
//! Rust), and the layer streamer (which builds ggml graphs from the hyper-parameters and
//! allocates by them).
//!
//! For any architecture ([`check`] on a file llama.cpp would load): the assertions of
//! llama.cpp's `llama_model_base::load_hparams` (block count within 1..=512 and not above the
//! blocks the file has tensors for, experts, `nextn_predict_layers`, RoPE scaling type), a
//! context length of at least 1, head counts that divide, a token list of distinct strings (its
//! vocabulary loader asserts `id_to_token.size() == token_to_id.size()`) as long as the token
//! embedding has rows. For `gemma3` and `gpt2` every tensor's shape is then checked against the
//! hyper-parameters exactly as their `load_arch_tensors` asks `create_tensor` to (dimensions past
//! the expected ones must be 1), and norms and biases must be F32; `jarvis` gets the shapes its
//! native loader reads. The architectures-as-data issue later moves these tables beside the
//! per-family code.

use crate::arch::{keys, swa, Dim, Family, Role, TensorSpec};
use crate::gguf::{GgufFile, GgufModel, TensorInfo, Value, ValueType};
use crate::quant::GgmlType;
use std::collections::HashMap;

/// `LLAMA_MAX_LAYERS`.
pub const MAX_LAYERS: u64 = 512;
/// `LLAMA_MAX_EXPERTS`.
pub const MAX_EXPERTS: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("metadata key '{key}' {reason}")]
    Key { key: String, reason: String },
    #[error("tensor '{name}' {reason}")]
    Tensor { name: String, reason: String },
}

impl ValidateError {
    /// The key or tensor the error is about.
    pub fn culprit(&self) -> &str {
        match self {
            ValidateError::Key { key, .. } => key,
            ValidateError::Tensor { name, .. } => name,
        }
    }
}

type Result<T> = std::result::Result<T, ValidateError>;

/// What the checks read: one GGUF file or a split set.
pub trait Source {
    fn get(&self, key: &str) -> Option<Value<'_>>;
    fn infos(&self) -> Vec<&TensorInfo>;
    fn info(&self, name: &str) -> Option<&TensorInfo>;
}

impl Source for GgufFile {
    fn get(&self, key: &str) -> Option<Value<'_>> {
        GgufFile::get(self, key)
    }
    fn infos(&self) -> Vec<&TensorInfo> {
        self.tensor_infos().iter().collect()
    }
    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor(name).ok().map(|t| t.info)
    }
}

impl Source for GgufModel {
    fn get(&self, key: &str) -> Option<Value<'_>> {
        GgufModel::get(self, key)
    }
    fn infos(&self) -> Vec<&TensorInfo> {
        self.tensor_infos().collect()
    }
    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor(name).ok().map(|t| t.info)
    }
}

fn key_err(key: &str, reason: impl Into<String>) -> ValidateError {
    ValidateError::Key {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn tensor_err(name: &str, reason: impl Into<String>) -> ValidateError {
    ValidateError::Tensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// An unsigned integer key: `None` when absent, an error when present as anything else.
fn uint(f: &dyn Source, key: &str) -> Result<Option<u64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            key_err(
                key,
                format!("must be a non-negative integer, is {}", v.type_name()),
            )
        }),
    }
}

fn need(f: &dyn Source, key: &str) -> Result<u64> {
    uint(f, key)?.ok_or_else(|| key_err(key, "is missing"))
}

/// A per-layer key given as one integer or an array of `n_layer` (llama.cpp's
/// `get_key_or_arr`). `None` when absent.
fn per_layer(f: &dyn Source, key: &str, n_layer: u64) -> Result<Option<Vec<u64>>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => {
            if a.len() != n_layer {
                return Err(key_err(
                    key,
                    format!("has {} entries for {n_layer} layers", a.len()),
                ));
            }
            a.to_u64_vec()
                .map(Some)
                .ok_or_else(|| key_err(key, "must be an array of non-negative integers"))
        }
        Some(v) => {
            let x = v.as_u64().ok_or_else(|| {
                key_err(
                    key,
                    format!("must be a non-negative integer, is {}", v.type_name()),
                )
            })?;
            Ok(Some(vec![x; n_layer as usize]))
        }
    }
}

/// A float key, when present, must be finite and at least `min` (above it when `strict`).
fn finite(f: &dyn Source, key: &str, min: f64, strict: bool) -> Result<()> {
    let Some(v) = f.get(key) else {
        return Ok(());
    };
    let x = v
        .as_f64()
        .ok_or_else(|| key_err(key, format!("must be a number, is {}", v.type_name())))?;
    if !x.is_finite() || x < min || (strict && x == min) {
        let want = if strict { "above" } else { "at least" };
        return Err(key_err(
            key,
            format!("is {x}, must be a finite number {want} {min}"),
        ));
    }
    Ok(())
}

/// What the generic checks learnt, for the per-architecture ones.
#[derive(Debug, Clone)]
struct Hparams {
    arch: String,
    n_layer: u64,
    n_embd: u64,
    n_ctx: u64,
    /// Per layer.
    n_head: Vec<u64>,
    n_head_kv: Vec<u64>,
    n_ff: Vec<u64>,
    /// Token strings, when the file has a token list.
    n_tokens: Option<u64>,
}

impl Hparams {
    fn key(&self, s: &str) -> String {
        format!("{}.{s}", self.arch)
    }
}

/// Validates a GGUF's metadata and tensors for its architecture.
pub fn check(f: &dyn Source) -> Result<()> {
    let arch = f
        .get("general.architecture")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or_else(|| key_err("general.architecture", "is missing or not a string"))?;
    if arch == "jarvis" {
        return jarvis(f);
    }
    let hp = generic(f, &arch)?;
    match arch.as_str() {
        "gemma3" => gemma3(f, &hp),
        "gpt2" => gpt2(f, &hp),
        "llama" | "qwen2" | "qwen3" => decoder(f, &hp),
        _ => Ok(()),
    }
}

/// The largest `N` of the `blk.N.*` tensors, and how many such tensors there are.
fn blocks_present(f: &dyn Source) -> Option<u64> {
    f.infos()
        .into_iter()
        .filter_map(|t| {
            t.name
                .strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
}

fn check_block_count(f: &dyn Source, key: &str, n_layer: u64, min: u64) -> Result<()> {
    if n_layer < min || n_layer > MAX_LAYERS {
        return Err(key_err(
            key,
            format!("is {n_layer}, must be in {min}..={MAX_LAYERS}"),
        ));
    }
    match blocks_present(f) {
        Some(max) if n_layer > max + 1 => Err(key_err(
            key,
            format!("is {n_layer} but the file has tensors for blocks 0..={max} only"),
        )),
        None if n_layer > 0 && f.infos().into_iter().any(|t| t.name.starts_with("blk.")) => Err(
            key_err(key, format!("is {n_layer} but no tensor is named blk.N.*")),
        ),
        _ => Ok(()),
    }
}

/// Token strings must be distinct (llama.cpp renames an empty one `[EMPTY_<i>]` first, then
/// asserts); returns their count.
fn check_tokens(f: &dyn Source) -> Result<Option<u64>> {
    const KEY: &str = "tokenizer.ggml.tokens";
    let Some(v) = f.get(KEY) else {
        return Ok(None);
    };
    let a = v
        .as_array()
        .filter(|a| a.elem_type() == ValueType::String)
        .ok_or_else(|| {
            key_err(
                KEY,
                format!("must be an array of strings, is {}", v.type_name()),
            )
        })?;
    if a.is_empty() {
        return Err(key_err(KEY, "is empty"));
    }
    let mut seen: HashMap<std::borrow::Cow<'_, [u8]>, usize> =
        HashMap::with_capacity(a.len().min(1 << 20) as usize);
    for (i, s) in a.strings().enumerate() {
        let s: std::borrow::Cow<'_, [u8]> = if s.is_empty() {
            format!("[EMPTY_{i}]").into_bytes().into()
        } else {
            s.into()
        };
        if let Some(j) = seen.insert(s.clone(), i) {
            return Err(key_err(
                KEY,
                format!(
                    "holds '{}' twice (ids {j} and {i}); llama.cpp aborts on duplicate tokens",
                    String::from_utf8_lossy(&s)
                ),
            ));
        }
    }
    Ok(Some(a.len()))
}

/// The checks that protect llama.cpp's loader for any architecture.
fn generic(f: &dyn Source, arch: &str) -> Result<Hparams> {
    let k = |s: &str| format!("{arch}.{s}");
    let n_layer = need(f, &k(keys::BLOCK_COUNT))?;
    check_block_count(f, &k(keys::BLOCK_COUNT), n_layer, 1)?;
    let n_ctx = need(f, &k(keys::CONTEXT_LENGTH))?;
    if n_ctx == 0 {
        return Err(key_err(
            &k(keys::CONTEXT_LENGTH),
            "is 0, must be at least 1",
        ));
    }
    let n_embd = need(f, &k(keys::EMBEDDING_LENGTH))?;
    if n_embd == 0 {
        return Err(key_err(
            &k(keys::EMBEDDING_LENGTH),
            "is 0, must be at least 1",
        ));
    }
    if let Some(n) = uint(f, &k("nextn_predict_layers"))? {
        if n > n_layer {
            return Err(key_err(
                &k("nextn_predict_layers"),
                format!("is {n}, more than block_count {n_layer}"),
            ));
        }
    }
    // Experts: llama.cpp's load_hparams asserts each of these.
    let n_expert = uint(f, &k(keys::EXPERT_COUNT))?.unwrap_or(0);
    let used = per_layer(f, &k("expert_used_count"), n_layer)?
        .map_or(0, |v| v.into_iter().max().unwrap_or(0));
    let groups = uint(f, &k("expert_group_count"))?.unwrap_or(0);
    let group_used = uint(f, &k("expert_group_used_count"))?.unwrap_or(0);
    if n_expert > MAX_EXPERTS {
        return Err(key_err(
            &k(keys::EXPERT_COUNT),
            format!("is {n_expert}, at most {MAX_EXPERTS}"),
        ));
    }
    if used > n_expert {
        return Err(key_err(
            &k("expert_used_count"),
            format!("is {used}, more than expert_count {n_expert}"),
        ));
    }
    if n_expert > 0 {
        if used == 0 {
            return Err(key_err(
                &k("expert_used_count"),
                "is 0 (or missing) with experts present",
            ));
        }
        if groups >= n_expert {
            return Err(key_err(
                &k("expert_group_count"),
                format!("is {groups}, must be below expert_count {n_expert}"),
            ));
        }
        if groups > 1
            && (!n_expert.is_multiple_of(groups) || group_used == 0 || group_used >= groups)
        {
            return Err(key_err(
                &k("expert_group_used_count"),
                format!("is {group_used} for {groups} groups of {n_expert} experts (groups must divide the experts, 0 < used < groups)"),
            ));
        }
    } else if groups != 0 {
        return Err(key_err(
            &k("expert_group_count"),
            format!("is {groups} without experts"),
        ));
    }
    if let Some(v) = f.get(&k(keys::ROPE_SCALING_TYPE)) {
        let s = v.as_str().unwrap_or("");
        if !["none", "linear", "yarn", "longrope"].contains(&s) {
            return Err(key_err(
                &k(keys::ROPE_SCALING_TYPE),
                format!("is '{s}', must be none, linear, yarn or longrope"),
            ));
        }
    }
    // ggml asserts eps >= 0 in its norms (a NaN fails that too).
    for key in ["attention.layer_norm_epsilon", keys::RMS_EPS] {
        finite(f, &k(key), 0.0, false)?;
    }
    let n_head =
        per_layer(f, &k(keys::HEAD_COUNT), n_layer)?.unwrap_or_else(|| vec![0; n_layer as usize]);
    let n_head_kv =
        per_layer(f, &k(keys::HEAD_COUNT_KV), n_layer)?.unwrap_or_else(|| n_head.clone());
    for (i, (&h, &kv)) in n_head.iter().zip(&n_head_kv).enumerate() {
        if h == 0 && kv > 0 {
            return Err(key_err(
                &k(keys::HEAD_COUNT),
                format!("is 0 at layer {i} with head_count_kv {kv}"),
            ));
        }
        if kv > h || (h > 0 && kv > 0 && !h.is_multiple_of(kv)) {
            return Err(key_err(
                &k(keys::HEAD_COUNT_KV),
                format!("is {kv} at layer {i} for {h} heads: it must divide the head count"),
            ));
        }
    }
    let n_ff = per_layer(f, &k(keys::FEED_FORWARD_LENGTH), n_layer)?
        .unwrap_or_else(|| vec![0; n_layer as usize]);
    let n_tokens = check_tokens(f)?;
    if let (Some(n), Some(t)) = (n_tokens, f.info("token_embd.weight")) {
        let rows = t.ne.get(1).copied().unwrap_or(1);
        if rows != n {
            return Err(tensor_err(
                "token_embd.weight",
                format!("has {rows} rows but tokenizer.ggml.tokens has {n} tokens"),
            ));
        }
    }
    Ok(Hparams {
        arch: arch.to_string(),
        n_layer,
        n_embd,
        n_ctx,
        n_head,
        n_head_kv,
        n_ff,
        n_tokens,
    })
}

/// One expected tensor: name, ggml dimensions, whether it must exist, and whether it must be F32.
struct Want {
    name: String,
    ne: Vec<u64>,
    required: bool,
    f32: bool,
}

fn want(name: impl Into<String>, ne: &[u64], required: bool) -> Want {
    let f32 = ne.len() == 1;
    Want {
        name: name.into(),
        ne: ne.to_vec(),
        required,
        f32,
    }
}

/// `check_tensor_dims`: the expected dimensions, and 1 beyond them.
fn dims_match(t: &TensorInfo, ne: &[u64]) -> bool {
    (0..4).all(|i| t.ne4()[i] == ne.get(i).copied().unwrap_or(1))
}

fn check_tensors(f: &dyn Source, wants: &[Want], why: &str) -> Result<()> {
    for w in wants {
        let Some(t) = f.info(&w.name) else {
            if w.required {
                return Err(tensor_err(&w.name, "is missing"));
            }
            continue;
        };
        if !dims_match(t, &w.ne) {
            return Err(tensor_err(
                &w.name,
                format!("has shape {:?}, expected {:?} from {why}", t.ne, w.ne),
            ));
        }
        if w.f32 && t.ty != GgmlType::F32 {
            return Err(tensor_err(
                &w.name,
                format!("is {}, expected F32 (norms and biases are F32)", t.ty),
            ));
        }
    }
    Ok(())
}

/// One value per layer must be the same everywhere for these architectures' graphs.
fn uniform(hp: &Hparams, v: &[u64], key: &str, min: u64) -> Result<u64> {
    let k = hp.key(key);
    let x = v.first().copied().unwrap_or(0);
    if v.iter().any(|&y| y != x) {
        return Err(key_err(&k, "must be the same for every layer"));
    }
    if x < min {
        return Err(key_err(&k, format!("is {x}, must be at least {min}")));
    }
    Ok(x)
}

fn n_vocab(f: &dyn Source, hp: &Hparams) -> Result<u64> {
    match hp.n_tokens {
        Some(n) => Ok(n),
        None => Err(key_err("tokenizer.ggml.tokens", "is missing")),
    }
    .or_else(|e| {
        f.info("token_embd.weight")
            .and_then(|t| t.ne.get(1).copied())
            .ok_or(e)
    })
}

fn head_dims(f: &dyn Source, hp: &Hparams, n_head: u64) -> Result<(u64, u64)> {
    let k = uint(f, &hp.key(keys::KEY_LENGTH))?;
    let v = uint(f, &hp.key(keys::VALUE_LENGTH))?;
    if k.is_none() && !hp.n_embd.is_multiple_of(n_head) {
        return Err(key_err(
            &hp.key(keys::HEAD_COUNT),
            format!(
                "is {n_head}, which does not divide embedding_length {}",
                hp.n_embd
            ),
        ));
    }
    let hk = k.unwrap_or(hp.n_embd / n_head);
    let hv = v.unwrap_or(hp.n_embd / n_head);
    for (key, x) in [(keys::KEY_LENGTH, hk), (keys::VALUE_LENGTH, hv)] {
        if x == 0 {
            return Err(key_err(&hp.key(key), "is 0, must be at least 1"));
        }
    }
    Ok((hk, hv))
}

/// The block count must be exactly the blocks that have tensors (llama.cpp refuses other
/// counts for these architectures, after reading the file).
fn exact_blocks(f: &dyn Source, key: &str, n_layer: u64) -> Result<()> {
    match blocks_present(f) {
        Some(max) if max + 1 != n_layer => Err(key_err(
            key,
            format!("is {n_layer} but the file has tensors for blocks 0..={max}"),
        )),
        _ => Ok(()),
    }
}

/// `llama_model_gemma3::load_arch_tensors`.
fn gemma3(f: &dyn Source, hp: &Hparams) -> Result<()> {
    exact_blocks(f, &hp.key(keys::BLOCK_COUNT), hp.n_layer)?;
    let n_head = uniform(hp, &hp.n_head, keys::HEAD_COUNT, 1)?;
    let n_kv = uniform(hp, &hp.n_head_kv, keys::HEAD_COUNT_KV, 1)?;
    let n_ff = uniform(hp, &hp.n_ff, keys::FEED_FORWARD_LENGTH, 1)?;
    let (hk, hv) = head_dims(f, hp, n_head)?;
    if f.get(&hp.key(keys::RMS_EPS))
        .and_then(|v| v.as_f64())
        .is_none()
    {
        return Err(key_err(
            &hp.key(keys::RMS_EPS),
            "is missing or not a number",
        ));
    }
    // `load_swa_pattern(ml, 6)`: a sliding window with no sliding layer trips llama.cpp's
    // GGML_ASSERT(hparams.is_swa_any()) when the context is made.
    if uint(f, &hp.key(keys::SLIDING_WINDOW))?.unwrap_or(0) > 0 {
        let key = hp.key(keys::SLIDING_WINDOW_PATTERN);
        let any = match f.get(&key) {
            Some(Value::Array(a)) => {
                let v = swa::flags(&a).ok_or_else(|| {
                    key_err(
                        &key,
                        "must be an array of bools (or uint32/int32) or one integer",
                    )
                })?;
                if v.len() as u64 != hp.n_layer {
                    return Err(key_err(
                        &key,
                        format!("has {} entries for {} layers", v.len(), hp.n_layer),
                    ));
                }
                v.contains(&true)
            }
            _ => {
                let (n, dense_first) = swa::swa_default("gemma3").unwrap_or((6, false));
                let p = uint(f, &key)?.unwrap_or(u64::from(n));
                let p = u32::try_from(p).map_err(|_| key_err(&key, format!("is {p}")))?;
                // Only the first period decides whether any layer slides.
                let n_check = hp.n_layer.min(u64::from(p) + 1) as usize;
                swa::swa_of_period(n_check, p, dense_first).contains(&true)
            }
        };
        if !any {
            return Err(key_err(
                &key,
                "makes no layer sliding while attention.sliding_window is set (llama.cpp aborts on that)",
            ));
        }
    }
    for (key, min, strict) in [
        (keys::ROPE_FREQ_BASE, 0.0, true),
        (keys::ROPE_FREQ_BASE_SWA, 0.0, true),
        (keys::ROPE_SCALING_FACTOR, 0.0, false),
        (keys::FINAL_LOGIT_SOFTCAPPING, 0.0, false),
    ] {
        finite(f, &hp.key(key), min, strict)?;
    }
    let (e, v) = (hp.n_embd, n_vocab(f, hp)?);
    let w = table_wants(f, hp, Family::Gemma3, (hk, hv), (n_head, n_kv), n_ff, v, hk);
    let why = format!(
        "gemma3.embedding_length {e}, head_count {n_head}, head_count_kv {n_kv}, key_length {hk}, value_length {hv}, feed_forward_length {n_ff}, {v} tokens"
    );
    check_tensors(f, &w, &why)
}

/// The tensors of `family`'s table (`jq::arch`: names, shapes from hyper-parameters, which
/// are optional) as llama.cpp's loader creates them, with the fused `attn_qkv` form that
/// `create_tensor_qkv` also takes (then the separate Q/K/V weights are not required).
#[allow(clippy::too_many_arguments)]
fn table_wants(
    f: &dyn Source,
    hp: &Hparams,
    family: Family,
    (hk, hv): (u64, u64),
    (n_head, n_kv): (u64, u64),
    n_ff: u64,
    n_vocab: u64,
    n_rot: u64,
) -> Vec<Want> {
    let dim = |d: &Dim, role: Role| match d {
        Dim::Embd => hp.n_embd,
        Dim::Q => hk * n_head,
        Dim::Kv if matches!(role, Role::Wv | Role::Bv) => hv * n_kv,
        Dim::Kv => hk * n_kv,
        Dim::HeadDim => hk,
        Dim::Ff => n_ff,
        Dim::Vocab => n_vocab,
        Dim::HalfRot => n_rot / 2,
    };
    let spec = |t: &TensorSpec, il: Option<usize>, required: bool| {
        let ne: Vec<u64> = t.dims.iter().map(|d| dim(d, t.role)).collect();
        want(t.name_in(il), &ne, required)
    };
    let mut w = vec![spec(&crate::arch::TOKEN_EMBD, None, true)];
    w.extend(
        family
            .global_tensors()
            .iter()
            .map(|t| spec(t, None, t.required)),
    );
    let qkv = hk * n_head + hk * n_kv + hv * n_kv;
    for i in 0..hp.n_layer as usize {
        let fused = f.info(&format!("blk.{i}.attn_qkv.weight")).is_some();
        w.push(want(
            format!("blk.{i}.attn_qkv.weight"),
            &[hp.n_embd, qkv],
            false,
        ));
        w.push(want(format!("blk.{i}.attn_qkv.bias"), &[qkv], false));
        for t in family.layer_tensors() {
            let qkv_part = matches!(t.role, Role::Wq | Role::Wk | Role::Wv);
            w.push(spec(t, Some(i), t.required && !(fused && qkv_part)));
        }
    }
    w
}

/// `llama_model_llama` / `qwen2` / `qwen3::load_arch_tensors` (dense; a llama file with
/// experts is left to llama.cpp's own checks, which report errors rather than abort).
fn decoder(f: &dyn Source, hp: &Hparams) -> Result<()> {
    exact_blocks(f, &hp.key(keys::BLOCK_COUNT), hp.n_layer)?;
    if uint(f, &hp.key(keys::EXPERT_COUNT))?.unwrap_or(0) > 0 {
        return Ok(());
    }
    let n_head = uniform(hp, &hp.n_head, keys::HEAD_COUNT, 1)?;
    let n_kv = uniform(hp, &hp.n_head_kv, keys::HEAD_COUNT_KV, 1)?;
    let n_ff = uniform(hp, &hp.n_ff, keys::FEED_FORWARD_LENGTH, 1)?;
    let (hk, hv) = head_dims(f, hp, n_head)?;
    for (key, min, strict) in [
        (keys::ROPE_FREQ_BASE, 0.0, true),
        (keys::ROPE_SCALING_FACTOR, 0.0, false),
    ] {
        finite(f, &hp.key(key), min, strict)?;
    }
    let n_rot = uint(f, &hp.key(keys::ROPE_DIMENSION_COUNT))?.unwrap_or(hk);
    let family = Family::from_arch(&hp.arch).expect("a decoder family");
    let v = n_vocab(f, hp)?;
    let w = table_wants(f, hp, family, (hk, hv), (n_head, n_kv), n_ff, v, n_rot);
    let why = format!(
        "{}.embedding_length {}, head_count {n_head}, head_count_kv {n_kv}, key_length {hk}, value_length {hv}, feed_forward_length {n_ff}, {v} tokens",
        hp.arch, hp.n_embd
    );
    check_tensors(f, &w, &why)
}

/// `llama_model_gpt2::load_arch_tensors`.
fn gpt2(f: &dyn Source, hp: &Hparams) -> Result<()> {
    exact_blocks(f, &hp.key(keys::BLOCK_COUNT), hp.n_layer)?;
    let n_head = uniform(hp, &hp.n_head, keys::HEAD_COUNT, 1)?;
    let n_kv = uniform(hp, &hp.n_head_kv, keys::HEAD_COUNT_KV, 1)?;
    let n_ff = uniform(hp, &hp.n_ff, keys::FEED_FORWARD_LENGTH, 1)?;
    let (hk, hv) = head_dims(f, hp, n_head)?;
    if hk != hv {
        return Err(key_err(
            "gpt2.attention.value_length",
            format!("is {hv}, gpt2 needs it equal to key_length {hk}"),
        ));
    }
    let (e, v, ctx) = (hp.n_embd, n_vocab(f, hp)?, hp.n_ctx);
    let gqa = hk * n_kv;
    let mut w = vec![
        want("token_embd.weight", &[e, v], true),
        want("position_embd.weight", &[e, ctx], true),
        want("output_norm.weight", &[e], true),
        want("output_norm.bias", &[e], true),
        want("output.weight", &[e, v], false),
    ];
    for i in 0..hp.n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        w.extend([
            want(b("attn_norm.weight"), &[e], true),
            want(b("attn_norm.bias"), &[e], true),
            want(b("attn_qkv.weight"), &[e, e + 2 * gqa], true),
            want(b("attn_qkv.bias"), &[e + 2 * gqa], true),
            want(b("attn_output.weight"), &[e, e], true),
            want(b("attn_output.bias"), &[e], true),
            want(b("ffn_norm.weight"), &[e], true),
            want(b("ffn_norm.bias"), &[e], true),
            want(b("ffn_down.weight"), &[n_ff, e], true),
            want(b("ffn_down.bias"), &[e], true),
            want(b("ffn_up.weight"), &[e, n_ff], true),
            want(b("ffn_up.bias"), &[n_ff], true),
        ]);
    }
    let why = format!(
        "gpt2.embedding_length {e}, context_length {ctx}, head_count {n_head}, head_count_kv {n_kv}, feed_forward_length {n_ff}, {v} tokens"
    );
    check_tensors(f, &w, &why)
}

/// What the native Jarvis loader reads (`models::jarvis`).
fn jarvis(f: &dyn Source) -> Result<()> {
    use crate::models::jarvis::keys;
    let n_layer = need(f, keys::BLOCK_COUNT)?;
    check_block_count(f, keys::BLOCK_COUNT, n_layer, 1)?;
    exact_blocks(f, keys::BLOCK_COUNT, n_layer)?;
    let d = need(f, keys::EMBEDDING_LENGTH)?;
    let heads = need(f, keys::HEAD_COUNT)?;
    let ff = need(f, keys::FEED_FORWARD_LENGTH)?;
    let ctx = need(f, keys::CONTEXT_LENGTH)?;
    for (key, x, min) in [
        (keys::EMBEDDING_LENGTH, d, 1),
        (keys::HEAD_COUNT, heads, 1),
        (keys::FEED_FORWARD_LENGTH, ff, 1),
        (keys::CONTEXT_LENGTH, ctx, 2),
    ] {
        if x < min || x > u64::from(u32::MAX) {
            return Err(key_err(
                key,
                format!("is {x}, must be in {min}..={}", u32::MAX),
            ));
        }
    }
    finite(f, keys::LAYER_NORM_EPS, 0.0, false)?;
    if !d.is_multiple_of(heads) {
        return Err(key_err(
            keys::HEAD_COUNT,
            format!("is {heads}, which does not divide embedding_length {d}"),
        ));
    }
    let v = check_tokens(f)?.ok_or_else(|| key_err("tokenizer.ggml.tokens", "is missing"))?;
    let norm = f.info("output_norm.weight").is_some();
    let mut w = vec![
        want("token_embd.weight", &[d, v], true),
        want("output.weight", &[d, v], true),
        want("output_norm.weight", &[d], norm),
        want("output_norm.bias", &[d], norm),
    ];
    for i in 0..n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        w.extend([
            want(b("attn_norm.weight"), &[d], true),
            want(b("attn_norm.bias"), &[d], true),
            want(b("attn_q.weight"), &[d, d], true),
            want(b("attn_k.weight"), &[d, d], true),
            want(b("attn_v.weight"), &[d, d], true),
            want(b("ffn_norm.weight"), &[d], true),
            want(b("ffn_norm.bias"), &[d], true),
            want(b("ffn_up.weight"), &[d, ff], true),
            want(b("ffn_down.weight"), &[ff, d], true),
        ]);
    }
    // The native loader decodes any type with a codec; only the shapes are fixed.
    for x in &mut w {
        x.f32 = false;
    }
    let why = format!("jarvis.embedding_length {d}, feed_forward_length {ff}, {v} tokens");
    check_tensors(f, &w, &why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, MetaValue};

    /// A metadata-and-shapes-only GGUF (zeros for data) from `(name, ne)`.
    fn file(kvs: Vec<(&str, MetaValue)>, tensors: &[(String, Vec<u64>)]) -> GgufFile {
        let mut w = GgufWriter::new();
        for (k, v) in kvs {
            w.add(k, v).unwrap();
        }
        for (n, ne) in tensors {
            w.add_tensor(n, GgmlType::F32, ne).unwrap();
        }
        let mut out = Vec::new();
        w.write_to(&mut out, |_, t, o| {
            o.write_all(&vec![0u8; t.size as usize])
                .map_err(|e| crate::gguf::GgufError::io("<output>", e))
        })
        .unwrap();
        GgufFile::from_vec(out).unwrap()
    }

    fn tokens(n: usize) -> MetaValue {
        MetaValue::strings((0..n).map(|i| format!("t{i}")))
    }

    fn gemma3_file(
        over: &[(&str, MetaValue)],
        edit: impl FnOnce(&mut Vec<(String, Vec<u64>)>),
    ) -> GgufFile {
        let (e, h, kv, hd, ff, v) = (16u64, 2u64, 1u64, 8u64, 32u64, 10usize);
        let mut kvs: Vec<(&str, MetaValue)> = vec![
            ("general.architecture", "gemma3".into()),
            ("gemma3.block_count", 2u32.into()),
            ("gemma3.context_length", 64u32.into()),
            ("gemma3.embedding_length", (e as u32).into()),
            ("gemma3.feed_forward_length", (ff as u32).into()),
            ("gemma3.attention.head_count", (h as u32).into()),
            ("gemma3.attention.head_count_kv", (kv as u32).into()),
            ("gemma3.attention.key_length", (hd as u32).into()),
            ("gemma3.attention.value_length", (hd as u32).into()),
            ("gemma3.attention.layer_norm_rms_epsilon", 1e-6f32.into()),
            ("tokenizer.ggml.tokens", tokens(v)),
        ];
        for (k, val) in over {
            match kvs.iter_mut().find(|(x, _)| x == k) {
                Some(slot) => slot.1 = val.clone(),
                None => kvs.push((k, val.clone())),
            }
        }
        let mut t: Vec<(String, Vec<u64>)> = vec![
            ("token_embd.weight".into(), vec![e, v as u64]),
            ("output_norm.weight".into(), vec![e]),
        ];
        for i in 0..2 {
            for (n, ne) in [
                ("attn_norm.weight", vec![e]),
                ("attn_q.weight", vec![e, hd * h]),
                ("attn_k.weight", vec![e, hd * kv]),
                ("attn_v.weight", vec![e, hd * kv]),
                ("attn_output.weight", vec![hd * h, e]),
                ("post_attention_norm.weight", vec![e]),
                ("attn_k_norm.weight", vec![hd]),
                ("attn_q_norm.weight", vec![hd]),
                ("ffn_norm.weight", vec![e]),
                ("ffn_gate.weight", vec![e, ff]),
                ("ffn_up.weight", vec![e, ff]),
                ("ffn_down.weight", vec![ff, e]),
                ("post_ffw_norm.weight", vec![e]),
            ] {
                t.push((format!("blk.{i}.{n}"), ne));
            }
        }
        edit(&mut t);
        file(kvs, &t)
    }

    fn culprit(f: &GgufFile) -> String {
        check(f).unwrap_err().culprit().to_string()
    }

    #[test]
    fn gemma3_valid_and_each_rule() {
        check(&gemma3_file(&[], |_| {})).unwrap();
        for (key, v) in [
            ("gemma3.block_count", 0u32),
            ("gemma3.block_count", 3),
            ("gemma3.block_count", 1_000_000_000),
            ("gemma3.context_length", 0),
            ("gemma3.attention.head_count_kv", 0),
            ("gemma3.attention.head_count_kv", 3),
            ("gemma3.attention.head_count", 0),
            ("gemma3.embedding_length", 0),
        ] {
            let f = gemma3_file(&[(key, v.into())], |_| {});
            assert_eq!(culprit(&f), key, "{key} = {v}: {:?}", check(&f));
        }
        // A shape that disagrees with the metadata, named.
        let f = gemma3_file(&[("gemma3.feed_forward_length", 31u32.into())], |_| {});
        assert_eq!(culprit(&f), "blk.0.ffn_gate.weight");
        let f = gemma3_file(&[], |t| t[4].1 = vec![8, 16]);
        assert_eq!(culprit(&f), "blk.0.attn_k.weight");
        // Fewer tokens than embedding rows (the C++ exception across the FFI).
        let f = gemma3_file(&[("tokenizer.ggml.tokens", tokens(9))], |_| {});
        assert_eq!(culprit(&f), "token_embd.weight");
        let dup = MetaValue::strings(["a", "b", "a", "c", "d", "e", "f", "g", "h", "i"]);
        let f = gemma3_file(&[("tokenizer.ggml.tokens", dup)], |_| {});
        let e = check(&f).unwrap_err();
        assert!(e.to_string().contains("'a' twice (ids 0 and 2)"), "{e}");
        let f = gemma3_file(&[("gemma3.rope.scaling.type", "nope".into())], |_| {});
        assert_eq!(culprit(&f), "gemma3.rope.scaling.type");
        let f = gemma3_file(&[], |t| t.retain(|(n, _)| n != "blk.1.ffn_up.weight"));
        assert_eq!(culprit(&f), "blk.1.ffn_up.weight");
    }

    fn gpt2_file(over: &[(&str, MetaValue)]) -> GgufFile {
        let (e, ff, ctx, v) = (8u64, 12u64, 4u64, 5usize);
        let mut kvs: Vec<(&str, MetaValue)> = vec![
            ("general.architecture", "gpt2".into()),
            ("gpt2.block_count", 1u32.into()),
            ("gpt2.context_length", (ctx as u32).into()),
            ("gpt2.embedding_length", (e as u32).into()),
            ("gpt2.feed_forward_length", (ff as u32).into()),
            ("gpt2.attention.head_count", 2u32.into()),
            ("tokenizer.ggml.tokens", tokens(v)),
        ];
        for (k, val) in over {
            if let Some(slot) = kvs.iter_mut().find(|(x, _)| x == k) {
                slot.1 = val.clone();
            }
        }
        let mut t: Vec<(String, Vec<u64>)> = vec![
            ("token_embd.weight".into(), vec![e, v as u64]),
            ("position_embd.weight".into(), vec![e, ctx]),
            ("output_norm.weight".into(), vec![e]),
            ("output_norm.bias".into(), vec![e]),
        ];
        for (n, ne) in [
            ("attn_norm.weight", vec![e]),
            ("attn_norm.bias", vec![e]),
            ("attn_qkv.weight", vec![e, 3 * e]),
            ("attn_qkv.bias", vec![3 * e]),
            ("attn_output.weight", vec![e, e]),
            ("attn_output.bias", vec![e]),
            ("ffn_norm.weight", vec![e]),
            ("ffn_norm.bias", vec![e]),
            ("ffn_down.weight", vec![ff, e]),
            ("ffn_down.bias", vec![e]),
            ("ffn_up.weight", vec![e, ff]),
            ("ffn_up.bias", vec![ff]),
        ] {
            t.push((format!("blk.0.{n}"), ne));
        }
        file(kvs, &t)
    }

    #[test]
    fn gpt2_valid_and_each_rule() {
        check(&gpt2_file(&[])).unwrap();
        assert_eq!(
            culprit(&gpt2_file(&[("gpt2.block_count", 0u32.into())])),
            "gpt2.block_count"
        );
        assert_eq!(
            culprit(&gpt2_file(&[("gpt2.block_count", 2u32.into())])),
            "gpt2.block_count"
        );
        // The position table must cover the trained context.
        assert_eq!(
            culprit(&gpt2_file(&[("gpt2.context_length", 5u32.into())])),
            "position_embd.weight"
        );
        assert_eq!(
            culprit(&gpt2_file(&[("gpt2.attention.head_count", 3u32.into())])),
            "gpt2.attention.head_count"
        );
        assert_eq!(
            culprit(&gpt2_file(&[("gpt2.embedding_length", 9u32.into())])),
            "gpt2.attention.head_count"
        );
    }

    fn jarvis_file(over: &[(&str, MetaValue)]) -> GgufFile {
        let (d, ff, v) = (8u64, 16u64, 6usize);
        let mut kvs: Vec<(&str, MetaValue)> = vec![
            ("general.architecture", "jarvis".into()),
            ("jarvis.block_count", 1u32.into()),
            ("jarvis.context_length", 16u32.into()),
            ("jarvis.embedding_length", (d as u32).into()),
            ("jarvis.feed_forward_length", (ff as u32).into()),
            ("jarvis.attention.head_count", 2u32.into()),
            ("tokenizer.ggml.tokens", tokens(v)),
        ];
        for (k, val) in over {
            if let Some(slot) = kvs.iter_mut().find(|(x, _)| x == k) {
                slot.1 = val.clone();
            }
        }
        let mut t: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![d, v as u64])];
        for (n, ne) in [
            ("attn_norm.weight", vec![d]),
            ("attn_norm.bias", vec![d]),
            ("attn_q.weight", vec![d, d]),
            ("attn_k.weight", vec![d, d]),
            ("attn_v.weight", vec![d, d]),
            ("ffn_norm.weight", vec![d]),
            ("ffn_norm.bias", vec![d]),
            ("ffn_up.weight", vec![d, ff]),
            ("ffn_down.weight", vec![ff, d]),
        ] {
            t.push((format!("blk.0.{n}"), ne));
        }
        t.push(("output.weight".into(), vec![d, v as u64]));
        file(kvs, &t)
    }

    #[test]
    fn jarvis_valid_and_each_rule() {
        check(&jarvis_file(&[])).unwrap();
        for (key, v) in [
            ("jarvis.block_count", 1_000_000_000u32),
            ("jarvis.block_count", 0),
            ("jarvis.context_length", 1),
            ("jarvis.attention.head_count", 3),
            ("jarvis.attention.head_count", 0),
        ] {
            assert_eq!(
                culprit(&jarvis_file(&[(key, v.into())])),
                key,
                "{key} = {v}"
            );
        }
        assert_eq!(
            culprit(&jarvis_file(&[(
                "jarvis.feed_forward_length",
                15u32.into()
            )])),
            "blk.0.ffn_up.weight"
        );
        assert_eq!(
            culprit(&jarvis_file(&[(
                "tokenizer.ggml.tokens",
                MetaValue::strings(["a", "b", "c", "d", "e", "a"])
            )])),
            "tokenizer.ggml.tokens"
        );
    }
}
