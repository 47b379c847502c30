//! `jq-run MODEL --stream-layers ...`: plan, stream, generate, report.

use super::{plan_only, StreamOptions, Streamer};
use crate::arch::Hparams;
use crate::gguf::GgufModel;
use crate::sample::SamplerConfig;
use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// The flags `jq-run` passes on.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub model: PathBuf,
    pub prompt: Option<String>,
    pub prompt_tokens: Option<Vec<u32>>,
    pub n_predict: usize,
    pub ctx_size: Option<u32>,
    /// `-b`: the micro-batch; `None`: 512, reduced when the budget needs it.
    pub batch_size: Option<u32>,
    pub sampler: SamplerConfig,
    pub dump_logits: Option<PathBuf>,
    pub json: bool,
    pub profile: bool,
    pub plan_only: bool,
    pub opts: StreamOptions,
}

/// llama.cpp's tokenizer without the weights (a vocab-only load reads no tensor data).
fn vocab(path: &std::path::Path) -> Result<LlamaModel> {
    let params = LlamaModelParams::default().with_vocab_only(true);
    LlamaModel::load_from_file(crate::engine::llama::backend()?, path, &params).map_err(|e| {
        anyhow!(
            "llama.cpp could not read the vocabulary of {}: {e}",
            path.display()
        )
    })
}

pub fn run(a: &RunArgs) -> Result<()> {
    let path = &a.model;
    let file = GgufModel::open(path)
        .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    crate::validate::check(&file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let hp = Hparams::from_gguf(&file).with_context(|| path.display().to_string())?;
    // llama.cpp's tokenizer is given the first part of a split set.
    let first = file.path().to_path_buf();
    drop(file);
    let n_ctx = match a.ctx_size {
        Some(0) => hp.n_ctx_train,
        Some(c) if c > hp.n_ctx_train => bail!(
            "-c/--ctx-size {c} is larger than the model's trained context of {} tokens",
            hp.n_ctx_train
        ),
        Some(c) => c,
        None => hp.n_ctx_train.min(4096),
    };
    let mut o = a.opts.clone();
    o.n_ctx = n_ctx;
    o.n_ubatch = a.batch_size.unwrap_or(512).clamp(1, n_ctx);
    o.n_ubatch_auto = a.batch_size.is_none();
    o.all_logits = a.dump_logits.is_some();
    if a.plan_only {
        let plan = plan_only(path, &o).with_context(|| path.display().to_string())?;
        if a.json {
            println!("{}", plan.to_json());
        } else {
            println!("{plan}");
            if o.host_layers == super::HostLayers::Auto && !plan.streamed.is_empty() {
                println!("  --host-layers auto: measured and decided at load, not here");
            }
        }
        return Ok(());
    }
    let t0 = Instant::now();
    let mut s = Streamer::open(path, &o).with_context(|| path.display().to_string())?;
    eprintln!("{}", s.plan());
    let load = t0.elapsed();
    let voc = if a.prompt_tokens.is_none() || a.n_predict > 0 {
        Some(vocab(&first)?)
    } else {
        None
    };
    let ids: Vec<u32> = match (&a.prompt_tokens, &a.prompt, &voc) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(text), Some(v)) => v
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect(),
        _ => bail!("--stream-layers needs --prompt or --prompt-tokens"),
    };
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let tp = Instant::now();
    let logits = s.eval(&ids, a.dump_logits.is_some())?;
    let prompt_s = tp.elapsed().as_secs_f64();
    let v = s.hparams().n_vocab as usize;
    if let Some(p) = &a.dump_logits {
        crate::npy::write_f32_file(p, &[ids.len(), v], &logits)
            .with_context(|| format!("--dump-logits {}", p.display()))?;
    }
    let mut last = logits[logits.len() - v..].to_vec();
    // llama.cpp's sampler chain over the streamed logits: the same flags and seed pick the
    // same tokens as the llama.cpp engine.
    let mut sampler = crate::engine::llama::ChainSampler::new(&a.sampler, v, &ids);
    let mut generated = Vec::new();
    let mut text = Vec::new();
    let td = Instant::now();
    let mut out = std::io::stdout();
    let mut stop = "length";
    for _ in 0..a.n_predict {
        if s.n_past() >= n_ctx as usize {
            break;
        }
        let id = sampler.sample(&last);
        let voc = voc.as_ref().context("vocabulary")?;
        if voc.vocab().is_eog(LlamaToken(id as i32)) {
            stop = "eos";
            break;
        }
        let piece = voc
            .vocab()
            .token_to_piece(LlamaToken(id as i32), false, None);
        if !a.json {
            out.write_all(&piece)?;
            out.flush()?;
        }
        text.extend_from_slice(&piece);
        generated.push(id);
        if generated.len() < a.n_predict {
            last = s.eval(&[id], false)?;
        }
    }
    let decode_s = td.elapsed().as_secs_f64();
    if !a.json {
        println!();
    }
    if a.profile {
        for (i, st) in s.steps().iter().enumerate() {
            eprint!("{}", st.report(i));
        }
    }
    let (dev_free, dev_total) = s.device_memory();
    eprintln!(
        "load {:.2} ms; prompt {:.2} ms / {} tokens; decode {:.2} ms / {} tokens; device {} ({}), buffers {} of budget {}{}{}",
        load.as_secs_f64() * 1e3,
        prompt_s * 1e3,
        ids.len(),
        decode_s * 1e3,
        generated.len(),
        s.device_name(),
        s.upload_path(),
        crate::engine::plan::fmt_size(s.device_bytes()),
        crate::engine::plan::fmt_size(s.plan().budget),
        s.driver_peak()
            .map(|d| format!(
                "; the driver reports a peak of {} used by this run, {} free of {}",
                crate::engine::plan::fmt_size(d),
                crate::engine::plan::fmt_size(dev_free),
                crate::engine::plan::fmt_size(dev_total)
            ))
            .unwrap_or_default(),
        if s.host_bytes() > 0 {
            format!(
                "; host layers use {} (weights in the memory map)",
                crate::engine::plan::fmt_size(s.host_bytes())
            )
        } else {
            String::new()
        },
    );
    if a.json {
        let mut j = json!({
            "prompt_ids": ids,
            "generated_ids": generated,
            "text": String::from_utf8_lossy(&text),
            "stop": stop,
            "prompt_ms": prompt_s * 1e3,
            "decode_ms": decode_s * 1e3,
            "prompt_tokens": ids.len(),
            "generated_tokens": generated.len(),
            "seed": a.sampler.seed,
            "plan": s.plan().to_json(),
            "device_bytes": s.device_bytes(),
            "device": s.device_name(),
            "upload_path": s.upload_path(),
            "host_bytes": s.host_bytes(),
            "driver_peak_bytes": s.driver_peak(),
            "device_free_bytes": dev_free,
            "device_total_bytes": dev_total,
            "peak_rss": crate::engine::peak_rss(),
        });
        if a.profile {
            j["steps"] = s.steps().iter().map(|x| x.to_json()).collect();
        }
        println!("{j}");
    }
    Ok(())
}
