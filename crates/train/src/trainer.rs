//! One training loop for both genesis and expert fine-tuning: a step is one optimizer
//! update on one batch, and `micro_step` splits it into parts small enough to be yield
//! points.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::TokenStream;
use crate::net::{Net, cross_entropy, token_losses};
use crate::optim::{AdamW, OptimConfig};

/// Settings of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Seed of the batch order.
    pub seed: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Weight of the router's load-balancing loss.
    pub balance_coef: f64,
    /// Optimizer and schedule.
    pub optim: OptimConfig,
}

impl TrainConfig {
    /// Checks every field.
    pub fn check(&self, context_len: usize) -> Result<(), TrainError> {
        if self.batch == 0 || self.batch > 1024 {
            return Err(TrainError::invalid("batch", "must be 1..=1024"));
        }
        if self.seq_len < 2 || self.seq_len > context_len {
            return Err(TrainError::invalid(
                "seq_len",
                format!("must be 2..={context_len}"),
            ));
        }
        if !(self.balance_coef.is_finite() && (0.0..=1.0).contains(&self.balance_coef)) {
            return Err(TrainError::invalid("balance_coef", "must be in [0, 1]"));
        }
        self.optim.check()
    }
}

/// What one step did.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Steps done, this one included.
    pub step: u64,
    /// Cross-entropy of the batch, nats per token.
    pub loss: f32,
    /// Load-balancing loss summed over layers.
    pub balance: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens in the batch.
    pub tokens: usize,
    /// Wall time of the step.
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A model, its optimizer and its training stream.
#[derive(Debug)]
pub struct Trainer {
    net: Net,
    opt: AdamW,
    data: TokenStream,
    cfg: TrainConfig,
    /// An optimizer step begun by [`Trainer::micro_step`] and not finished yet.
    pending: Option<Pending>,
}

impl Trainer {
    /// A trainer at step 0.
    pub fn new(net: Net, data: TokenStream, cfg: TrainConfig) -> Result<Trainer, TrainError> {
        cfg.check(net.config().context_len)?;
        if data.len() < cfg.seq_len + 1 {
            return Err(TrainError::DataTooSmall {
                detail: format!(
                    "{} training tokens; a step needs at least {}",
                    data.len(),
                    cfg.seq_len + 1
                ),
            });
        }
        let opt = AdamW::new(cfg.optim.clone())?;
        Ok(Trainer {
            net,
            opt,
            data,
            cfg,
            pending: None,
        })
    }

    /// Steps done.
    pub fn steps(&self) -> u64 {
        self.opt.steps()
    }

