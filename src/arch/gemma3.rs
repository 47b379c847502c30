//! Gemma-3 (`src/models/gemma3.cpp` and `LLM_ARCH_GEMMA3` in `src/llama-model.cpp`): pre- and
//! post-norms around attention and FFN, Q/K norms, GeGLU, NEOX RoPE with a separate base for
//! the sliding-window layers, the embedding scaled by sqrt(n_embd), the output tied to the
//! embedding, optional final soft-capping.

use super::keys;
use super::Dim::*;
use super::Role::*;
use super::{
    attention, keep_out_rows, norm, rope, t, Batch, Hparams, LayerIo, LayerWeights, Meta, Op,
    TensorSpec,
};
use anyhow::{anyhow, bail, Result};
use llama_cpp_sys_2 as sys;

/// The 13 tensors of a Gemma-3 block.
pub const LAYER: &[TensorSpec] = &[
    t("attn_norm.weight", AttnNorm, &[Embd], Op::Mul),
    t("attn_q.weight", Wq, &[Embd, Q], Op::MulMat),
    t("attn_k.weight", Wk, &[Embd, Kv], Op::MulMat),
    t("attn_v.weight", Wv, &[Embd, Kv], Op::MulMat),
    t("attn_output.weight", Wo, &[Q, Embd], Op::MulMat),
    t("attn_q_norm.weight", QNorm, &[HeadDim], Op::Mul),
    t("attn_k_norm.weight", KNorm, &[HeadDim], Op::Mul),
    t("post_attention_norm.weight", PostAttnNorm, &[Embd], Op::Mul),
    t("ffn_norm.weight", FfnNorm, &[Embd], Op::Mul),
    t("ffn_gate.weight", Gate, &[Embd, Ff], Op::MulMat),
    t("ffn_up.weight", Up, &[Embd, Ff], Op::MulMat),
    t("ffn_down.weight", Down, &[Ff, Embd], Op::MulMat),
    t("post_ffw_norm.weight", PostFfwNorm, &[Embd], Op::Mul),
];

/// llama.cpp's sliding-window period when the file has none (`LLM_ARCH_GEMMA3`:
/// `set_swa_pattern(6)`): 5 sliding layers, then a global one.
pub const SWA_PERIOD_DEFAULT: usize = 6;
/// The sliding layers' RoPE base when the file has none (`rope_freq_base_train_swa`).
pub const ROPE_BASE_SWA_DEFAULT: f32 = 10_000.0;
/// llama.cpp keys Gemma-3-27B's attention scale on the layer count (`LLM_TYPE_27B`).
pub const LAYERS_27B: usize = 62;

/// Gemma-3's own hyper-parameters on top of the common ones.
pub(super) fn hparams(m: &Meta<'_>, hp: &mut Hparams) -> Result<()> {
    let n_layer = hp.n_layer;
    hp.n_swa = match m.uint(keys::SLIDING_WINDOW)? {
        Some(w) => u32::try_from(w)
            .map_err(|_| anyhow!("metadata key '{}' is {w}", m.key(keys::SLIDING_WINDOW)))?,
        None => 0,
    };
    // llama.cpp: a bool array per layer, or a period (default 6): layer il is sliding iff
    // il % n < n - 1 (n == 0: every layer sliding).
    hp.swa = if hp.n_swa == 0 {
        vec![false; n_layer]
    } else {
        super::swa::swa_layers(
            m.f,
            "gemma3",
            n_layer,
            Some((SWA_PERIOD_DEFAULT as u32, false)),
        )?
    };
    if hp.n_swa > 0 && !hp.swa.contains(&true) {
        bail!(
            "metadata: a sliding window of {} but no sliding layer",
            hp.n_swa
        );
    }
    hp.rope.kind = super::ROPE_TYPE_NEOX;
    hp.rope.base_swa = m
        .float("rope.freq_base_swa")?
        .unwrap_or(ROPE_BASE_SWA_DEFAULT);
    hp.rope.scale_swa = 1.0;
    if !(hp.rope.base_swa.is_finite() && hp.rope.base_swa > 0.0) {
        bail!(
            "metadata key '{}' is not a positive number",
            m.key(keys::ROPE_FREQ_BASE_SWA)
        );
    }
    hp.q_scale = if n_layer == LAYERS_27B {
        1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt()
    } else {
        1.0 / (hp.head_dim as f32).sqrt()
    };
    hp.kq_scale = 1.0;
    hp.softcap = m.float(keys::FINAL_LOGIT_SOFTCAPPING)?.unwrap_or(0.0);
    if !hp.softcap.is_finite() || hp.softcap < 0.0 {
        bail!(
            "metadata key '{}' is {}",
            m.key(keys::FINAL_LOGIT_SOFTCAPPING),
            hp.softcap
        );
    }
    hp.embd_scale = (hp.n_embd as f32).sqrt();
    Ok(())
}

/// One Gemma-3 block over `io.x`; returns the rows to write back.
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
        let q = sys::ggml_reshape_3d(g, sys::ggml_mul_mat(g, w[Wq], cur), hd, hp.n_head, t);
        let k = sys::ggml_reshape_3d(g, sys::ggml_mul_mat(g, w[Wk], cur), hd, hp.n_head_kv, t);
        let v = sys::ggml_reshape_3d(g, sys::ggml_mul_mat(g, w[Wv], cur), hd, hp.n_head_kv, t);
        let q = rope(g, norm(g, q, w[QNorm], hp.eps), io, hp, il, t);
        let k = rope(g, norm(g, k, w[KNorm], hp.eps), io, hp, il, t);
        let q = sys::ggml_scale(g, q, hp.q_scale);
        let cur = attention(g, gf, io, hp, b, q, k, v, w[Wo], std::ptr::null_mut());
        let (cur, inp) = keep_out_rows(g, io, b, cur, x);
        let cur = norm(g, cur, w[PostAttnNorm], hp.eps);
        let sa = sys::ggml_add(g, cur, inp);
        let h = norm(g, sa, w[FfnNorm], hp.eps);
        let up = sys::ggml_mul_mat(g, w[Up], h);
        let gate = sys::ggml_mul_mat(g, w[Gate], h);
        let f = sys::ggml_geglu_split(g, gate, up);
        let f = sys::ggml_mul_mat(g, w[Down], f);
        let f = norm(g, f, w[PostFfwNorm], hp.eps);
        sys::ggml_add(g, f, sa)
    }
}
