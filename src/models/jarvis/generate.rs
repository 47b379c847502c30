//! Generation with a KV cache and the spec's context policy: when the context is full and a
//! token must be added, the last `ctx / 2` tokens (the new one included) are re-encoded from
//! position 0, and generation continues.

use super::model::{LayerMetrics, MetricsAcc, Model, State, StepError};
use crate::sample::Sampler;

/// One generated token with its step's metrics (when asked for).
#[derive(Debug, Clone)]
pub struct Token {
    pub id: u32,
    pub metrics: Option<Vec<LayerMetrics>>,
}

/// Drives a model over one sequence.
#[derive(Debug)]
pub struct Generator<'m, 'a> {
    model: &'m Model<'a>,
    st: State,
    /// Tokens whose K/V are in the cache, in position order.
    window: Vec<u32>,
    /// Every token read or generated (the repetition penalty looks at it).
    pub history: Vec<u32>,
    logits: Vec<f32>,
    /// How many times the context was shifted.
    pub shifts: usize,
}

impl<'m, 'a> Generator<'m, 'a> {
    pub fn new(model: &'m Model<'a>) -> Self {
        Generator {
            model,
            st: model.new_state(),
            window: Vec::new(),
            history: Vec::new(),
            logits: vec![0f32; model.cfg.vocab],
            shifts: 0,
        }
    }

    fn feed(&mut self, id: u32, m: Option<&mut MetricsAcc>) -> Result<(), StepError> {
        let l = self.model.step(&mut self.st, id, m)?;
        self.logits.copy_from_slice(l);
        self.window.push(id);
        Ok(())
    }

    /// Runs the prompt. Returns every position's logits (`n x vocab`) when `all_logits`, and
    /// the prompt pass's metrics when `metrics`. A prompt longer than the context is refused.
    pub fn prompt(
        &mut self,
        ids: &[u32],
        all_logits: bool,
        metrics: bool,
    ) -> Result<(Vec<f32>, Option<Vec<LayerMetrics>>), StepError> {
        let ctx = self.model.cfg.ctx;
        if ids.len() + self.window.len() > ctx {
            return Err(StepError::ContextFull(ctx));
        }
        let mut acc = metrics.then(|| MetricsAcc::new(&self.model.cfg));
        let mut out = Vec::new();
        if ids.is_empty() {
            return Ok((out, acc.map(|a| a.finish())));
        }
        self.model.prefill(
            &mut self.st,
            ids,
            acc.as_mut(),
            all_logits.then_some(&mut out),
        )?;
        self.logits
            .copy_from_slice(self.model.last_logits(&self.st));
        self.window.extend_from_slice(ids);
        self.history.extend_from_slice(ids);
        Ok((out, acc.map(|a| a.finish())))
    }

    /// The logits after the last token fed.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Appends `id` (a sampled token) and computes the next logits, shifting the context first
    /// if it is full.
    pub fn push(&mut self, id: u32, metrics: bool) -> Result<Option<Vec<LayerMetrics>>, StepError> {
        let ctx = self.model.cfg.ctx;
        if self.window.len() >= ctx {
            // The new window is the last ctx/2 tokens of (window + [id]), `id` included,
            // re-encoded from position 0.
            let keep = self.window.split_off(self.window.len() + 1 - ctx / 2);
            self.window.clear();
            self.st.reset();
            self.shifts += 1;
            self.model.prefill(&mut self.st, &keep, None, None)?;
            self.window = keep;
        }
        let mut acc = metrics.then(|| MetricsAcc::new(&self.model.cfg));
        self.feed(id, acc.as_mut())?;
        self.history.push(id);
        Ok(acc.map(|a| a.finish()))
    }

    /// Samples up to `n` tokens after what was fed, stopping after `stop` (e.g. `<eos>`, which
    /// is returned). `on_token` sees each token as it is produced.
    pub fn generate(
        &mut self,
        sampler: &mut Sampler,
        n: usize,
        stop: Option<u32>,
        metrics: bool,
        mut on_token: impl FnMut(&Token),
    ) -> Result<Vec<Token>, StepError> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut logits = self.logits.clone();
            let id = sampler.sample(&mut logits, &self.history);
            let is_stop = Some(id) == stop;
            // A stop token is not run; every other token is, so the state stays consistent.
            let m = if is_stop {
                self.history.push(id);
                None
            } else {
                self.push(id, metrics)?
            };
            let t = Token { id, metrics: m };
            on_token(&t);
            out.push(t);
            if is_stop {
                break;
            }
        }
        Ok(out)
    }
}
