//! The early-exit forward: blocks run one by one, certainty heads decide after each block, and the
//! shared output head runs once per pass, on the rows that left plus those that ran to the end.
//! Guided evaluations (conditional and unconditional passes) and reuse policies live here too, so
//! the sampler only loops over scheduler evaluations.

use std::ops::Range;
use std::path::Path;

use candle_core::{Device, Result, Tensor};
use deediff_unet::{Checkpoint, Conditioning, ConfigHints, UVit};

use crate::backbone::Backbone;
use crate::head::CertaintyHeads;
use crate::policy::{ExitPolicy, ExitRule, FillHeads};
use crate::reuse_schedule::ReuseSchedule;
use crate::run_state::RunState;

/// What one sample of a forward pass cost and where it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleExit {
    /// The last block run (0-based, execution order).
    pub exit_block: usize,
    /// Blocks executed for this sample (`exit_block + 1` except under `deepcache`).
    pub blocks_executed: usize,
    /// Certainty score the rule saw after each block where a head ran: the batch mean under
    /// `Official`, the sample's own mean under `PerSample`, empty for `Full`/`Static`. No head
    /// runs after the last block (nothing left to decide).
    pub scores: Vec<f32>,
    /// Blocks whose cached contribution stood in for running them (`cached`, `deepcache`).
    pub reused_blocks: usize,
    /// MACs spent on this sample: embed + executed blocks + certainty heads run + output head.
    pub macs: u64,
    /// MACs of a plain full-depth forward of one sample.
    pub full_depth_macs: u64,
}

/// The prediction plus per-sample exit statistics.
#[derive(Debug, Clone)]
pub struct ExitOutput {
    /// `[B, C, H, W]`, in the input's sample order.
    pub eps: Tensor,
    pub samples: Vec<SampleExit>,
}

/// The conditions of one evaluation: the conditional pass and, with classifier-free guidance,
/// the unconditional one.
#[derive(Debug, Clone, Copy)]
pub struct Passes<'a> {
    pub cond: &'a Conditioning,
    pub guidance: Option<Guided<'a>>,
}

/// The unconditional pass of a guided evaluation: `ε = ε_u + scale·(ε_c − ε_u)`.
#[derive(Debug, Clone, Copy)]
pub struct Guided<'a> {
    pub uncond: &'a Conditioning,
    pub scale: f64,
    /// The unconditional pass stops where the conditional pass of the same image stopped
    /// (threshold policies only; other policies decide both passes alike anyway).
    pub shared_exit: bool,
}

/// The cache slots of some images of a batch of `B`: image `k`'s conditional pass keeps its
/// caches in slot `k` of the run's state, its unconditional pass (with guidance) in slot `B + k`.
struct Slots {
    cond: Vec<usize>,
    uncond: Vec<usize>,
}

impl Slots {
    fn of(images: Range<usize>, batch: usize, guided: bool) -> Self {
        let uncond = match guided {
            true => images.clone().map(|k| batch + k).collect(),
            false => Vec::new(),
        };
        Self {
            cond: images.collect(),
            uncond,
        }
    }

    /// Conditional then unconditional: the rows of both passes run as one batch.
    fn all(&self) -> Vec<usize> {
        [&self.cond[..], &self.uncond[..]].concat()
    }
}

/// Where one row of a pass stops.
#[derive(Debug, Clone)]
enum Stop {
    /// After exactly this many blocks.
    At(usize),
    /// Where its own exit rule says (or at the last block).
    Rule(ExitRule),
}

/// How the rows of one pass run.
struct Plan {
    stops: Vec<Stop>,
    /// The official rule on the batch-mean certainty (all rows `Stop::Rule`).
    batch_mean: bool,
    /// Skipped blocks contribute their cached contributions (and computed ones refresh them).
    fill: bool,
    /// The certainty heads the exit rule reads.
    heads: FillHeads,
}

/// A backbone with (optionally) its certainty heads.
#[derive(Debug, Clone)]
pub struct EarlyExit<B: Backbone = UVit> {
    model: B,
    heads: Option<CertaintyHeads>,
    /// The heads cache-filled exits decide with, when the model has them (else `heads`).
    filled: Option<CertaintyHeads>,
    /// What the `l2c` policy reuses.
    schedule: Option<ReuseSchedule>,
}

