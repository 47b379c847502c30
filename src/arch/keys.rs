//! GGUF metadata keys of the hyper-parameters, after the `<arch>.` prefix: llama.cpp's `LLM_KV_*`
//! names (`src/llama-arch.cpp`). The readers (`Hparams::from_gguf`, the sliding-window rule), the
//! Gemma-3 converter and the synthetic-model writers all spell them from here.

pub const BLOCK_COUNT: &str = "block_count";
pub const CONTEXT_LENGTH: &str = "context_length";
pub const EMBEDDING_LENGTH: &str = "embedding_length";
pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
pub const VOCAB_SIZE: &str = "vocab_size";
pub const EXPERT_COUNT: &str = "expert_count";
pub const HEAD_COUNT: &str = "attention.head_count";
pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
pub const KEY_LENGTH: &str = "attention.key_length";
pub const VALUE_LENGTH: &str = "attention.value_length";
pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
pub const ATTN_SCALE: &str = "attention.scale";
pub const SLIDING_WINDOW: &str = "attention.sliding_window";
pub const SLIDING_WINDOW_PATTERN: &str = "attention.sliding_window_pattern";
pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
pub const ROPE_FREQ_BASE_SWA: &str = "rope.freq_base_swa";
pub const ROPE_SCALING_TYPE: &str = "rope.scaling.type";
pub const ROPE_SCALING_FACTOR: &str = "rope.scaling.factor";
pub const ROPE_SCALE_LINEAR: &str = "rope.scale_linear";
pub const ROPE_SCALING_ORIG_CTX: &str = "rope.scaling.original_context_length";
pub const FINAL_LOGIT_SOFTCAPPING: &str = "final_logit_softcapping";

/// The full key: `<arch>.<key>`.
pub fn of(arch: &str, key: &str) -> String {
    format!("{arch}.{key}")
}
