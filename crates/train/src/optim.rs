//! AdamW with decoupled weight decay, a warm-up + cosine learning-rate schedule and global
//! gradient-norm clipping. The moment estimates are plain tensors so that a checkpoint can
//! save and restore them exactly.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Optimizer and schedule settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate, as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Steps of linear warm-up from 0 to the peak.
    pub warmup_steps: u64,
    /// Total steps; the cosine decay ends here.
    pub total_steps: u64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator term.
    pub eps: f64,
    /// Decoupled weight decay on matrices (never on norm vectors).
    pub weight_decay: f64,
    /// Largest global gradient L2 norm; larger gradients are scaled down to it.
    pub clip_norm: f64,
}

impl OptimConfig {
    /// Checks every field.
    pub fn check(&self) -> Result<(), TrainError> {
        let pos = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(TrainError::invalid(
                    name,
                    format!("must be a positive number, got {v}"),
                ))
            }
        };
        pos("lr", self.lr)?;
        pos("eps", self.eps)?;
        pos("clip_norm", self.clip_norm)?;
        if self.lr > 1.0 {
            return Err(TrainError::invalid("lr", "must be at most 1"));
        }
        for (name, v) in [
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("min_lr_ratio", self.min_lr_ratio),
            ("weight_decay", self.weight_decay),
        ] {
            let ok = (0.0..1.0).contains(&v) || (name == "min_lr_ratio" && v == 1.0);
            if !ok {
                return Err(TrainError::invalid(
                    name,
                    format!("must be in [0, 1), got {v}"),
                ));
            }
        }
        if self.total_steps == 0 {
            return Err(TrainError::invalid("steps", "must be at least 1"));
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warm-up, then cosine decay to
    /// `lr · min_lr_ratio` at `total_steps`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// AdamW state.
#[derive(Debug)]
pub struct AdamW {
    cfg: OptimConfig,
    step: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(cfg: OptimConfig) -> Result<AdamW, TrainError> {
        cfg.check()?;
        Ok(AdamW {
            cfg,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The settings.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Applies one update to `vars` from `grads`. A variable without a gradient is left as
    /// it is (its moments are not advanced).
    pub fn step(
        &mut self,
        vars: &BTreeMap<String, Var>,
        grads: &GradStore,
    ) -> Result<StepStats, TrainError> {
        let mut sq = 0f64;
        for var in vars.values() {
            if let Some(g) = grads.get(var.as_tensor()) {
                sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step,
                loss: f32::NAN,
            });
        }
        let clip = if grad_norm > self.cfg.clip_norm {
            self.cfg.clip_norm / grad_norm
        } else {
            1.0
        };
        let lr = self.cfg.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for (name, var) in vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * clip)?;
            let m = match self.m.get(name) {
                Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                None => (&g * (1.0 - b1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                None => (g.sqr()? * (1.0 - b2))?,
            };
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.cfg.eps)?)?;
            let w = var.as_tensor();
            let decayed = if w.rank() >= 2 {
                (w * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                w.clone()
            };
            var.set(&(decayed - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(StepStats { grad_norm, lr })
    }

    /// The moments, named `m.NAME` and `v.NAME`, for a checkpoint.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        out
    }

    /// Restores the moments and the step count saved by [`AdamW::state`].
    pub fn restore(
        &mut self,
        step: u64,
        state: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<(), String> {
        self.step = step;
        self.m.clear();
        self.v.clear();
        for (k, t) in state {
            if let Some(name) = k.strip_prefix("m.") {
                self.m.insert(name.into(), t);
            } else if let Some(name) = k.strip_prefix("v.") {
                self.v.insert(name.into(), t);
            } else {
                return Err(format!("unexpected optimizer tensor {k}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OptimConfig {
        OptimConfig {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            clip_norm: 1.0,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = cfg();
        assert!((c.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((c.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((c.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((c.lr_at(60) - 5.5e-4).abs() < 1e-9);
        assert!((c.lr_at(110) - 1e-4).abs() < 1e-12);
        assert!((c.lr_at(500) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn refuses_bad_settings() {
        for bad in [
            OptimConfig {
                lr: f64::NAN,
                ..cfg()
            },
            OptimConfig { lr: -1.0, ..cfg() },
            OptimConfig {
                beta2: 1.0,
                ..cfg()
            },
            OptimConfig {
                total_steps: 0,
                ..cfg()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn minimises_a_quadratic() -> Result<(), TrainError> {
        let dev = candle_core::Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[3f32, -2.0], &dev)?)?;
        let vars = BTreeMap::from([("w".to_string(), w.clone())]);
        let mut opt = AdamW::new(OptimConfig {
            lr: 0.1,
            weight_decay: 0.0,
            clip_norm: 100.0,
            warmup_steps: 1,
            total_steps: 300,
            ..cfg()
        })?;
        for _ in 0..300 {
            let loss = w.as_tensor().sqr()?.sum_all()?;
            opt.step(&vars, &loss.backward()?)?;
        }
        let left = w.as_tensor().abs()?.max(0)?.to_scalar::<f32>()?;
        assert!(left < 0.05, "{left}");
        Ok(())
    }
}
