//! Writing a trained model in the layout `jq-convert npz-to-gguf` reads (`model.npz` with the
//! seed's keys, `config.json`, `tokenizer.json`) and the trainer's own state
//! (`train_state.safetensors`: weights, Adam moments, step, settings and vocabulary), each file
//! written to a temporary name and renamed, so a failure (a full disk) leaves the previous
//! checkpoint's files whole.

use super::optim::AdamState;
use super::params::Params;
use crate::output::{AtomicFile, OutputError};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MODEL: &str = "model.npz";
pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const STATE: &str = "train_state.safetensors";
const STATE_KEY: &str = "jq_train";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_with(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let f = AtomicFile::create(path)?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f.file());
        body(&mut w).map_err(io(path))?;
        w.flush().map_err(io(path))?;
    }
    f.commit()?;
    Ok(())
}

/// `model.npz`: one stored (uncompressed) `.npy` member per tensor, with a fixed timestamp,
/// so the same weights give the same bytes.
pub fn write_npz(path: &Path, p: &Params) -> Result<(), CheckpointError> {
    write_with(path, |w| {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .last_modified_time(zip::DateTime::default())
                .large_file(p.n_elements() * 4 > u32::MAX as usize / 2);
            for t in &p.tensors {
                z.start_file(format!("{}.npy", t.name), opts)
                    .map_err(std::io::Error::other)?;
                crate::npy::write_f32(&mut z, &t.shape, &t.data)?;
            }
            z.finish().map_err(std::io::Error::other)?;
        }
        w.write_all(buf.get_ref())
    })
}

/// `config.json`: the seed's names (what `npz-to-gguf` reads) plus a `training` object that
/// records how the weights were made.
pub fn write_config(
    path: &Path,
    cfg: &crate::models::jarvis::Config,
    training: &Value,
) -> Result<(), CheckpointError> {
    let v = json!({
        "vocab_size": cfg.vocab,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "d_ff": cfg.d_ff,
        "max_seq_len": cfg.ctx,
        "layer_norm_eps": cfg.eps,
        "gelu": cfg.gelu.name(),
        "lowercase": true,
        "final_norm": cfg.final_norm,
        "training": training,
    });
    let mut s = serde_json::to_string_pretty(&v).expect("json");
    s.push('\n');
    write_with(path, |w| w.write_all(s.as_bytes()))
}

/// `tokenizer.json`: `{"word_to_id": {word: id}}` in id order.
pub fn write_tokenizer(path: &Path, tokens: &[String]) -> Result<(), CheckpointError> {
    let mut m = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        m.insert(t.clone(), json!(i));
    }
    let mut s = serde_json::to_string(&json!({ "word_to_id": m })).expect("json");
    s.push('\n');
    write_with(path, |w| w.write_all(s.as_bytes()))
}

fn f32_bytes(d: &[f32]) -> &[u8] {
    bytemuck::cast_slice(d)
}

/// The trainer's state: `param/NAME`, `m/NAME`, `v/NAME` as F32 tensors, and under the
/// metadata key `jq_train` a JSON object `{"step", "settings", "tokens"}`.
pub fn write_state(
    path: &Path,
    p: &Params,
    adam: &AdamState,
    settings: &Value,
    tokens: &[String],
) -> Result<(), CheckpointError> {
    let mut views = Vec::new();
    for (prefix, set) in [("param", p), ("m", &adam.m), ("v", &adam.v)] {
        for t in &set.tensors {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                t.shape.clone(),
                f32_bytes(&t.data),
            )
            .map_err(|e| CheckpointError::Bad {
                path: path.to_path_buf(),
                reason: format!("{prefix}/{}: {e}", t.name),
            })?;
            views.push((format!("{prefix}/{}", t.name), view));
        }
    }
    let meta = json!({ "step": adam.step, "settings": settings, "tokens": tokens });
    let info = std::collections::HashMap::from([(STATE_KEY.to_string(), meta.to_string())]);
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| CheckpointError::Bad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_with(path, |w| w.write_all(&bytes))
}

/// A state read back by [`read_state`].
#[derive(Debug)]
pub struct State {
    pub step: u64,
    pub settings: Value,
    pub tokens: Vec<String>,
    pub params: Params,
    pub adam: AdamState,
}

/// Reads a state file into tensors shaped like `template` (whose configuration the caller
/// built from the state's own `settings`, so every shape is checked against it).
pub fn read_state_meta(path: &Path) -> Result<(Vec<u8>, Value), CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let bad = |reason: String| CheckpointError::Bad {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| bad(format!("no '{STATE_KEY}' metadata: not a jq-train state")))?;
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("{STATE_KEY}: {e}")))?;
    Ok((bytes, v))
}

pub fn read_state(
    path: &Path,
    bytes: &[u8],
    meta: Value,
    template: &Params,
) -> Result<State, CheckpointError> {
    let bad = |reason: String| CheckpointError::Bad {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let load = |prefix: &str| -> Result<Params, CheckpointError> {
        let mut out = template.clone();
        for t in &mut out.tensors {
            let key = format!("{prefix}/{}", t.name);
            let view = st.tensor(&key).map_err(|e| bad(format!("{key}: {e}")))?;
            if view.dtype() != Dtype::F32 || view.shape() != t.shape.as_slice() {
                return Err(bad(format!(
                    "{key}: {:?} {:?}, expected F32 {:?}",
                    view.dtype(),
                    view.shape(),
                    t.shape
                )));
            }
            for (dst, src) in t.data.iter_mut().zip(view.data().chunks_exact(4)) {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
        Ok(out)
    };
    let step = meta["step"]
        .as_u64()
        .ok_or_else(|| bad("jq_train.step missing".into()))?;
    let tokens = meta["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .ok_or_else(|| bad("jq_train.tokens missing".into()))?;
    Ok(State {
        step,
        settings: meta["settings"].clone(),
        tokens,
        params: load("param")?,
        adam: AdamState {
            m: load("m")?,
            v: load("v")?,
            step,
        },
    })
}

/// Everything of one checkpoint, the export files first and the state last: a reader that
/// finds a state finds export files at least as new.
pub fn write_all(
    dir: &Path,
    cfg: &crate::models::jarvis::Config,
    p: &Params,
    adam: &AdamState,
    settings: &Value,
    training: &Value,
    tokens: &[String],
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_npz(&dir.join(MODEL), p)?;
    write_config(&dir.join(CONFIG), cfg, training)?;
    write_tokenizer(&dir.join(TOKENIZER), tokens)?;
    write_state(&dir.join(STATE), p, adam, settings, tokens)
}
