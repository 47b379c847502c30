//! `jq-train`: trains a Jarvis model (shared/spec/jarvis.md) on a text corpus and writes a
//! checkpoint that `jq-convert npz-to-gguf` converts with no glue.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jq::models::jarvis::{Config, Gelu, WordTokenizer};
use jq::train::backprop::{evaluate, loss_and_grads, Batch, MetricSums};
use jq::train::checkpoint::{self, STATE};
use jq::train::data::{self, Sampler, Sampling};
use jq::train::optim::{AdamConfig, AdamState, DecayMode, Schedule};
use jq::train::params::Params;
use jq::train::Settings;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DecayArg {
    /// AdamW: p <- p (1 - lr wd), outside the moments.
    Decoupled,
    /// Plain Adam with an L2 term wd p added to the (clipped) gradient.
    L2,
}

/// Train a Jarvis word-level transformer on a text corpus.
///
/// The vocabulary is built from the corpus (`<pad>`, `<unk>`, `<eos>`, then words by
/// descending count, ties by word); a document is a blank-line-separated paragraph followed by
/// `<eos>`. The output directory holds `model.npz`, `config.json` and `tokenizer.json` (what
/// `jq-convert npz-to-gguf` reads) and `train_state.safetensors` (weights + Adam moments, for
/// `--resume`). The same seed, data and settings give the same weights bit for bit, whatever
/// `--threads` is.
///
/// Examples:
///   jq-train corpus.txt --out run1 --d-model 64 --layers 2 --heads 4 --d-ff 256 --ctx 64 --final-norm --steps 200
///   jq-train corpus.txt --out run1 --resume run1 --steps 400
///   jq-train corpus.txt --out fx --packed --beta2 0.98 --weight-decay 0 --unk-dropout 0.02 --schedule cosine --lr 3e-3 --lr-min 3e-4 --warmup 50
///   jq-convert npz-to-gguf run1/model.npz --type f32 -o run1.gguf && jq-run run1.gguf -p "The cat"
#[derive(Debug, Parser)]
#[command(name = "jq-train", version, verbatim_doc_comment)]
struct Args {
    /// Training text (UTF-8); paragraphs are separated by blank lines.
    corpus: PathBuf,
    /// Output directory (created; files are replaced atomically). Defaults to --resume's.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in DIR (its settings are used; flags given must agree).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,

    /// Vocabulary size including <pad>, <unk>, <eos> [default: 15000].
    #[arg(long)]
    vocab_size: Option<usize>,
    /// [default: 256]
    #[arg(long)]
    d_model: Option<usize>,
    /// [default: 6]
    #[arg(long)]
    layers: Option<usize>,
    /// [default: 8]
    #[arg(long)]
    heads: Option<usize>,
    /// [default: 1024]
    #[arg(long)]
    d_ff: Option<usize>,
    /// Context length (positions per training window) [default: 512].
    #[arg(long)]
    ctx: Option<usize>,
    /// Add a final LayerNorm (needed by the Ollama/gpt2 export).
    #[arg(long)]
    final_norm: bool,

