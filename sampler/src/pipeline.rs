//! The sampling pipeline: a scheduler drives the early-exit U-ViT, one evaluation at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use deediff_schedules::{Scheduler, SchedulerConfig};
use deediff_uem::{EarlyExitUVit, ExitPolicy, Guided, Passes, ReuseSchedule, RunState, SampleExit};
use deediff_unet::{Conditioning, LatentDecoder};

use crate::conditioning::{Condition, Conditioner, TextEncoder};
use crate::error::{Error, Result};
use crate::guidance::Guidance;
use crate::noise::PerImageNoise;
use crate::report::RunReport;
use crate::timestep_bands::{check_disjoint, policy_at, TimestepBand};
use crate::training_schedule::{TimeLabel, TrainingSchedule};

/// The exit threshold a model with certainty heads starts with (AdaDiff's CIFAR-10/ImageNet
/// releases use 0.92, COCO 0.87).
pub const DEFAULT_THRESHOLD: f32 = 0.9;

/// Where a run is, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Model evaluations done / per run.
    pub eval: usize,
    pub evals: usize,
    /// Mean blocks executed per network pass so far in this run.
    pub mean_blocks: f64,
}

/// Optional observers of a run.
#[derive(Default)]
pub struct Hooks<'a> {
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
    /// Checked before every evaluation; when set the run stops with [`Error::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
}

/// Samples and the report of their run.
pub struct Generated {
    /// `[B, C, H, W]` f32 pixels in [-1, 1] (not clamped): the model's samples, or for a latent
    /// model with a decoder their decoding.
    pub samples: Tensor,
    pub report: RunReport,
}

/// A model with its scheduler, exit policy and guidance: call [`Pipeline::generate`].
pub struct Pipeline {
    model: EarlyExitUVit,
    training: TrainingSchedule,
    text: Option<Box<dyn TextEncoder>>,
    scheduler_config: SchedulerConfig,
    scheduler: Scheduler,
    time_label: TimeLabel,
    policy: ExitPolicy,
    /// Timesteps with a policy of their own (disjoint).
    bands: Vec<TimestepBand>,
    guidance: Guidance,
    /// Replaces the null condition in the unconditional pass (a negative prompt).
    negative: Option<Condition>,
    /// Turns a latent model's samples into pixels.
    decoder: Option<LatentDecoder>,
    device: Device,
}

impl Pipeline {
    /// A pipeline for `model` (trained on `training`), sampling with `scheduler_config` in
    /// `steps` steps. The exit policy defaults to per-sample exits at [`DEFAULT_THRESHOLD`] when the model
    /// has certainty heads, full depth otherwise.
    pub fn new(
        model: EarlyExitUVit,
        training: TrainingSchedule,
        text: Option<Box<dyn TextEncoder>>,
        scheduler_config: SchedulerConfig,
        steps: usize,
        device: Device,
    ) -> Result<Self> {
        let time_label = TimeLabel::new(&training, &scheduler_config)?;
        let scheduler = Scheduler::new(&scheduler_config, steps)?;
        let policy = match model.heads() {
            Some(_) => ExitPolicy::per_sample(DEFAULT_THRESHOLD)?,
            None => ExitPolicy::Full,
        };
        Ok(Self {
            model,
            training,
            text,
            scheduler_config,
            scheduler,
            time_label,
            policy,
            bands: Vec::new(),
            guidance: Guidance::default(),
            negative: None,
            decoder: None,
            device,
        })
    }

    /// A pipeline over a loaded model (its text encoder and decoder included); per-sample exits
    /// at the model's own recommended threshold when it has one.
    pub fn from_bundle(
        bundle: crate::ModelBundle,
        scheduler_config: SchedulerConfig,
        steps: usize,
        device: Device,
    ) -> Result<Self> {
        let mut pipeline = Self::new(
            bundle.model,
            bundle.training,
            bundle.text,
            scheduler_config,
            steps,
            device,
        )?;
        if let (Some(t), Some(_)) = (bundle.exit_threshold, pipeline.model.heads()) {
            pipeline.policy = ExitPolicy::per_sample(t)?;
        }
        pipeline.set_decoder(bundle.decoder)?;
        Ok(pipeline)
    }

