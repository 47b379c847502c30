//! The trainer's loss, gradients and Adam updates against PyTorch autograd (float64), from the
//! committed outputs of `fixtures/jarvis/train_reference.py`, and a finite-difference check of
//! gradient entries of every tensor kind.
//!
//! Error measure (shared/spec/jarvis.md): max |ours - ref| / max |ref| per tensor, <= 1e-5.

use jq::models::jarvis::{Config, Gelu};
use jq::npy::NpyArray;
use jq::train::backprop::{evaluate, loss_and_grads, Batch};
use jq::train::optim::{AdamConfig, AdamState, DecayMode, Schedule};
use jq::train::params::Params;
use std::collections::BTreeMap;
use std::path::Path;

const TOL: f64 = 1e-5;

fn reference() -> BTreeMap<String, NpyArray> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jarvis/train_reference.npz");
    jq::npz::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Case {
    cfg: Config,
    params: Params,
    batch: Batch,
    adam: AdamConfig,
    steps: u64,
}

fn case(r: &BTreeMap<String, NpyArray>, name: &str) -> Case {
    let a = |k: &str| {
        r.get(&format!("{name}__{k}"))
            .unwrap_or_else(|| panic!("{name}__{k} missing"))
    };
    let c = &a("config").data;
    let cfg = Config {
        vocab: c[0] as usize,
        d_model: c[1] as usize,
        n_layers: c[2] as usize,
        n_heads: c[3] as usize,
        d_ff: c[4] as usize,
        ctx: c[5] as usize,
        eps: 1e-5,
        gelu: Gelu::Tanh,
        final_norm: c[6] != 0.0,
    };
    let mut params = Params::zeros(&cfg);
    for t in &mut params.tensors {
        let src = a(&format!("param__{}", t.name));
        assert_eq!(src.shape, t.shape, "{}", t.name);
        t.data.clone_from(&src.data);
    }
    let inputs = a("inputs");
    let (b, t) = (inputs.shape[0], inputs.shape[1]);
    let batch = Batch {
        b,
        t,
        inputs: inputs.data.iter().map(|&v| v as u32).collect(),
        targets: a("targets").data.iter().map(|&v| v as u32).collect(),
        mask: a("mask").data.iter().map(|&v| v != 0.0).collect(),
    };
    let o = &a("optim").data;
    let adam = AdamConfig {
        lr: f64::from(o[0]),
        lr_min: 0.0,
        warmup: o[1] as u64,
        schedule: Schedule::Constant,
        beta1: f64::from(o[2]),
        beta2: f64::from(o[3]),
        eps: f64::from(o[4]),
        clip: f64::from(o[5]),
        weight_decay: f64::from(o[6]),
        decay_mode: if o[7] != 0.0 {
            DecayMode::L2
        } else {
            DecayMode::Decoupled
        },
    };
    Case {
        cfg,
        params,
        batch,
        adam,
        steps: o[8] as u64,
    }
}

fn rel_err(ours: &[f32], want: &[f32]) -> f64 {
    let max_ref = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let max_diff = ours.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    if max_ref == 0.0 {
        max_diff
    } else {
        max_diff / max_ref
    }
}

fn check_case(name: &str) {
    let r = reference();
    let mut c = case(&r, name);
    let mut g = Params::zeros(&c.cfg);
    let pass = loss_and_grads(&c.params, &c.cfg, &c.batch, &mut g);
    let want_loss = f64::from(r[&format!("{name}__loss")].data[0]);
    assert!(
        (pass.mean_loss() - want_loss).abs() / want_loss < TOL,
        "{name}: loss {} vs torch {want_loss}",
        pass.mean_loss()
    );
    assert_eq!(pass.n_targets, c.batch.mask.iter().filter(|&&m| m).count());
    assert!(
        c.batch.mask.iter().any(|&m| !m),
        "{name}: the batch has padding"
    );
    let mut worst = (0f64, String::new());
    for t in &g.tensors {
        let want = &r[&format!("{name}__grad__{}", t.name)];
        let e = rel_err(&t.data, &want.data);
        assert!(e <= TOL, "{name}: gradient of {} off by {e:.2e}", t.name);
        if e > worst.0 {
            worst = (e, t.name.clone());
        }
    }
    eprintln!("{name}: worst gradient error {:.2e} ({})", worst.0, worst.1);
    // Three Adam steps on the same batch, as the reference does.
    let norms = &r[&format!("{name}__grad_norm")].data;
    let mut st = AdamState::new(&c.params);
    for step in 1..=c.steps {
        let _ = loss_and_grads(&c.params, &c.cfg, &c.batch, &mut g);
        let lr = c.adam.lr_at(step, c.steps);
        let up = st.update(&mut c.params, &g, &c.adam, lr);
        let want = f64::from(norms[step as usize - 1]);
        assert!(
            (up.grad_norm - want).abs() / want < TOL,
            "{name} step {step}: grad norm {} vs {want}",
            up.grad_norm
        );
        // Whether clipping triggered is the reference's fact, not ours.
        assert_eq!(
            up.clip_scale < 1.0,
            want > c.adam.clip,
            "{name} step {step}"
        );
    }
    let mut worst = (0f64, String::new());
    for t in &c.params.tensors {
        let want = &r[&format!("{name}__after__{}", t.name)];
        let e = rel_err(&t.data, &want.data);
        assert!(
            e <= TOL,
            "{name}: {} after {} steps off by {e:.2e}",
            t.name,
            c.steps
        );
        if e > worst.0 {
            worst = (e, t.name.clone());
        }
    }
    eprintln!(
        "{name}: worst parameter error after {} steps {:.2e} ({})",
        c.steps, worst.0, worst.1
    );
}

