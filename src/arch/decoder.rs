//! The pre-norm decoder block shared by `llama` (Llama 2/3, Mistral), `qwen2` and `qwen3`
//! (`src/models/llama.cpp`, `qwen2.cpp`, `qwen3.cpp`): RMSNorm, Q/K/V projections (with biases
//! when the file has them, as `create_tensor_qkv` makes them optional), Q/K RMSNorm on qwen3,
//! RoPE (normal on llama, NEOX on qwen; llama3's frequency factors when `rope_freqs.weight` is
//! there), attention, residual, RMSNorm, SwiGLU FFN, residual.

use super::Dim::*;
use super::Role::*;
use super::{
    attention, keep_out_rows, norm, opt, rope, t, Batch, Hparams, LayerIo, LayerWeights, Op,
    TensorSpec,
};
use llama_cpp_sys_2 as sys;

/// llama (`llama_model_llama::load_arch_tensors`, dense): every bias optional.
pub const LLAMA_LAYER: &[TensorSpec] = &[
    t("attn_norm.weight", AttnNorm, &[Embd], Op::Mul),
    t("attn_q.weight", Wq, &[Embd, Q], Op::MulMat),
    t("attn_k.weight", Wk, &[Embd, Kv], Op::MulMat),
    t("attn_v.weight", Wv, &[Embd, Kv], Op::MulMat),
    opt("attn_q.bias", Bq, &[Q], Op::Add),
    opt("attn_k.bias", Bk, &[Kv], Op::Add),
    opt("attn_v.bias", Bv, &[Kv], Op::Add),
    t("attn_output.weight", Wo, &[Q, Embd], Op::MulMat),
    opt("attn_output.bias", Bo, &[Embd], Op::Add),
    t("ffn_norm.weight", FfnNorm, &[Embd], Op::Mul),
    t("ffn_gate.weight", Gate, &[Embd, Ff], Op::MulMat),
    t("ffn_up.weight", Up, &[Embd, Ff], Op::MulMat),
    t("ffn_down.weight", Down, &[Ff, Embd], Op::MulMat),
    opt("ffn_gate.bias", BGate, &[Ff], Op::Add),
    opt("ffn_up.bias", BUp, &[Ff], Op::Add),
    opt("ffn_down.bias", BDown, &[Embd], Op::Add),
];

/// qwen2 (`llama_model_qwen2`): Q/K/V biases (optional in the loader, present in Qwen2 files),
/// no other bias.
pub const QWEN2_LAYER: &[TensorSpec] = &[
    t("attn_norm.weight", AttnNorm, &[Embd], Op::Mul),
    t("attn_q.weight", Wq, &[Embd, Q], Op::MulMat),
    t("attn_k.weight", Wk, &[Embd, Kv], Op::MulMat),
    t("attn_v.weight", Wv, &[Embd, Kv], Op::MulMat),
    opt("attn_q.bias", Bq, &[Q], Op::Add),
    opt("attn_k.bias", Bk, &[Kv], Op::Add),
    opt("attn_v.bias", Bv, &[Kv], Op::Add),
    t("attn_output.weight", Wo, &[Q, Embd], Op::MulMat),
    t("ffn_norm.weight", FfnNorm, &[Embd], Op::Mul),
    t("ffn_gate.weight", Gate, &[Embd, Ff], Op::MulMat),
    t("ffn_up.weight", Up, &[Embd, Ff], Op::MulMat),
    t("ffn_down.weight", Down, &[Ff, Embd], Op::MulMat),
];

/// qwen3 (`llama_model_qwen3`): Q/K norms, Q/K/V biases optional.
pub const QWEN3_LAYER: &[TensorSpec] = &[
    t("attn_norm.weight", AttnNorm, &[Embd], Op::Mul),
    t("attn_q.weight", Wq, &[Embd, Q], Op::MulMat),
    t("attn_k.weight", Wk, &[Embd, Kv], Op::MulMat),
    t("attn_v.weight", Wv, &[Embd, Kv], Op::MulMat),
    opt("attn_q.bias", Bq, &[Q], Op::Add),
    opt("attn_k.bias", Bk, &[Kv], Op::Add),
    opt("attn_v.bias", Bv, &[Kv], Op::Add),
    t("attn_output.weight", Wo, &[Q, Embd], Op::MulMat),
    t("attn_q_norm.weight", QNorm, &[HeadDim], Op::Mul),
    t("attn_k_norm.weight", KNorm, &[HeadDim], Op::Mul),
    t("ffn_norm.weight", FfnNorm, &[Embd], Op::Mul),
    t("ffn_gate.weight", Gate, &[Embd, Ff], Op::MulMat),
    t("ffn_up.weight", Up, &[Embd, Ff], Op::MulMat),
    t("ffn_down.weight", Down, &[Ff, Embd], Op::MulMat),
];

/// `ggml_mul_mat(w, x)`, plus `b` when the file has it.
///
/// # Safety
/// As [`super::build_layer`].
unsafe fn linear(
    g: *mut sys::ggml_context,
    w: *mut sys::ggml_tensor,
    b: *mut sys::ggml_tensor,
    x: *mut sys::ggml_tensor,
) -> *mut sys::ggml_tensor {
    // SAFETY: the caller's contract.
    unsafe {
        let y = sys::ggml_mul_mat(g, w, x);
        if b.is_null() {
            y
        } else {
            sys::ggml_add(g, y, b)
        }
    }
}

/// One block over `io.x`; returns the rows to write back.
///
/// # Safety
/// As [`super::build_layer`].
pub(super) unsafe fn layer(
    g: *mut sys::ggml_context,
    gf: *mut sys::ggml_cgraph,
    w: &LayerWeights,
    io: &LayerIo,
    hp: &Hparams,
    il: usize,
    b: Batch,
) -> *mut sys::ggml_tensor {
    let (t, hd) = (b.n_tokens, hp.head_dim);
    // SAFETY: the caller's contract.
    unsafe {
        let x = sys::ggml_view_2d(g, io.x, hp.n_embd, t, (*io.x).nb[1], 0);
        let cur = norm(g, x, w[AttnNorm], hp.eps);
        let q = linear(g, w[Wq], w[Bq], cur);
        let k = linear(g, w[Wk], w[Bk], cur);
        let v = linear(g, w[Wv], w[Bv], cur);
        let mut q = sys::ggml_reshape_3d(g, q, hd, hp.n_head, t);
        let mut k = sys::ggml_reshape_3d(g, k, hd, hp.n_head_kv, t);
        let v = sys::ggml_reshape_3d(g, v, hd, hp.n_head_kv, t);
        if !w[QNorm].is_null() {
            q = norm(g, q, w[QNorm], hp.eps);
            k = norm(g, k, w[KNorm], hp.eps);
        }
        let q = rope(g, q, io, hp, il, t);
        let k = rope(g, k, io, hp, il, t);
        let cur = attention(g, gf, io, hp, b, q, k, v, w[Wo], w[Bo]);
        let (cur, inp) = keep_out_rows(g, io, b, cur, x);
        let ffn_inp = sys::ggml_add(g, cur, inp);
        let h = norm(g, ffn_inp, w[FfnNorm], hp.eps);
        let up = linear(g, w[Up], w[BUp], h);
        let gate = linear(g, w[Gate], w[BGate], h);
        let f = sys::ggml_swiglu_split(g, gate, up);
        let f = linear(g, w[Down], w[BDown], f);
        sys::ggml_add(g, f, ffn_inp)
    }
}