    /// Number of passes over the training documents [default: 10].
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<u64>,
    /// Total optimizer steps of the run (instead of --epochs).
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per batch [default: 16].
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate [default: 0.001].
    #[arg(long)]
    lr: Option<f64>,
    /// Final learning rate of the cosine schedule [default: 0].
    #[arg(long)]
    lr_min: Option<f64>,
    /// Linear warm-up steps [default: 100].
    #[arg(long)]
    warmup: Option<u64>,
    /// After warm-up: constant or cosine decay to --lr-min [default: constant].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// [default: 0.9]
    #[arg(long)]
    beta1: Option<f64>,
    /// [default: 0.999]
    #[arg(long)]
    beta2: Option<f64>,
    /// [default: 1e-8]
    #[arg(long)]
    adam_eps: Option<f64>,
    /// Weight decay of the matrices (never LayerNorm gains/biases) [default: 0.01].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// [default: decoupled]
    #[arg(long, value_enum)]
    decay_mode: Option<DecayArg>,
    /// Global gradient-norm clip, 0 = off [default: 1.0].
    #[arg(long)]
    clip: Option<f64>,
    /// make_jarvis.py's sampling: random windows of ctx+1 tokens of the concatenated documents.
    #[arg(long)]
    packed: bool,
    /// Probability of replacing an input token with <unk> [default: 0].
    #[arg(long)]
    unk_dropout: Option<f64>,
    /// Fraction of documents held out for evaluation [default: 0.05].
    #[arg(long)]
    eval_split: Option<f64>,
    /// Seed of initialization, split, order and dropout [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (results do not depend on it) [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Also checkpoint every N steps (a checkpoint is always written after each epoch and at
    /// the end).
    #[arg(long, value_name = "N")]
    save_every: Option<u64>,
    /// Write one JSON object per step (and per epoch) to FILE.
    #[arg(long, value_name = "FILE")]
    json_log: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn main() {
    let args = Args::try_parse().unwrap_or_else(|e| jq::term::exit_on_clap_error(e));
    if let Err(e) = run(args) {
        eprintln!("jq-train: {e:#}");
        std::process::exit(1);
    }
}

/// A flag's value: the one given, else the checkpoint's on --resume (a given one must equal
/// it), else the default.
fn pick<T: PartialEq + std::fmt::Debug + Clone>(
    flag: &str,
    given: Option<T>,
    saved: Option<T>,
    default: T,
    state: &Path,
) -> Result<T> {
    match (given, saved) {
        (Some(g), Some(s)) if g != s => bail!(
            "{flag} {g:?} does not match the checkpoint's {s:?} ({}); drop the flag or start a new run",
            state.display()
        ),
        (Some(g), _) => Ok(g),
        (None, Some(s)) => Ok(s),
        (None, None) => Ok(default),
    }
}

fn check_flags(a: &Args) -> Result<()> {
    let pos = |name: &str, v: Option<usize>| -> Result<()> {
        if v == Some(0) {
            bail!("{name} must be at least 1");
        }
        Ok(())
    };
    pos("--ctx", a.ctx)?;
    pos("--d-model", a.d_model)?;
    pos("--layers", a.layers)?;
    pos("--heads", a.heads)?;
    pos("--d-ff", a.d_ff)?;
    pos("--batch", a.batch)?;
    if a.steps == Some(0) || a.epochs == Some(0) {
        bail!("--steps / --epochs must be at least 1");
    }
    if a.save_every == Some(0) {
        bail!("--save-every must be at least 1");
    }
    if let Some(v) = a.vocab_size {
        if v < 4 {
            bail!("--vocab-size {v}: at least 4 (<pad>, <unk>, <eos> and one word)");
        }
    }
    if let Some(lr) = a.lr {
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr {lr}: must be a positive number");
        }
    }
    for (name, v) in [("--beta1", a.beta1), ("--beta2", a.beta2)] {
        if let Some(b) = v {
            if !(0.0..1.0).contains(&b) {
                bail!("{name} {b}: must be in [0, 1)");
            }
        }
    }
    for (name, v) in [
        ("--eval-split", a.eval_split),
        ("--unk-dropout", a.unk_dropout),
    ] {
        if let Some(f) = v {
            if !(0.0..1.0).contains(&f) {
                bail!("{name} {f}: must be in [0, 1)");
            }
        }
    }
    if let (Some(d), Some(h)) = (a.d_model, a.heads) {
        if !d.is_multiple_of(h) {
            bail!("--heads {h} does not divide --d-model {d}");
        }
    }
    Ok(())
}