/// The U-ViT early-exit model every tool uses.
pub type EarlyExitUVit = EarlyExit<UVit>;

impl EarlyExit<UVit> {
    /// Loads a checkpoint (`.pth` or safetensors, see [`Checkpoint::load`]) with its
    /// `lte_classifer` heads and filled-exit heads when the file has them.
    pub fn load(
        path: impl AsRef<Path>,
        hints: &ConfigHints,
        device: &Device,
    ) -> deediff_unet::Result<Self> {
        let loaded = Checkpoint::load(path, hints, device)?;
        let build = |present: bool, make: fn(_, _) -> Result<CertaintyHeads>| {
            present
                .then(|| make(&loaded.config, loaded.vb.clone()))
                .transpose()
                .map_err(|e| deediff_unet::Error::CheckpointRead {
                    path: loaded.path.clone(),
                    reason: e.to_string(),
                })
        };
        let heads = build(loaded.has_certainty_heads, CertaintyHeads::new)?;
        let filled = build(loaded.has_filled_heads, CertaintyHeads::filled)?;
        let mut model = Self::new(loaded.model, heads);
        model.set_filled_heads(filled);
        Ok(model)
    }
}

impl<B: Backbone> EarlyExit<B> {
    /// `heads` is `None` for a plain backbone, which then runs only policies that need no heads.
    pub fn new(model: B, heads: Option<CertaintyHeads>) -> Self {
        Self {
            model,
            heads,
            filled: None,
            schedule: None,
        }
    }

    /// The heads `cached` exits decide with (`None`: they use the truncation heads).
    pub fn set_filled_heads(&mut self, heads: Option<CertaintyHeads>) {
        self.filled = heads;
    }

    pub fn filled_heads(&self) -> Option<&CertaintyHeads> {
        self.filled.as_ref()
    }

    /// The schedule the `l2c` policy follows (`None`: that policy is refused).
    pub fn set_reuse_schedule(&mut self, schedule: Option<ReuseSchedule>) -> Result<()> {
        if let Some(s) = &schedule {
            s.validate().map_err(candle_core::Error::msg)?;
            if s.blocks != self.model.num_blocks() {
                candle_core::bail!(
                    "reuse schedule: fitted for {} blocks, the model has {}",
                    s.blocks,
                    self.model.num_blocks()
                )
            }
        }
        self.schedule = schedule;
        Ok(())
    }

    pub fn reuse_schedule(&self) -> Option<&ReuseSchedule> {
        self.schedule.as_ref()
    }

    pub fn model(&self) -> &B {
        &self.model
    }

    pub fn heads(&self) -> Option<&CertaintyHeads> {
        self.heads.as_ref()
    }

