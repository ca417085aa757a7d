//! [`TrainConfig`]: everything a training run needs besides the model, the data and the paths;
//! saved in every checkpoint so a resumed run continues with the same settings.

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::calibration::CtcalConfig;
use crate::precision::MixedPrecision;

/// How the learning rate evolves after the linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// Constant after warm-up (diffusers' `constant_with_warmup`).
    Constant,
    /// Half-cosine from the peak to zero at the last step (diffusers' `cosine`).
    Cosine,
}

/// A training run's settings. Defaults follow diffusers' LoRA training scripts and the
/// method page (AdamW, lr 1e-4, weight decay 1e-2, epsilon 1e-8, gradient norm 1).
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// Optimiser steps.
    #[config(default = 1000)]
    pub steps: usize,
    /// Samples per micro-batch.
    #[config(default = 1)]
    pub batch_size: usize,
    /// Micro-batches accumulated per optimiser step.
    #[config(default = 1)]
    pub grad_accum: usize,
    /// Peak learning rate of the denoiser's trained weights.
    #[config(default = 1e-4)]
    pub lr: f64,
    /// Peak learning rate of text-encoder LoRA, when the module trains text encoders beside
    /// the denoiser (diffusers' `--text_encoder_lr`; the paper's 5e-6).
    #[config(default = 5e-6)]
    pub text_encoder_lr: f64,
    /// Learning rate of the CTCal map auto-encoder (`None`: same as `lr`).
    #[config(default = "None")]
    pub ae_lr: Option<f64>,
    /// Linear warm-up steps.
    #[config(default = 0)]
    pub warmup_steps: usize,
    /// Shape of the schedule after warm-up.
    #[config(default = "LrSchedule::Constant")]
    pub lr_schedule: LrSchedule,
    /// AdamW decoupled weight decay.
    #[config(default = 1e-2)]
    pub weight_decay: f64,
    /// AdamW epsilon (PyTorch's default).
    #[config(default = 1e-8)]
    pub adam_epsilon: f64,
    /// Clip the global gradient norm (denoiser and auto-encoder together) to this value.
    #[config(default = "Some(1.0)")]
    pub max_grad_norm: Option<f64>,
    /// Keep an exponential moving average of the trained weights with this decay.
    #[config(default = "None")]
    pub ema_decay: Option<f64>,
    /// Seed of the data order, noise, levels and dropout.
    #[config(default = 0)]
    pub seed: u64,
    /// Checkpoint every this many steps (and at the end); 0: only at the end.
    #[config(default = 100)]
    pub checkpoint_every: usize,
    /// Checkpoints kept: older ones are removed after each new one (diffusers'
    /// `--checkpoints_total_limit`); 0 keeps every one.
    #[config(default = 3)]
    pub checkpoints_total_limit: usize,
    /// Print the loss every this many steps.
    #[config(default = 10)]
    pub log_every: usize,
    /// Compute type of the forward and backward passes; weights and AdamW state stay in the
    /// backend's float type (`precision::cast_params`).
    #[config(default = "MixedPrecision::No")]
    pub mixed_precision: MixedPrecision,
    /// Encode training images to a sample of the VAE posterior (diffusers'
    /// `latent_dist.sample()`) rather than its mean.
    #[config(default = true)]
    pub sample_posterior: bool,
    /// Share of captions replaced by the empty one, for classifier-free guidance (diffusers'
    /// `--proportion_empty_prompts`); needs image data, whose captions are encoded per step.
    #[config(default = 0.0)]
    pub caption_dropout: f64,
    /// The CTCal loss (weights, tau, layers, teacher rule).
    pub ctcal: CtcalConfig,
}