    /// The model.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// One optimizer step on the next batch (a step begun by [`Trainer::micro_step`] is
    /// dropped and restarted whole).
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let start = Instant::now();
        self.pending = None;
        let step = self.opt.steps();
        let (x, y) = self
            .data
            .batch(self.cfg.seed, step, self.cfg.batch, self.cfg.seq_len)?;
        let (loss, ce_value, balance) = self.loss(&x, &y, step)?;
        let grads = loss.backward()?;
        let stats = self.opt.step(self.net.params.vars(), &grads)?;
        Ok(StepReport {
            step: self.opt.steps(),
            loss: ce_value,
            balance,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            tokens: self.cfg.batch * self.cfg.seq_len,
            elapsed: start.elapsed(),
        })
    }

    /// Part of an optimizer step: forward and backward over the next `rows` sequences of the
    /// step's batch, gradients summed; the update is applied after the batch's last rows,
    /// and then the step's report is returned. Splitting a step this way bounds the time
    /// between yield points whatever the batch; with `rows >= batch` it is exactly
    /// [`Trainer::step`]. Each part's loss is weighted by its share of the batch, so the
    /// summed gradient is the whole batch's (the balance loss, which is not a per-row mean,
    /// is taken per part).
    pub fn micro_step(&mut self, rows: usize) -> Result<Option<StepReport>, TrainError> {
        if rows == 0 {
            return Err(TrainError::invalid("micro_rows", "must be at least 1"));
        }
        if rows >= self.cfg.batch && self.pending.is_none() {
            return self.step().map(Some);
        }
        let step = self.opt.steps();
        let mut pending = match self.pending.take() {
            Some(p) => p,
            None => {
                let (x, y) =
                    self.data
                        .batch(self.cfg.seed, step, self.cfg.batch, self.cfg.seq_len)?;
                Pending {
                    x,
                    y,
                    row: 0,
                    sums: HashMap::new(),
                    loss: 0.0,
                    balance: 0.0,
                    elapsed: Duration::ZERO,
                }
            }
        };
        let start = Instant::now();
        let batch = self.cfg.batch;
        let n = rows.min(batch - pending.row);
        let share = n as f64 / batch as f64;
        let x = pending.x.narrow(0, pending.row, n)?;
        let y = if pending.y.rank() == 1 {
            let seq = self.cfg.seq_len;
            pending.y.narrow(0, pending.row * seq, n * seq)?
        } else {
            pending.y.narrow(0, pending.row, n)?
        };
        let (loss, ce_value, balance) = self.loss(&x, &y, step)?;
        let mut grads = (loss * share)?.backward()?;
        for (name, var) in self.net.params.vars() {
            if let Some(g) = grads.remove(var.as_tensor()) {
                let sum = match pending.sums.remove(name) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                pending.sums.insert(name.clone(), sum);
            }
        }
        pending.loss += f64::from(ce_value) * share;
        pending.balance += f64::from(balance) * share;
        pending.row += n;
        pending.elapsed += start.elapsed();
        if pending.row < batch {
            self.pending = Some(pending);
            return Ok(None);
        }
        let update = Instant::now();
        for (name, var) in self.net.params.vars() {
            if let Some(sum) = pending.sums.remove(name) {
                grads.insert(var.as_tensor(), sum);
            }
        }
        let stats = self.opt.step(self.net.params.vars(), &grads)?;
        Ok(Some(StepReport {
            step: self.opt.steps(),
            loss: pending.loss as f32,
            balance: pending.balance as f32,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            tokens: batch * self.cfg.seq_len,
            elapsed: pending.elapsed + update.elapsed(),
        }))
    }

    /// The training loss on `(x, y)` (cross-entropy plus the weighted balance loss), with
    /// the cross-entropy and balance values; a non-finite loss is `Diverged`.
    fn loss(&self, x: &Tensor, y: &Tensor, step: u64) -> Result<(Tensor, f32, f32), TrainError> {
        let fwd = self.net.forward(x)?;
        let ce = cross_entropy(&fwd.logits, y)?;
        let loss = if self.cfg.balance_coef > 0.0 {
            (&ce + (&fwd.balance * self.cfg.balance_coef)?)?
        } else {
            ce.clone()
        };
        let ce_value = ce.to_scalar::<f32>()?;
        if !ce_value.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: ce_value,
            });
        }
        Ok((loss, ce_value, fwd.balance.to_scalar::<f32>()?))
    }

    /// Mean cross-entropy (nats per token) of the model over `stream`.
    pub fn eval(&self, stream: &TokenStream) -> Result<f64, TrainError> {
        eval_loss(&self.net, stream, self.cfg.batch, self.cfg.seq_len)
    }

    /// Saves the parameters, the optimizer state and the step to a new checkpoint
    /// directory `dir/step-NNNNNNN`, written beside it and renamed into place; keeps the
    /// newest `keep` checkpoints.
    pub fn save_checkpoint(&self, dir: &Path, keep: usize) -> Result<PathBuf, TrainError> {
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
        let name = format!("step-{:07}", self.steps());
        let fin = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
        let params: HashMap<String, Tensor> = self
            .net
            .params
            .vars()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&params, tmp.join("params.safetensors"))?;
        let optim: HashMap<String, Tensor> = self.opt.state().into_iter().collect();
        candle_core::safetensors::save(&optim, tmp.join("optim.safetensors"))?;
        let state = CheckpointState {
            step: self.steps(),
            config: self.cfg.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Checkpoint {
            path: tmp.clone(),
            detail: e.to_string(),
        })?;
        std::fs::write(tmp.join("state.json"), json).map_err(TrainError::io(&tmp))?;
        for f in ["params.safetensors", "optim.safetensors", "state.json"] {
            let p = tmp.join(f);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(TrainError::io(&p))?;
        }
        if fin.exists() {
            std::fs::remove_dir_all(&fin).map_err(TrainError::io(&fin))?;
        }
        std::fs::rename(&tmp, &fin).map_err(TrainError::io(&fin))?;
        let mut all = checkpoints(dir)?;
        while all.len() > keep.max(1) {
            let old = all.remove(0);
            std::fs::remove_dir_all(&old).map_err(TrainError::io(&old))?;
        }
        Ok(fin)
    }

    /// Restores the newest checkpoint in `dir`, if any; returns its path. The checkpoint
    /// must come from a run with the same settings and the same trainable tensors.
    pub fn resume(&mut self, dir: &Path) -> Result<Option<PathBuf>, TrainError> {
        self.pending = None;
        let Some(path) = checkpoints(dir)?.pop() else {
            return Ok(None);
        };
        let bad = |detail: String| TrainError::Checkpoint {
            path: path.clone(),
            detail,
        };
        let json = std::fs::read(path.join("state.json")).map_err(TrainError::io(&path))?;
        let state: CheckpointState =
            serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        if state.config != self.cfg {
            return Err(bad(format!(
                "it was made with other settings: {:?}",
                state.config
            )));
        }
        let params = candle_core::safetensors::load(path.join("params.safetensors"), &Device::Cpu)
            .map_err(|e| bad(e.to_string()))?;
        let vars = self.net.params.vars();
        if params.len() != vars.len() {
            return Err(bad(format!(
                "{} tensors, the model trains {}",
                params.len(),
                vars.len()
            )));
        }
        for (name, var) in vars {
            let t = params
                .get(name)
                .ok_or_else(|| bad(format!("no tensor {name}")))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(bad(format!("{name} has shape {:?}", t.dims())));
            }
            var.set(t)?;
        }
        let optim = candle_core::safetensors::load(path.join("optim.safetensors"), &Device::Cpu)
            .map_err(|e| bad(e.to_string()))?;
        self.opt.restore(state.step, optim).map_err(bad)?;
        Ok(Some(path))
    }
}