fn settings_from(a: &Args, saved: Option<&Settings>, state: &Path) -> Result<Settings> {
    let sm = saved.map(|s| &s.model);
    let sa = saved.map(|s| &s.adam);
    let model = Config {
        vocab: pick(
            "--vocab-size",
            a.vocab_size,
            sm.map(|m| m.vocab),
            15000,
            state,
        )?,
        d_model: pick("--d-model", a.d_model, sm.map(|m| m.d_model), 256, state)?,
        n_layers: pick("--layers", a.layers, sm.map(|m| m.n_layers), 6, state)?,
        n_heads: pick("--heads", a.heads, sm.map(|m| m.n_heads), 8, state)?,
        d_ff: pick("--d-ff", a.d_ff, sm.map(|m| m.d_ff), 1024, state)?,
        ctx: pick("--ctx", a.ctx, sm.map(|m| m.ctx), 512, state)?,
        eps: 1e-5,
        gelu: Gelu::Tanh,
        final_norm: pick(
            "--final-norm",
            a.final_norm.then_some(true),
            sm.map(|m| m.final_norm),
            false,
            state,
        )?,
    };
    if !model.d_model.is_multiple_of(model.n_heads) {
        bail!(
            "--heads {} does not divide --d-model {}",
            model.n_heads,
            model.d_model
        );
    }
    let schedule = a.schedule.map(|s| match s {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Cosine => Schedule::Cosine,
    });
    let decay = a.decay_mode.map(|d| match d {
        DecayArg::Decoupled => DecayMode::Decoupled,
        DecayArg::L2 => DecayMode::L2,
    });
    let adam = AdamConfig {
        lr: pick("--lr", a.lr, sa.map(|s| s.lr), 1e-3, state)?,
        lr_min: pick("--lr-min", a.lr_min, sa.map(|s| s.lr_min), 0.0, state)?,
        warmup: pick("--warmup", a.warmup, sa.map(|s| s.warmup), 100, state)?,
        schedule: pick(
            "--schedule",
            schedule,
            sa.map(|s| s.schedule),
            Schedule::Constant,
            state,
        )?,
        beta1: pick("--beta1", a.beta1, sa.map(|s| s.beta1), 0.9, state)?,
        beta2: pick("--beta2", a.beta2, sa.map(|s| s.beta2), 0.999, state)?,
        eps: pick("--adam-eps", a.adam_eps, sa.map(|s| s.eps), 1e-8, state)?,
        clip: pick("--clip", a.clip, sa.map(|s| s.clip), 1.0, state)?,
        weight_decay: pick(
            "--weight-decay",
            a.weight_decay,
            sa.map(|s| s.weight_decay),
            0.01,
            state,
        )?,
        decay_mode: pick(
            "--decay-mode",
            decay,
            sa.map(|s| s.decay_mode),
            DecayMode::Decoupled,
            state,
        )?,
    };
    Ok(Settings {
        model,
        adam,
        sampling: pick(
            "--packed",
            a.packed.then_some(Sampling::Packed),
            saved.map(|s| s.sampling),
            Sampling::Documents,
            state,
        )?,
        batch: pick("--batch", a.batch, saved.map(|s| s.batch), 16, state)?,
        seed: pick("--seed", a.seed, saved.map(|s| s.seed), 0, state)?,
        unk_dropout: pick(
            "--unk-dropout",
            a.unk_dropout,
            saved.map(|s| s.unk_dropout),
            0.0,
            state,
        )?,
        eval_split: pick(
            "--eval-split",
            a.eval_split,
            saved.map(|s| s.eval_split),
            0.05,
            state,
        )?,
    })
}

struct EvalResult {
    loss: f64,
    metrics: [f64; 4],
}

fn eval(p: &Params, cfg: &Config, batches: &[Batch]) -> Option<EvalResult> {
    if batches.is_empty() {
        return None;
    }
    let (mut sum, mut n) = (0f64, 0usize);
    let mut m = MetricSums::default();
    for b in batches {
        let pass = evaluate(p, cfg, b, Some(&mut m));
        sum += pass.loss_sum;
        n += pass.n_targets;
    }
    Some(EvalResult {
        loss: sum / n.max(1) as f64,
        metrics: m.means(),
    })
}