impl TrainConfig {
    /// The paper's fine-tuning recipe around `ctcal`: AdamW at 1e-4 with weight decay 1e-2,
    /// 500 linear warm-up steps then constant, the global gradient norm clipped at 1.0, batch
    /// 16, 15,000 steps (with LoRA rank 4, [`LoraConfig`]'s default); text-encoder LoRA, when
    /// trained, at 5e-6 ([`text_encoder_lr`](Self::text_encoder_lr)'s default).
    ///
    /// [`LoraConfig`]: crate::lora::LoraConfig
    pub fn paper_recipe(ctcal: CtcalConfig) -> Self {
        Self::new(ctcal)
            .with_steps(15_000)
            .with_batch_size(16)
            .with_lr(1e-4)
            .with_text_encoder_lr(5e-6)
            .with_weight_decay(1e-2)
            .with_warmup_steps(500)
            .with_lr_schedule(LrSchedule::Constant)
            .with_max_grad_norm(Some(1.0))
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::Config(m.into()));
        for (name, n) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if n == 0 {
                return bad(&format!("{name} = 0: it must be at least 1"));
            }
        }
        // False for NaN and infinity too.
        let positive = |x: f64| x.is_finite() && x > 0.0;
        for (name, lr) in [
            ("lr", Some(self.lr)),
            ("text_encoder_lr", Some(self.text_encoder_lr)),
            ("ae_lr", self.ae_lr),
        ] {
            if let Some(lr) = lr.filter(|&l| !positive(l)) {
                return bad(&format!("{name} = {lr}: it must be a finite number > 0"));
            }
        }
        if self.ema_decay.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return bad("ema_decay must lie in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.caption_dropout) {
            return bad("caption_dropout must lie in [0, 1)");
        }
        if self.max_grad_norm.is_some_and(|n| !positive(n)) {
            return bad("max_grad_norm must be > 0");
        }
        Ok(())
    }

    /// The learning rate of optimiser step `step` (0-based), for the given peak.
    pub fn lr_at(&self, step: usize, peak: f64) -> f64 {
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.lr_schedule {
            LrSchedule::Constant => peak,
            LrSchedule::Cosine => {
                let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step - self.warmup_steps) as f64 / span;
                peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Warm-up ramps linearly, cosine hits half the peak midway and zero at the end.
    #[test]
    fn learning_rate_schedules() {
        let c = TrainConfig::new(CtcalConfig::sd21())
            .with_steps(110)
            .with_warmup_steps(10);
        assert!((c.lr_at(0, 1.0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 1.0) - 1.0).abs() < 1e-12);
        assert_eq!(c.lr_at(80, 1.0), 1.0);
        let c = c.with_lr_schedule(LrSchedule::Cosine);
        assert!((c.lr_at(10, 2.0) - 2.0).abs() < 1e-12);
        assert!((c.lr_at(60, 2.0) - 1.0).abs() < 1e-12);
        assert!(c.lr_at(110, 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_paper_recipe() {
        let c = TrainConfig::paper_recipe(CtcalConfig::sd21());
        assert_eq!((c.steps, c.batch_size, c.warmup_steps), (15_000, 16, 500));
        assert_eq!(
            (c.lr, c.text_encoder_lr, c.weight_decay, c.max_grad_norm),
            (1e-4, 5e-6, 1e-2, Some(1.0))
        );
        assert_eq!(c.lr_schedule, LrSchedule::Constant);
        assert!((c.lr_at(0, c.lr) - 1e-4 / 500.0).abs() < 1e-18);
        assert_eq!(c.lr_at(499, c.lr), 1e-4);
        assert_eq!(c.lr_at(14_999, c.lr), 1e-4);
        assert_eq!(crate::lora::LoraConfig::unet_default().rank, 4);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation_names_the_field() {
        let c = TrainConfig::new(CtcalConfig::sd21()).with_ema_decay(Some(1.5));
        assert!(c.validate().unwrap_err().to_string().contains("ema_decay"));
        assert!(TrainConfig::new(CtcalConfig::sd21()).validate().is_ok());
        let msg = |c: TrainConfig| c.validate().unwrap_err().to_string();
        let c = || TrainConfig::new(CtcalConfig::sd21());
        assert!(msg(c().with_lr(f64::INFINITY)).contains("lr = inf"));
        assert!(msg(c().with_lr(f64::NAN)).contains("lr = NaN"));
        assert!(msg(c().with_ae_lr(Some(-1.0))).contains("ae_lr = -1"));
        assert!(msg(c().with_text_encoder_lr(0.0)).contains("text_encoder_lr = 0"));
        assert!(msg(c().with_steps(0)).contains("steps = 0"));
        assert!(msg(c().with_batch_size(0)).contains("batch_size = 0"));
    }
}