    /// Decodes every run's latents with `decoder` (`None`: samples are the model's own, as for
    /// pixel models).
    pub fn set_decoder(&mut self, decoder: Option<LatentDecoder>) -> Result<()> {
        let channels = self.model.model().config().in_chans;
        if let Some(d) = &decoder {
            if d.latent_channels() != channels {
                return Err(Error::Request(format!(
                    "{}: the decoder reads {}-channel latents but the model samples {channels} channels",
                    d.path().display(),
                    d.latent_channels()
                )));
            }
        }
        self.decoder = decoder;
        Ok(())
    }

    /// Replaces the scheduler (checked against the model's training schedule).
    pub fn set_scheduler(&mut self, config: SchedulerConfig, steps: usize) -> Result<()> {
        self.time_label = TimeLabel::new(&self.training, &config)?;
        self.scheduler = Scheduler::new(&config, steps)?;
        self.scheduler_config = config;
        Ok(())
    }

    /// The schedule the `l2c` policy follows; it must cover this scheduler's evaluations.
    pub fn set_reuse_schedule(&mut self, schedule: Option<ReuseSchedule>) -> Result<()> {
        if let Some(s) = &schedule {
            if s.evaluations() != self.scheduler.nfe() {
                return Err(Error::Request(format!(
                    "reuse schedule: fitted for {} evaluations, this scheduler runs {}",
                    s.evaluations(),
                    self.scheduler.nfe()
                )));
            }
        }
        self.model.set_reuse_schedule(schedule)?;
        Ok(())
    }

    pub fn set_policy(&mut self, policy: ExitPolicy) -> Result<()> {
        self.check_policy(policy)?;
        self.policy = policy;
        Ok(())
    }

    /// Passes at timesteps inside one of `bands` follow that band's policy instead of the
    /// pipeline's (empty: none). Bands must not overlap.
    pub fn set_timestep_bands(&mut self, bands: Vec<TimestepBand>) -> Result<()> {
        for b in &bands {
            self.check_policy(b.policy)?;
        }
        check_disjoint(&bands)?;
        self.bands = bands;
        Ok(())
    }

    fn check_policy(&self, policy: ExitPolicy) -> Result<()> {
        policy.validate()?;
        match self.model.unsupported(&policy) {
            Some(why) => Err(Error::Request(format!("policy {policy}: {why}"))),
            None => Ok(()),
        }
    }

    pub fn set_guidance(&mut self, guidance: Guidance) -> Result<()> {
        if !guidance.scale.is_finite() || guidance.scale < 0.0 {
            return Err(Error::Request(format!(
                "guidance scale {} must be a finite number ≥ 0",
                guidance.scale
            )));
        }
        if guidance.is_active() && !self.conditioner().supports_guidance() {
            return Err(Error::Request(
                "guidance needs a class-conditional or text-to-image model".into(),
            ));
        }
        self.guidance = guidance;
        Ok(())
    }

    /// Guidance steers away from `negative` instead of the null condition (a negative prompt).
    pub fn set_negative(&mut self, negative: Option<Condition>) -> Result<()> {
        if let Some(n) = &negative {
            // Validates the condition against the model (e.g. unknown words) before any run.
            self.conditioner()
                .batch(std::slice::from_ref(n), &self.device)?;
        }
        self.negative = negative;
        Ok(())
    }

    pub fn model(&self) -> &EarlyExitUVit {
        &self.model
    }

    pub fn policy(&self) -> ExitPolicy {
        self.policy
    }

    pub fn timestep_bands(&self) -> &[TimestepBand] {
        &self.bands
    }