/// An optimizer step in progress: its batch, the rows done, the gradient sums so far.
#[derive(Debug)]
struct Pending {
    x: Tensor,
    y: Tensor,
    row: usize,
    sums: HashMap<String, Tensor>,
    loss: f64,
    balance: f64,
    elapsed: Duration,
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    config: TrainConfig,
}

/// Complete checkpoint directories in `dir`, oldest first.
fn checkpoints(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(TrainError::io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Mean cross-entropy (nats per token) of `net` over `stream`, in windows of `seq` tokens.
pub fn eval_loss(
    net: &Net,
    stream: &TokenStream,
    batch: usize,
    seq: usize,
) -> Result<f64, TrainError> {
    let mut sum = 0f64;
    let mut count = 0usize;
    for (x, y) in stream.eval_batches(batch, seq)? {
        let fwd = net.forward(&x)?;
        let losses = token_losses(&fwd.logits.detach(), &y)?.to_vec1::<f32>()?;
        count += losses.len();
        sum += losses.iter().map(|&l| f64::from(l)).sum::<f64>();
    }
    if count == 0 {
        return Err(TrainError::DataTooSmall {
            detail: format!(
                "{} evaluation tokens; one window needs {}",
                stream.len(),
                seq + 1
            ),
        });
    }
    Ok(sum / count as f64)
}