#[test]
fn final_norm_clipped_decoupled_decay_matches_torch() {
    check_case("norm");
}

#[test]
fn no_final_norm_unclipped_matches_torch() {
    check_case("nonorm");
}

#[test]
fn strong_clip_with_l2_decay_matches_torch() {
    check_case("clip_l2");
}

/// Central differences of the loss (f64 sums over f32 forward passes) against the analytic
/// gradient, at the two largest-gradient entries of every tensor.
#[test]
fn finite_differences_agree_per_tensor_kind() {
    let r = reference();
    for name in ["norm", "nonorm"] {
        let c = case(&r, name);
        let mut g = Params::zeros(&c.cfg);
        let _ = loss_and_grads(&c.params, &c.cfg, &c.batch, &mut g);
        for (ti, gt) in g.tensors.iter().enumerate() {
            let mut idx: Vec<usize> = (0..gt.data.len()).collect();
            idx.sort_by(|&a, &b| gt.data[b].abs().total_cmp(&gt.data[a].abs()));
            for &i in idx.iter().take(2) {
                let h = 1e-2f32;
                let mut p = c.params.clone();
                let x0 = p.tensors[ti].data[i];
                p.tensors[ti].data[i] = x0 + h;
                let lp = evaluate(&p, &c.cfg, &c.batch, None).mean_loss();
                p.tensors[ti].data[i] = x0 - h;
                let lm = evaluate(&p, &c.cfg, &c.batch, None).mean_loss();
                let num = (lp - lm) / (2.0 * f64::from(h));
                let ana = f64::from(gt.data[i]);
                // h = 1e-2: truncation ~ h^2 |f'''|, rounding ~ 1e-7 * loss / h.
                assert!(
                    (num - ana).abs() <= 2e-2 * ana.abs() + 2e-4,
                    "{name}: {}[{i}] analytic {ana} vs finite difference {num}",
                    gt.name
                );
            }
        }
    }
}

/// The training forward pass (loss and quantum metrics) on a committed trained fixture model,
/// against the float64 numpy reference outputs made by `make_jarvis.py` / `jarvis_ref.py`
/// (`reference.npz` logits and `metrics.json`).
#[test]
fn training_forward_matches_the_numpy_reference_on_fixture_models() {
    use jq::train::backprop::MetricSums;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jarvis");
    for (model, final_norm) in [("tiny-norm", true), ("tiny-nonorm", false)] {
        let dir = root.join(model);
        let cfg = Config {
            vocab: 339,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            d_ff: 256,
            ctx: 64,
            eps: 1e-5,
            gelu: Gelu::Tanh,
            final_norm,
        };
        let w = jq::npz::read(&dir.join("model.npz")).unwrap();
        let mut p = Params::zeros(&cfg);
        for t in &mut p.tensors {
            t.data.clone_from(&w[&t.name].data);
        }
        let refs = jq::npz::read(&dir.join("reference.npz")).unwrap();
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
        for k in 0..5 {
            let ids: Vec<u32> = refs[&format!("ids_{k}")]
                .data
                .iter()
                .map(|&v| v as u32)
                .collect();
            let logits = &refs[&format!("logits_{k}")];
            let n = ids.len() - 1;
            // Loss of predicting ids[1..] from the reference's logits.
            let mut want = 0f64;
            for i in 0..n {
                let row = &logits.data[i * 339..(i + 1) * 339];
                let mx = row
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
                let lse = mx
                    + row
                        .iter()
                        .map(|&v| (f64::from(v) - mx).exp())
                        .sum::<f64>()
                        .ln();
                want += lse - f64::from(row[ids[i + 1] as usize]);
            }
            want /= n as f64;
            let batch = Batch {
                b: 1,
                t: ids.len(),
                inputs: ids.clone(),
                targets: ids[1..].iter().copied().chain([0]).collect(),
                mask: (0..ids.len()).map(|i| i < n).collect(),
            };
            // Metrics cover every position with a target; give the last one a target too so
            // they cover the whole prompt, as metrics.json does.
            let mut full = batch.clone();
            full.mask = vec![true; ids.len()];
            let mut m = MetricSums::default();
            let pass = evaluate(&p, &cfg, &batch, None);
            let _ = evaluate(&p, &cfg, &full, Some(&mut m));
            assert!(
                (pass.mean_loss() - want).abs() / want < 1e-5,
                "{model} prompt {k}: loss {} vs numpy {want}",
                pass.mean_loss()
            );
            let layers = metrics[k]["layers"].as_array().unwrap();
            let got = m.means();
            for (j, key) in ["coherence", "entanglement", "interference", "fidelity"]
                .iter()
                .enumerate()
            {
                let want = layers.iter().map(|l| l[key].as_f64().unwrap()).sum::<f64>()
                    / layers.len() as f64;
                assert!(
                    (got[j] - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{model} prompt {k}: {key} {} vs numpy {want}",
                    got[j]
                );
            }
        }
    }
}