    /// The policy with its timestep bands, e.g. `per-sample:0.95, 640-1000:static:2`.
    pub fn describe_policy(&self) -> String {
        std::iter::once(self.policy.to_string())
            .chain(self.bands.iter().map(|b| b.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn conditioner(&self) -> Conditioner<'_> {
        Conditioner::new(self.model.model().config(), self.text.as_deref())
    }

    /// Samples one image per condition; image `k` uses seed `seeds[k]` for all its noise, so it
    /// is the same image in any batch, shard or subset.
    pub fn generate(
        &self,
        conditions: &[Condition],
        seeds: &[u64],
        hooks: Hooks<'_>,
    ) -> Result<Generated> {
        let passes = if self.guidance.is_active() { 2 } else { 1 };
        let mut report = RunReport::new(conditions.len(), self.model.model().num_blocks(), passes);
        let start = Instant::now();
        let policy = |t| policy_at(&self.bands, t, self.policy);
        let mut state = RunState::new();
        let latents = self.run(
            &mut state,
            conditions,
            seeds,
            hooks,
            &policy,
            &mut |t, exits| report.record(t, exits),
        )?;
        report.cache_bytes_peak = state.peak_bytes();
        state.release();
        report.cache_bytes_after_run = state.bytes();
        let samples = match &self.decoder {
            Some(d) => d.decode(&latents)?,
            None => latents,
        };
        report.seconds = start.elapsed().as_secs_f64();
        Ok(Generated { samples, report })
    }

    /// The sampling loop, evaluation at timestep `t` under `policy(t)`; `observe` sees every
    /// evaluation's per-pass exits. `state` (fresh) carries the caches of the whole run.
    pub(crate) fn run(
        &self,
        state: &mut RunState,
        conditions: &[Condition],
        seeds: &[u64],
        mut hooks: Hooks<'_>,
        policy: &dyn Fn(f64) -> ExitPolicy,
        observe: &mut dyn FnMut(f64, &[SampleExit]),
    ) -> Result<Tensor> {
        let (shape, cond, uncond) = self.prepare(conditions, seeds)?;
        let passes = Passes {
            cond: &cond,
            guidance: uncond.as_ref().map(|uncond| Guided {
                uncond,
                scale: self.guidance.scale,
                shared_exit: self.guidance.shared_exit,
            }),
        };
        let mut noise = PerImageNoise::new(seeds.iter().copied());
        let mut z = vec![0.0; shape.0 * shape.1 * shape.2 * shape.3];
        deediff_schedules::NoiseSource::fill(&mut noise, &mut z)?;
        let mut run = self.scheduler.start(&z);
        let mut progress = Progress {
            eval: 0,
            evals: self.scheduler.nfe(),
            mean_blocks: 0.0,
        };
        let (mut blocks, mut passes_run) = (0usize, 0usize);
        while let Some(ev) = run.next_eval() {
            if hooks.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Cancelled);
            }
            let x = Tensor::from_iter(ev.x.iter().map(|&v| v as f32), &self.device)?;
            let label = self.time_label.label(&ev.time);
            let t = Tensor::full(label as f32, shape.0, &self.device)?;
            let out =
                self.model
                    .evaluate(state, &x.reshape(shape)?, &t, &passes, &policy(label))?;
            observe(label, &out.samples);
            blocks += out.samples.iter().map(|e| e.blocks_executed).sum::<usize>();
            passes_run += out.samples.len();
            let eps = out.eps.flatten_all()?.to_vec1::<f32>()?;
            run.feed(
                &eps.into_iter().map(f64::from).collect::<Vec<_>>(),
                &mut noise,
            )?;
            progress.eval += 1;
            progress.mean_blocks = blocks as f64 / passes_run as f64;
            if let Some(p) = hooks.progress.as_mut() {
                p(&progress);
            }
        }
        let x: Vec<f32> = run.into_sample().into_iter().map(|v| v as f32).collect();
        Ok(Tensor::from_vec(x, shape, &self.device)?)
    }

    /// Checks a request and conditions its batch: the sample shape, the conditional batch and
    /// (with guidance) the unconditional one.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        conditions: &[Condition],
        seeds: &[u64],
    ) -> Result<(
        (usize, usize, usize, usize),
        Conditioning,
        Option<Conditioning>,
    )> {
        if conditions.is_empty() || conditions.len() != seeds.len() {
            return Err(Error::Request(format!(
                "{} conditions and {} seeds: need one seed per image, at least one image",
                conditions.len(),
                seeds.len()
            )));
        }
        let cfg = self.model.model().config();
        let b = conditions.len();
        let shape = (b, cfg.in_chans, cfg.img_size, cfg.img_size);
        let conditioner = self.conditioner();
        let cond = conditioner.batch(conditions, &self.device)?;
        let uncond = match (&self.negative, self.guidance.is_active()) {
            (_, false) => None,
            (Some(n), true) => Some(conditioner.batch(&vec![n.clone(); b], &self.device)?),
            (None, true) => Some(conditioner.unconditional(b, &self.device)?),
        };
        Ok((shape, cond, uncond))
    }
}