fn run(a: Args) -> Result<()> {
    check_flags(&a)?;
    jq::train::keep_freed_memory();
    if let Some(t) = a.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("--threads")?;
    }
    let out = match (&a.out, &a.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => bail!("--out DIR is required (or --resume DIR)"),
    };

    // Resume: settings, vocabulary, weights and moments from the state file.
    let (saved, resume_meta) = match &a.resume {
        Some(dir) => {
            let path = dir.join(STATE);
            let (bytes, meta) = checkpoint::read_state_meta(&path)
                .with_context(|| format!("--resume {}", dir.display()))?;
            let s = Settings::from_json(&meta["settings"])
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            (Some(s), Some((path, bytes, meta)))
        }
        None => (None, None),
    };
    let state_path = resume_meta
        .as_ref()
        .map(|(p, _, _)| p.clone())
        .unwrap_or_default();
    let settings = settings_from(&a, saved.as_ref(), &state_path)?;

    let text = std::fs::read_to_string(&a.corpus)
        .with_context(|| format!("reading corpus {}", a.corpus.display()))?;
    let paras = data::paragraphs(&text);
    if paras.is_empty() {
        bail!(
            "{}: the corpus has no text (no non-blank paragraph)",
            a.corpus.display()
        );
    }
    let vocab = data::build_vocab(&paras, settings.model.vocab);
    let mut settings = settings;
    let n_vocab = vocab.tokens.len();
    if n_vocab < settings.model.vocab {
        eprintln!(
            "jq-train: the corpus has {} distinct words: vocabulary size {} (not --vocab-size {})",
            vocab.distinct_words, n_vocab, settings.model.vocab
        );
        settings.model.vocab = n_vocab;
    }
    if let Some((path, _, meta)) = &resume_meta {
        let saved_tokens: Vec<&str> = meta["tokens"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if saved_tokens.len() != vocab.tokens.len()
            || saved_tokens.iter().zip(&vocab.tokens).any(|(a, b)| a != b)
        {
            let at = saved_tokens
                .iter()
                .zip(&vocab.tokens)
                .position(|(a, b)| a != b)
                .unwrap_or(saved_tokens.len().min(vocab.tokens.len()));
            bail!(
                "{}: the checkpoint's vocabulary differs from the one {} gives (first difference at id {at}): resume with the same corpus",
                path.display(),
                a.corpus.display()
            );
        }
    }
    let cfg = settings.model.clone();
    let tok = WordTokenizer::new(vocab.tokens.clone(), true);
    let docs = data::documents(&paras, &tok);
    let (train_docs, eval_docs) = data::split(docs, settings.eval_split, settings.seed);
    if train_docs.is_empty() {
        bail!("{}: no training documents", a.corpus.display());
    }
    let sampler = Sampler::new(
        settings.sampling,
        &train_docs,
        settings.batch,
        cfg.ctx,
        settings.seed,
        settings.unk_dropout,
    );
    let spe = sampler.steps_per_epoch();
    let total = match (a.steps, a.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * spe,
        (None, None) => 10 * spe,
    };
    let eval_b = data::eval_batches(&eval_docs, settings.batch, cfg.ctx);

    let (mut params, mut adam) = match &resume_meta {
        Some((path, bytes, meta)) => {
            let st = checkpoint::read_state(path, bytes, meta.clone(), &Params::zeros(&cfg))?;
            (st.params, st.adam)
        }
        None => {
            let p = Params::init(&cfg, settings.seed);
            let s = AdamState::new(&p);
            (p, s)
        }
    };
    if adam.step >= total {
        bail!(
            "the checkpoint is at step {} already; ask for more (--steps > {})",
            adam.step,
            adam.step
        );
    }
    for name in [
        checkpoint::MODEL,
        checkpoint::CONFIG,
        checkpoint::TOKENIZER,
        STATE,
    ] {
        if jq::output::same_file(&a.corpus, &out.join(name)) {
            bail!("output {} is the corpus", out.join(name).display());
        }
    }
    eprintln!(
        "jq-train: {} documents ({} train, {} eval), vocabulary {}, {:.2} M parameters, {} steps/epoch, steps {}..{}",
        paras.len(),
        train_docs.len(),
        eval_docs.len(),
        cfg.vocab,
        params.n_elements() as f64 / 1e6,
        spe,
        adam.step + 1,
        total
    );

    let mut log = match &a.json_log {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--json-log {}", p.display()))?,
        )),
        None => None,
    };
    let pb = ProgressBar::new(total);
    if a.quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("template"),
    );
    pb.set_position(adam.step);

    let mut grads = Params::zeros(&cfg);
    let t0 = Instant::now();
    let mut tokens_done = 0u64;
    let (mut ep_loss, mut ep_n, mut ep_gn, mut ep_steps) = (0f64, 0usize, 0f64, 0u64);
    let mut last = (f64::NAN, None::<EvalResult>);
    let training_json = |s: &Settings, step: u64, train_loss: f64, ev: Option<&EvalResult>| {
        let mut v = s.to_json();
        v["steps_done"] = json!(step);
        v["steps_total"] = json!(total);
        v["train_loss_last_epoch"] = json!(train_loss);
        v["eval_loss"] = json!(ev.map(|e| e.loss));
        v["trainer"] = json!(format!("jq-train {}", env!("CARGO_PKG_VERSION")));
        v
    };
    while adam.step < total {
        let step = adam.step;
        let batch = sampler.batch(step);
        let pass = loss_and_grads(&params, &cfg, &batch, &mut grads);
        let lr = settings.adam.lr_at(step + 1, total);
        let up = adam.update(&mut params, &grads, &settings.adam, lr);
        let loss = pass.mean_loss();
        tokens_done += pass.n_targets as u64;
        ep_loss += pass.loss_sum;
        ep_n += pass.n_targets;
        ep_gn += up.grad_norm;
        ep_steps += 1;
        let secs = t0.elapsed().as_secs_f64();
        let tps = tokens_done as f64 / secs.max(1e-9);
        pb.set_position(adam.step);
        pb.set_message(format!(
            "loss {loss:.4} ppl {:.2} {tps:.0} tok/s",
            loss.exp()
        ));
        if let Some(w) = log.as_mut() {
            let o = json!({"event": "step", "step": adam.step, "epoch": sampler.epoch_of(step) + 1,
                "loss": loss, "ppl": loss.exp(), "grad_norm": up.grad_norm,
                "clip_scale": up.clip_scale, "lr": lr, "targets": pass.n_targets,
                "tokens_per_s": tps, "elapsed_s": secs});
            writeln!(w, "{o}").context("--json-log")?;
        }
        let epoch_end = adam.step % spe == 0 || adam.step == total;
        if epoch_end {
            let ev = eval(&params, &cfg, &eval_b);
            let tl = ep_loss / ep_n.max(1) as f64;
            let epoch = sampler.epoch_of(step) + 1;
            let line = match &ev {
                Some(e) => format!(
                    "epoch {epoch} step {}: train loss {tl:.4} ppl {:.2} | eval loss {:.4} ppl {:.2} | grad norm {:.3} | coherence {:.4} entanglement {:.4} interference {:.4} fidelity {:.4}",
                    adam.step,
                    tl.exp(),
                    e.loss,
                    e.loss.exp(),
                    ep_gn / ep_steps as f64,
                    e.metrics[0],
                    e.metrics[1],
                    e.metrics[2],
                    e.metrics[3]
                ),
                None => format!(
                    "epoch {epoch} step {}: train loss {tl:.4} ppl {:.2} | no eval split | grad norm {:.3}",
                    adam.step,
                    tl.exp(),
                    ep_gn / ep_steps as f64
                ),
            };
            pb.suspend(|| println!("{line}"));
            if let Some(w) = log.as_mut() {
                let o = json!({"event": "epoch", "epoch": epoch, "step": adam.step,
                    "train_loss": tl, "eval_loss": ev.as_ref().map(|e| e.loss),
                    "grad_norm": ep_gn / ep_steps as f64,
                    "coherence": ev.as_ref().map(|e| e.metrics[0]),
                    "entanglement": ev.as_ref().map(|e| e.metrics[1]),
                    "interference": ev.as_ref().map(|e| e.metrics[2]),
                    "fidelity": ev.as_ref().map(|e| e.metrics[3])});
                writeln!(w, "{o}").context("--json-log")?;
                w.flush().context("--json-log")?;
            }
            last = (tl, ev);
            (ep_loss, ep_n, ep_gn, ep_steps) = (0.0, 0, 0.0, 0);
        }
        let periodic = a.save_every.is_some_and(|n| adam.step % n == 0);
        if epoch_end || periodic {
            let tj = training_json(&settings, adam.step, last.0, last.1.as_ref());
            checkpoint::write_all(
                &out,
                &cfg,
                &params,
                &adam,
                &settings.to_json(),
                &tj,
                &vocab.tokens,
            )
            .with_context(|| format!("checkpoint {}", out.display()))?;
        }
    }
    pb.finish_and_clear();
    eprintln!(
        "jq-train: wrote {} (model.npz, config.json, tokenizer.json, {STATE}) at step {}; {:.1} s, {:.0} tokens/s",
        out.display(),
        adam.step,
        t0.elapsed().as_secs_f64(),
        tokens_done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(())
}