    /// One stateless pass of `x [B,C,H,W]`, `t [B]`, `cond` under `policy` (a fresh
    /// [`RunState`]: cache policies run full depth, as at the first step of a run).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        policy: &ExitPolicy,
    ) -> Result<ExitOutput> {
        let passes = Passes {
            cond,
            guidance: None,
        };
        self.evaluate(&mut RunState::new(), x, t, &passes, policy)
    }

    /// One network evaluation of a run: every pass of `passes` under `policy`, the guided
    /// prediction and the exits of every pass (conditional first). Image `k`'s conditional pass
    /// keeps its cache in slot `k` of `state`, its unconditional pass in slot `B + k`. Runs on a
    /// rayon worker ([`deediff_unet::pool`]), the batch split into parts ([`Self::parts`]).
    pub fn evaluate(
        &self,
        state: &mut RunState,
        x: &Tensor,
        t: &Tensor,
        passes: &Passes,
        policy: &ExitPolicy,
    ) -> Result<ExitOutput> {
        policy.validate().map_err(candle_core::Error::msg)?;
        deediff_unet::pool::on_worker(|| {
            state.begin_evaluation();
            let b = x.dim(0)?;
            let out = match self.parts(state, x, policy)? {
                parts if parts.len() > 1 => {
                    self.evaluate_split(state, parts, x, t, passes, policy)?
                }
                _ => {
                    let slots = Slots::of(0..b, b, passes.guidance.is_some());
                    self.evaluate_part(state, &slots, x, t, passes, policy)?
                }
            };
            state.note_peak();
            Ok(out)
        })
    }

    /// The parts, run side by side, an evaluation splits its batch into: one per rayon thread on
    /// the CPU ([`deediff_unet::pool::part_ranges`]). Each block already runs its samples in one part per thread
    /// (`deediff_unet::block`), but the threads meet after every block, and the embed, the
    /// certainty heads, the exit bookkeeping and the output head in between run kernel by kernel
    /// on ever fewer rows as samples exit. Split per evaluation, the threads meet once, and a
    /// thread whose rows are done steals from the others' kernels (embedded model, batch 16, 2
    /// threads on a Zen 4 EPYC: full depth 14 % and per-sample exits 7–10 % faster). Not where a
    /// row's exit depends on the others (the batch-mean `official` rule) or where `state` records
    /// calibration data in batch order.
    fn parts(
        &self,
        state: &RunState,
        x: &Tensor,
        policy: &ExitPolicy,
    ) -> Result<Vec<Range<usize>>> {
        let b = x.dim(0)?;
        let independent = !matches!(policy, ExitPolicy::Official { .. }) && !state.is_recording();
        Ok(match x.device().is_cpu() && independent {
            true => deediff_unet::pool::part_ranges(b),
            false => std::iter::once(0..b).collect(),
        })
    }

    /// [`Self::evaluate_part`] on the rows of each of `parts` in parallel, each part with its
    /// slots of `state`, reassembled in batch order.
    fn evaluate_split(
        &self,
        state: &mut RunState,
        parts: Vec<Range<usize>>,
        x: &Tensor,
        t: &Tensor,
        passes: &Passes,
        policy: &ExitPolicy,
    ) -> Result<ExitOutput> {
        use rayon::prelude::*;
        let b = x.dim(0)?;
        let guided = passes.guidance.is_some();
        let n_parts = parts.len();
        let jobs: Vec<(Slots, RunState)> = parts
            .into_iter()
            .map(|rows| {
                let slots = Slots::of(rows, b, guided);
                let part = state.split_off(&slots.all());
                (slots, part)
            })
            .collect();
        let done: Vec<(Slots, RunState, Result<ExitOutput>)> = jobs
            .into_par_iter()
            .map(|(slots, mut part)| {
                let out = self.evaluate_rows(&mut part, &slots, x, t, passes, policy);
                (slots, part, out)
            })
            .collect();
        let (mut eps, mut cond, mut uncond) = (Vec::new(), Vec::new(), Vec::new());
        // Every part's caches go back before a part's error is passed on.
        let mut outs = Vec::with_capacity(n_parts);
        for (slots, part, out) in done {
            state.absorb(part, &slots.all());
            outs.push((slots.cond.len(), out));
        }
        for (n, out) in outs {
            let mut out = out?;
            eps.push(out.eps);
            uncond.extend(out.samples.split_off(n));
            cond.extend(out.samples);
        }
        cond.extend(uncond);
        Ok(ExitOutput {
            eps: Tensor::cat(&eps, 0)?,
            samples: cond,
        })
    }

    /// The images of `slots.cond` (positions in the whole batch `x`) through
    /// [`Self::evaluate_part`].
    fn evaluate_rows(
        &self,
        state: &mut RunState,
        slots: &Slots,
        x: &Tensor,
        t: &Tensor,
        passes: &Passes,
        policy: &ExitPolicy,
    ) -> Result<ExitOutput> {
        let (first, n) = (slots.cond[0], slots.cond.len());
        let cond = passes.cond.narrow(first, n)?;
        let uncond = match passes.guidance {
            Some(g) => Some(g.uncond.narrow(first, n)?),
            None => None,
        };
        let part = Passes {
            cond: &cond,
            guidance: passes
                .guidance
                .zip(uncond.as_ref())
                .map(|(g, uncond)| Guided { uncond, ..g }),
        };
        let (x, t) = (x.narrow(0, first, n)?, t.narrow(0, first, n)?);
        self.evaluate_part(state, slots, &x, &t, &part, policy)
    }

    /// Every pass of one evaluation for images whose caches are `slots`, combined (with
    /// guidance: both passes).
    fn evaluate_part(
        &self,
        state: &mut RunState,
        slots: &Slots,
        x: &Tensor,
        t: &Tensor,
        passes: &Passes,
        policy: &ExitPolicy,
    ) -> Result<ExitOutput> {
        let (cond, Some(g)) = (passes.cond, passes.guidance) else {
            return self.pass(state, &slots.cond, x, t, passes.cond, policy);
        };
        let b = x.dim(0)?;
        let shared = g.shared_exit
            && matches!(
                policy,
                ExitPolicy::Official { .. } | ExitPolicy::PerSample { .. }
            );
        let (eps_c, eps_u, samples) = if shared || matches!(policy, ExitPolicy::Official { .. }) {
            // Decisions that depend on another pass's rows: two passes.
            let c = self.pass(state, &slots.cond, x, t, cond, policy)?;
            let u = if shared {
                let depths: Vec<usize> = c.samples.iter().map(|e| e.blocks_executed).collect();
                self.at_depths(x, t, g.uncond, &depths)?
            } else {
                self.pass(state, &slots.uncond, x, t, g.uncond, policy)?
            };
            let mut samples = c.samples;
            samples.extend(u.samples);
            (c.eps, u.eps, samples)
        } else {
            // Every row decides on its own, so both passes share one batch.
            let both = cat_conditioning(cond, g.uncond)?;
            let x2 = Tensor::cat(&[x, x], 0)?;
            let t2 = Tensor::cat(&[t, t], 0)?;
            let out = self.pass(state, &slots.all(), &x2, &t2, &both, policy)?;
            (
                out.eps.narrow(0, 0, b)?,
                out.eps.narrow(0, b, b)?,
                out.samples,
            )
        };
        let eps = ((&eps_u * (1.0 - g.scale))? + (&eps_c * g.scale)?)?;
        Ok(ExitOutput { eps, samples })
    }

    /// Each row run to its own depth `depths[row]` (a shared exit's second pass).
    pub fn at_depths(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        depths: &[usize],
    ) -> Result<ExitOutput> {
        let plan = Plan {
            stops: depths.iter().map(|&k| Stop::At(k)).collect(),
            batch_mean: false,
            fill: false,
            heads: FillHeads::Truncation,
        };
        let slots: Vec<usize> = (0..depths.len()).collect();
        self.run_rows(&mut RunState::new(), &slots, x, t, cond, plan)
    }

    /// One pass of the rows whose caches are `slots` under `policy`.
    fn pass(
        &self,
        state: &mut RunState,
        slots: &[usize],
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        policy: &ExitPolicy,
    ) -> Result<ExitOutput> {
        if let Some(why) = self.unsupported(policy) {
            candle_core::bail!("policy {policy}: {why}")
        }
        let heads = deciding(policy);
        let n = self.model.num_blocks();
        let rows = slots.len();
        let (stops, batch_mean, fill) = match *policy {
            ExitPolicy::Full => (vec![Stop::At(n); rows], false, false),
            ExitPolicy::Static { blocks } => (vec![Stop::At(blocks.min(n)); rows], false, false),
            ExitPolicy::Official { threshold } | ExitPolicy::PerSample { threshold } => {
                let rule = Stop::Rule(self.model.exit_rule(threshold));
                let official = matches!(policy, ExitPolicy::Official { .. });
                (vec![rule; rows], official, false)
            }
            ExitPolicy::Cached {
                threshold, refresh, ..
            } => {
                let stops = slots
                    .iter()
                    .map(|&s| match state.since_full(s) {
                        Some(since) if since < refresh => {
                            Stop::Rule(self.model.exit_rule(threshold))
                        }
                        _ => Stop::At(n),
                    })
                    .collect();
                (stops, false, true)
            }
            ExitPolicy::DeepCache { interval, depth } => {
                return self.deep_cache(state, slots, x, t, cond, interval, depth)
            }
            ExitPolicy::Learned => return self.scheduled(state, slots, x, t, cond),
        };
        let plan = Plan {
            stops,
            batch_mean,
            fill,
            heads,
        };
        self.run_rows(state, slots, x, t, cond, plan)
    }

    /// The per-row exit loop. Rows that stop leave the running batch (the backbone's per-pass
    /// state is shrunk lazily, see [`Backbone::retain_rows`]); their hidden states wait and the
    /// output head runs once at the end for every row.
    fn run_rows(
        &self,
        state: &mut RunState,
        slots: &[usize],
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        mut plan: Plan,
    ) -> Result<ExitOutput> {
        let n = self.model.num_blocks();
        let b = slots.len();
        let mut scores: Vec<Vec<f32>> = vec![Vec::new(); b];
        // Per row: blocks run and the hidden state to decode.
        let mut exited: Vec<Option<(usize, Tensor)>> = vec![None; b];
        // `live[p]`: the row at position `p` of `h`.
        let mut live: Vec<usize> = (0..b).collect();
        let mut h = self.model.embed(x, t, cond)?;
        let mut pass = self.model.start_pass(b);
        for i in 0..n {
            let h_in = h;
            h = self.model.block(i, &h_in, &mut pass)?;
            if plan.fill && i + 1 < n {
                self.record_fills(state, slots, &live, i, &h)?;
            }
            // Block 0 always runs, so its contribution is never needed.
            if plan.fill && i > 0 {
                let rows: Vec<usize> = live.iter().map(|&r| slots[r]).collect();
                store_deltas(state, &rows, i, &h_in, &h)?;
            }
            let exiting = self.decide(i, &h, &live, &mut plan, &mut scores)?;
            let (out, keep): (Vec<usize>, Vec<usize>) = (0..live.len()).partition(|&p| exiting[p]);
            if out.len() == b && !plan.fill {
                // Every row stops here together: decode the batch as it is.
                let samples = (0..b).map(|r| self.exit_stats(0..i + 1, 0, &scores[r]));
                return Ok(ExitOutput {
                    eps: self.model.decode(&h)?,
                    samples: samples.collect(),
                });
            }
            for &p in &out {
                exited[live[p]] = Some((i + 1, h.narrow(0, p, 1)?));
            }
            if keep.is_empty() {
                break;
            }
            if !out.is_empty() {
                h = select_rows(&h, &keep)?;
                self.model.retain_rows(&mut pass, &keep);
                live = keep.iter().map(|&p| live[p]).collect();
            }
        }
        self.finish(state, slots, exited, scores, plan.fill)
    }

    /// When `state` records filled exits: the filled exit after block `i` of every row of `h`
    /// (rows `live` of the pass) whose cache has every later block, decoded.
    fn record_fills(
        &self,
        state: &mut RunState,
        slots: &[usize],
        live: &[usize],
        i: usize,
        h: &Tensor,
    ) -> Result<()> {
        if state.fill_records_mut().is_none() {
            return Ok(());
        }
        let n = self.model.num_blocks();
        let mut rows = Vec::new();
        let mut filled = Vec::new();
        for (p, &r) in live.iter().enumerate() {
            if let Some(f) = state.fill(slots[r], i + 1, n)? {
                let h_row = h.narrow(0, p, 1)?;
                filled.push((&h_row + f)?);
                rows.push((r, h_row.force_contiguous()?));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let eps = self.model.decode(&Tensor::cat(&filled, 0)?)?;
        let e = state.evaluation();
        if let Some(records) = state.fill_records_mut() {
            for (k, (r, input)) in rows.into_iter().enumerate() {
                records.push_pending((i, slots[r], e, r), input, eps.narrow(0, k, 1)?);
            }
        }
        Ok(())
    }

    /// Why this model cannot run `policy`, if it cannot: a threshold policy on a model without
    /// the heads it decides with, `l2c` without a reuse schedule. The sampler asks before a run,
    /// the driver again before every pass.
    pub fn unsupported(&self, policy: &ExitPolicy) -> Option<String> {
        if policy.needs_heads() && self.deciding_heads(deciding(policy)).is_none() {
            return Some(
                "this model has no certainty heads (lte_classifer.*): use full, static:K or deepcache:N"
                    .into(),
            );
        }
        if *policy == ExitPolicy::Learned && self.schedule.is_none() {
            return Some("no reuse schedule was set (fit one with `calibrate l2c`)".into());
        }
        None
    }

    /// The heads an exit rule reading `heads` decides with (`None`: the model has none).
    fn deciding_heads(&self, heads: FillHeads) -> Option<&CertaintyHeads> {
        match heads {
            FillHeads::Filled => self.filled.as_ref().or(self.heads.as_ref()),
            FillHeads::Truncation => self.heads.as_ref(),
        }
    }

    /// The exit decisions after block `i` for the rows `live` of `h`.
    fn decide(
        &self,
        i: usize,
        h: &Tensor,
        live: &[usize],
        plan: &mut Plan,
        scores: &mut [Vec<f32>],
    ) -> Result<Vec<bool>> {
        let last = i + 1 == self.model.num_blocks();
        let reads_heads = !last && live.iter().any(|&r| matches!(plan.stops[r], Stop::Rule(_)));
        let mut means = match (self.deciding_heads(plan.heads), reads_heads) {
            (Some(heads), true) => heads.sample_means(i, h)?.to_vec1::<f32>()?,
            _ => Vec::new(),
        };
        if plan.batch_mean && !means.is_empty() {
            let m = means.iter().sum::<f32>() / means.len() as f32;
            means.iter_mut().for_each(|v| *v = m);
        }
        Ok(live
            .iter()
            .enumerate()
            .map(|(p, &r)| match &mut plan.stops[r] {
                Stop::At(k) => last || i + 1 == *k,
                Stop::Rule(_) if last => true,
                Stop::Rule(rule) => {
                    scores[r].push(means[p]);
                    rule.exits(i, means[p])
                }
            })
            .collect())
    }

    /// Fills the rows that stopped early (under a cache policy), then one output head call.
    fn finish(
        &self,
        state: &mut RunState,
        slots: &[usize],
        exited: Vec<Option<(usize, Tensor)>>,
        scores: Vec<Vec<f32>>,
        fill: bool,
    ) -> Result<ExitOutput> {
        let n = self.model.num_blocks();
        let mut hidden = Vec::with_capacity(exited.len());
        let mut samples = Vec::with_capacity(exited.len());
        for (r, (e, sc)) in exited.into_iter().zip(scores).enumerate() {
            let (blocks, h) = e.ok_or_else(|| candle_core::Error::msg("a row never stopped"))?;
            let slot = slots[r];
            let mut reused = 0;
            let h = match (fill, blocks == n) {
                (true, true) => {
                    state.mark_full(slot);
                    h
                }
                (true, false) => {
                    let f = state.fill(slot, blocks, n)?.ok_or_else(|| {
                        candle_core::Error::msg("a cached exit found no cached contribution")
                    })?;
                    reused = n - blocks;
                    (h + f)?
                }
                (false, _) => h,
            };
            if let (true, Some(&c)) = (fill, sc.last()) {
                state.push_certainty(slot, c);
            }
            hidden.push(h);
            samples.push(self.exit_stats(0..blocks, reused, &sc));
        }
        let eps = self.model.decode(&Tensor::cat(&hidden, 0)?)?;
        if let Some(records) = state.fill_records_mut() {
            records.complete(&eps)?;
        }
        Ok(ExitOutput { eps, samples })
    }

    /// DeepCache: full passes every `interval` evaluations; in between the first `depth` blocks,
    /// the cached input of block `N − depth`, and the last `depth` blocks.
    #[allow(clippy::too_many_arguments)]
    fn deep_cache(
        &self,
        state: &mut RunState,
        slots: &[usize],
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        interval: usize,
        depth: usize,
    ) -> Result<ExitOutput> {
        let n = self.model.num_blocks();
        let resume = n.saturating_sub(depth);
        let partial = depth < resume
            && !state.evaluation().is_multiple_of(interval)
            && slots.iter().all(|&s| state.deep(s).is_some());
        let mut h = self.model.embed(x, t, cond)?;
        let mut pass = self.model.start_pass(slots.len());
        let mut run = |i: usize, h: &Tensor| self.model.block(i, h, &mut pass);
        if partial {
            for i in 0..depth {
                h = run(i, &h)?;
            }
            let deep: Vec<Tensor> = slots
                .iter()
                .filter_map(|&s| state.deep(s).cloned())
                .collect();
            h = Tensor::cat(&deep, 0)?;
        } else {
            for i in 0..resume {
                h = run(i, &h)?;
            }
            for (p, &s) in slots.iter().enumerate() {
                state.set_deep(s, h.narrow(0, p, 1)?.force_contiguous()?);
            }
        }
        for i in resume..n {
            h = run(i, &h)?;
        }
        let stats = if partial {
            self.exit_stats((0..depth).chain(resume..n), resume - depth, &[])
        } else {
            self.exit_stats(0..n, 0, &[])
        };
        Ok(ExitOutput {
            eps: self.model.decode(&h)?,
            samples: vec![stats; slots.len()],
        })
    }

    /// `l2c`: every block runs or, where the schedule says, adds its cached contribution
    /// (the same choice for every row).
    fn scheduled(
        &self,
        state: &mut RunState,
        slots: &[usize],
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
    ) -> Result<ExitOutput> {
        let schedule = self.schedule.as_ref().ok_or_else(|| {
            candle_core::Error::msg(self.unsupported(&ExitPolicy::Learned).unwrap_or_default())
        })?;
        let e = state.evaluation();
        let mut h = self.model.embed(x, t, cond)?;
        let mut pass = self.model.start_pass(slots.len());
        let mut ran = Vec::new();
        for j in 0..self.model.num_blocks() {
            let cached: Option<Vec<Tensor>> = schedule
                .reuses(e, j)
                .then(|| slots.iter().map(|&s| state.delta(s, j).cloned()).collect())
                .flatten();
            match cached {
                Some(d) => {
                    h = (h + Tensor::cat(&d, 0)?)?;
                    self.model.reuse_block(j, &h, &mut pass);
                }
                None => {
                    let h_in = h;
                    h = self.model.block(j, &h_in, &mut pass)?;
                    store_deltas(state, slots, j, &h_in, &h)?;
                    ran.push(j);
                }
            }
        }
        let stats = self.exit_stats(
            ran.iter().copied(),
            self.model.num_blocks() - ran.len(),
            &[],
        );
        Ok(ExitOutput {
            eps: self.model.decode(&h)?,
            samples: vec![stats; slots.len()],
        })
    }

    /// A pass's statistics: the blocks `ran`, `reused` stood in for by caches, one certainty
    /// head per score.
    fn exit_stats(
        &self,
        ran: impl Iterator<Item = usize>,
        reused: usize,
        scores: &[f32],
    ) -> SampleExit {
        let macs = self.model.macs();
        let (mut blocks, mut last, mut run) = (0, 0, 0);
        for j in ran {
            blocks += 1;
            last = j;
            run += macs.blocks[j];
        }
        SampleExit {
            exit_block: last,
            blocks_executed: blocks,
            scores: scores.to_vec(),
            reused_blocks: reused,
            macs: macs.embed + run + macs.decode + scores.len() as u64 * macs.certainty_head,
            full_depth_macs: macs.full_depth(),
        }
    }
}

/// The head set `policy`'s exit rule reads (the truncation heads unless a cached policy says).
fn deciding(policy: &ExitPolicy) -> FillHeads {
    match *policy {
        ExitPolicy::Cached { heads, .. } => heads,
        _ => FillHeads::Truncation,
    }
}

/// Stores block `j`'s contribution `h − h_in` of every row (row `p` belongs to `slots[p]`).
fn store_deltas(
    state: &mut RunState,
    slots: &[usize],
    j: usize,
    h_in: &Tensor,
    h: &Tensor,
) -> Result<()> {
    for (p, &s) in slots.iter().enumerate() {
        state.set_delta(s, j, (h.narrow(0, p, 1)? - h_in.narrow(0, p, 1)?)?)?;
    }
    Ok(())
}

/// Rows `rows` of a batch-major tensor.
fn select_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    t.index_select(&Tensor::new(idx, t.device())?, 0)
}

/// `[a; b]` along the batch: conditional and unconditional passes in one network call.
fn cat_conditioning(a: &Conditioning, b: &Conditioning) -> Result<Conditioning> {
    Ok(match (a, b) {
        (Conditioning::None, Conditioning::None) => Conditioning::None,
        (Conditioning::Class(x), Conditioning::Class(y)) => {
            Conditioning::Class(Tensor::cat(&[x, y], 0)?)
        }
        (Conditioning::Context(x), Conditioning::Context(y)) => {
            Conditioning::Context(Tensor::cat(&[x, y], 0)?)
        }
        _ => candle_core::bail!("conditional and unconditional batches differ in kind"),
    })
}
