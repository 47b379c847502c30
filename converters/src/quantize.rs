//! `jq-convert quantize`: re-encode a GGUF's weights the way `llama_model_quantize` does in
//! `pure` mode, for any architecture.
//!
//! Which tensors are re-encoded follows llama.cpp's `tensor_allows_quantization`: tensors with
//! at least two non-trivial dimensions whose name ends in `weight`, except norms, position and
//! token-type embeddings and the architecture-specific exceptions listed in `KEEP_SUBSTRINGS`.
//! Everything else is copied byte for byte. Metadata is copied in order; split keys are
//! dropped and `general.quantization_version` and `general.file_type` are (re)written last,
//! which is exactly what llama.cpp does. One intended difference: tensors keep the input's
//! order (llama.cpp sorts them by name).

use anyhow::{bail, Context, Result};
use jq::gguf::{GgufModel, GgufWriter, TensorInfo, TensorView};
use jq::quant::{self, FileType, GgmlType};
use std::io::Write;
use std::path::Path;

/// `GGML_QNT_VERSION`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Substrings that keep a `*weight` tensor in its original type (llama.cpp's list).
const KEEP_SUBSTRINGS: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// Exact names that are never quantized.
const KEEP_NAMES: &[&str] = &["position_embd.weight", "token_types.weight"];

/// Keys llama.cpp removes from a quantized output.
const DROP_KEYS: &[&str] = &[
    "split.no",
    "split.count",
    "split.tensors.count",
    "general.quantization_version",
    "general.file_type",
];

/// `ggml_n_dims`: dimensions up to the last one larger than 1.
fn effective_dims(t: &TensorInfo) -> usize {
    t.ne.iter().rposition(|&n| n > 1).map_or(1, |i| i + 1)
}

/// Whether llama.cpp's pure mode would re-encode this tensor.
pub fn allows_quantization(t: &TensorInfo) -> bool {
    effective_dims(t) >= 2
        && t.name.ends_with("weight")
        && !KEEP_NAMES.contains(&t.name.as_str())
        && !KEEP_SUBSTRINGS.iter().any(|s| t.name.contains(s))
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: GgmlType,
    pub allow_requantize: bool,
    pub progress: bool,
}

/// What happened to each tensor.
#[derive(Debug, Default)]
pub struct Summary {
    pub converted: usize,
    pub copied: usize,
    pub fallbacks: Vec<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The type a tensor gets in the output, or an error for a quantized source without
/// `allow_requantize`.
fn target_type(t: &TensorInfo, opts: &Options, fallbacks: &mut Vec<String>) -> Result<GgmlType> {
    if !allows_quantization(t) {
        return Ok(t.ty);
    }
    let mut ty = opts.target;
    let ne0 = t.ne.first().copied().unwrap_or(1);
    if ty.block_size() > 1 && ne0 % ty.block_size() != 0 {
        // llama.cpp: a 32-block type has nothing smaller to fall back to, so F16.
        fallbacks.push(format!(
            "{}: {} columns is not a multiple of {} ({}); stored as F16",
            t.name,
            ne0,
            ty.block_size(),
            ty
        ));
        ty = GgmlType::F16;
    }
    if ty == t.ty {
        return Ok(ty);
    }
    if !t.ty.has_codec() {
        bail!(
            "tensor '{}' is {}, which this tool cannot decode; it can only be copied",
            t.name,
            t.ty
        );
    }
    let quantized = !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if quantized && !opts.allow_requantize {
        bail!(
            "tensor '{}' is already {}: re-quantizing loses precision; pass --allow-requantize to do it anyway",
            t.name,
            t.ty
        );
    }
    Ok(ty)
}

/// Elements decoded and encoded per slab: buffers are reused, so memory stays bounded and
/// no page is touched twice.
const SLAB_ELEMENTS: usize = 1 << 20;

/// Re-encodes a tensor slab by slab (whole rows). F32 sources are read in place.
fn encode(view: TensorView<'_>, ty: GgmlType, out: &mut dyn Write) -> Result<()> {
    let ne0 = view.info.ne.first().copied().unwrap_or(1) as usize;
    let nrows = (view.info.n_elements() as usize) / ne0.max(1);
    let src_row = view.ty().row_bytes(ne0 as u64).context("source row size")? as usize;
    let dst_row = ty.row_bytes(ne0 as u64).context("target row size")? as usize;
    let rows_per_slab = (SLAB_ELEMENTS / ne0.max(1)).max(1);
    let mut f32buf = Vec::new();
    let mut outbuf = vec![0u8; rows_per_slab.min(nrows) * dst_row];
    let ctx = || format!("re-encoding tensor '{}' as {ty}", view.name());
    for r0 in (0..nrows).step_by(rows_per_slab) {
        let r1 = (r0 + rows_per_slab).min(nrows);
        let n = (r1 - r0) * ne0;
        let src = &view.data[r0 * src_row..r1 * src_row];
        let x: &[f32] = match bytemuck::try_cast_slice(src) {
            Ok(x) if view.ty() == GgmlType::F32 => x,
            _ => {
                f32buf.resize(n, 0.0);
                quant::dequantize(view.ty(), src, &mut f32buf).with_context(ctx)?;
                &f32buf
            }
        };
        let dst = &mut outbuf[..(r1 - r0) * dst_row];
        quant::quantize(ty, x, dst).with_context(ctx)?;
        out.write_all(dst)?;
    }
    Ok(())
}

pub fn run(input: &Path, output: &Path, opts: &Options) -> Result<Summary> {
    // A split set is read as one model; the output is one file (no split keys).
    let file = GgufModel::open(input).with_context(|| format!("reading {}", input.display()))?;
    if !opts.target.has_codec() || opts.target == GgmlType::BF16 {
        bail!("unsupported target type {}", opts.target);
    }
    let ftype = FileType::for_type(opts.target).context("target type has no llama_ftype")?;
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata() {
        if !DROP_KEYS.contains(&k) {
            w.add(k, v.to_owned_value())
                .with_context(|| format!("copying metadata key '{k}'"))?;
        }
    }
    w.add("general.quantization_version", QUANTIZATION_VERSION)?;
    w.add("general.file_type", ftype as u32)?;

    let mut summary = Summary::default();
    let mut plan = Vec::new();
    for t in file.tensor_infos() {
        let ty = target_type(t, opts, &mut summary.fallbacks)?;
        w.add_tensor(&t.name, ty, &t.ne)
            .with_context(|| format!("planning tensor '{}'", t.name))?;
        if ty == t.ty {
            summary.copied += 1;
        } else {
            summary.converted += 1;
        }
        summary.bytes_in += t.size;
        plan.push(ty);
    }
    for f in &summary.fallbacks {
        eprintln!("warning: {f}");
    }
    summary.bytes_out = w.tensors().iter().map(|t| t.size).sum();

    let pb = crate::progress::byte_bar(summary.bytes_in, opts.progress);
    w.write_file(output, |i, t, out| {
        let view = file.tensor_at(i);
        pb.set_message(t.name.clone());
        let res = if plan[i] == view.ty() {
            out.write_all(view.data).map_err(anyhow::Error::from)
        } else {
            encode(view, plan[i], out)
        };
        pb.inc(view.info.size);
        res.map_err(|e| jq::gguf::GgufError::Plan(format!("{e:#}")))
    })
    .with_context(|| format!("writing {}", output.display()))?;
    pb.finish_and_clear();
    Ok(summary)
}
