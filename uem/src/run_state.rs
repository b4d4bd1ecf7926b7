//! Per-run state of the early-exit driver: what each sample keeps between the evaluations of one
//! sampling run (cached block contributions, when each was taken, its certainty history).
//!
//! A pipeline creates one [`RunState`] per run and hands it to every evaluation; the state lives
//! exactly as long as the run (dropping or [`RunState::release`] frees every cached tensor).
//! Memory is bounded per sample and guidance pass: one `[S, D]` tensor per block plus one for
//! DeepCache, whatever the number of steps.

use candle_core::{Result, Tensor};

use crate::fill_record::FillRecords;

/// One sample in one guidance pass: its slot is `pass · B + sample`.
#[derive(Debug, Default)]
struct Slot {
    /// `deltas[j]`: block `j`'s latest contribution `output − input` `[1, S, D]`.
    deltas: Vec<Option<Tensor>>,
    /// The evaluation each of `deltas` was taken at.
    taken_at: Vec<usize>,
    /// DeepCache: the feature entering the first out-block run at partial passes, from the last
    /// full pass.
    deep: Option<Tensor>,
    /// The last evaluation that ran every block.
    last_full: Option<usize>,
    /// Mean certainty at the block the sample stopped at, per evaluation that read the heads.
    certainty: Vec<f32>,
}

impl Slot {
    fn bytes(&self) -> usize {
        let tensor = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.deltas.iter().flatten().map(tensor).sum::<usize>()
            + self.deep.as_ref().map_or(0, tensor)
    }
}

/// The state of one sampling run, shared by all its evaluations.
#[derive(Debug, Default)]
pub struct RunState {
    slots: Vec<Slot>,
    /// Evaluations begun (the current one is `evals − 1`).
    evals: usize,
    peak_bytes: usize,
    /// When recording: per evaluation and block, the summed relative change of the block's
    /// contribution since the previous evaluation, and how many samples were summed.
    changes: Option<Vec<Vec<(f64, usize)>>>,
    /// When recording filled exits: every one seen so far (see [`FillRecords`]).
    fills: Option<FillRecords>,
}

impl RunState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A state that also records how much every block's contribution changes from one
    /// evaluation to the next (calibration runs for [`crate::ReuseSchedule::fit`]).
    pub fn recording() -> Self {
        Self {
            changes: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// A state that also records the filled exit every cached full-depth pass could have taken
    /// after each block (calibration runs for the filled-exit heads).
    pub fn recording_fills() -> Self {
        Self {
            fills: Some(FillRecords::default()),
            ..Self::default()
        }
    }

    /// The filled exits recorded so far (`None` unless made by [`Self::recording_fills`]).
    pub fn take_fill_records(&mut self) -> Option<FillRecords> {
        self.fills.take()
    }

    pub(crate) fn fill_records_mut(&mut self) -> Option<&mut FillRecords> {
        self.fills.as_mut()
    }

    /// The recorded mean relative change per evaluation (every one begun) and block of a
    /// `blocks`-block network; 0 where nothing was seen (evaluation 0, blocks never rerun).
    pub fn changes(&self, blocks: usize) -> Vec<Vec<f64>> {
        let rows = self.changes.as_deref().unwrap_or_default();
        (0..self.evals)
            .map(|e| {
                let row = rows.get(e).map_or(&[][..], Vec::as_slice);
                (0..blocks)
                    .map(|j| row.get(j).map_or(0.0, |&(s, n)| s / n.max(1) as f64))
                    .collect()
            })
            .collect()
    }

    /// Marks the start of the next network evaluation (all guidance passes of one step).
    pub fn begin_evaluation(&mut self) {
        self.evals += 1;
    }

    /// Index of the current evaluation (0 before and during the first).
    pub fn evaluation(&self) -> usize {
        self.evals.saturating_sub(1)
    }

    /// Bytes of cached tensors held now.
    pub fn bytes(&self) -> usize {
        self.slots.iter().map(Slot::bytes).sum()
    }

    /// The most bytes held at the end of any evaluation so far.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// Frees every cached tensor (the run is over); the peak stays readable.
    pub fn release(&mut self) {
        self.slots.clear();
    }

    /// The mean certainty each evaluation's exit decision saw for `slot`.
    pub fn certainty_history(&self, slot: usize) -> &[f32] {
        self.slots.get(slot).map_or(&[], |s| &s.certainty)
    }

    /// The evaluation block `block`'s cached contribution for `slot` was taken at.
    pub fn taken_at(&self, slot: usize, block: usize) -> Option<usize> {
        let s = self.slots.get(slot)?;
        s.deltas.get(block)?.as_ref()?;
        s.taken_at.get(block).copied()
    }

    fn slot_mut(&mut self, slot: usize) -> &mut Slot {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, Slot::default);
        }
        &mut self.slots[slot]
    }

    /// Whether this state records calibration data (contribution changes or filled exits),
    /// which follows the batch's order and so cannot be split across threads.
    pub(crate) fn is_recording(&self) -> bool {
        self.changes.is_some() || self.fills.is_some()
    }

    /// The caches of `slots` moved into a state of their own at the same evaluation, for a part
    /// of the batch run on another thread; [`Self::absorb`] moves them back.
    pub(crate) fn split_off(&mut self, slots: &[usize]) -> RunState {
        let mut part = RunState {
            evals: self.evals,
            ..Self::default()
        };
        for &s in slots {
            if let Some(slot) = self.slots.get_mut(s) {
                *part.slot_mut(s) = std::mem::take(slot);
            }
        }
        part
    }

    /// Takes back the caches of `slots` from a part made by [`Self::split_off`].
    pub(crate) fn absorb(&mut self, mut part: RunState, slots: &[usize]) {
        for &s in slots {
            if let Some(slot) = part.slots.get_mut(s) {
                *self.slot_mut(s) = std::mem::take(slot);
            }
        }
    }

    pub(crate) fn note_peak(&mut self) {
        self.peak_bytes = self.peak_bytes.max(self.bytes());
    }

    /// Evaluations since `slot` last ran every block (`None`: never).
    pub(crate) fn since_full(&self, slot: usize) -> Option<usize> {
        let last = self.slots.get(slot)?.last_full?;
        Some(self.evaluation() - last)
    }

    pub(crate) fn mark_full(&mut self, slot: usize) {
        let now = self.evaluation();
        self.slot_mut(slot).last_full = Some(now);
    }

    pub(crate) fn push_certainty(&mut self, slot: usize, c: f32) {
        self.slot_mut(slot).certainty.push(c);
    }

    /// Stores block `block`'s contribution `delta [1, S, D]` (an owned tensor) for `slot`.
    pub(crate) fn set_delta(&mut self, slot: usize, block: usize, delta: Tensor) -> Result<()> {
        let now = self.evaluation();
        let previous = match (&self.changes, self.delta(slot, block)) {
            (Some(_), Some(old)) if self.taken_at(slot, block) == Some(now.wrapping_sub(1)) => {
                let norm = |t: &Tensor| -> Result<f64> {
                    Ok(f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt())
                };
                Some(norm(&(&delta - old)?)? / norm(&delta)?.max(f64::MIN_POSITIVE))
            }
            _ => None,
        };
        if let (Some(changes), Some(c)) = (self.changes.as_mut(), previous) {
            if changes.len() <= now {
                changes.resize(now + 1, Vec::new());
            }
            let row = &mut changes[now];
            if row.len() <= block {
                row.resize(block + 1, (0.0, 0));
            }
            row[block].0 += c;
            row[block].1 += 1;
        }
        let s = self.slot_mut(slot);
        if s.deltas.len() <= block {
            s.deltas.resize(block + 1, None);
            s.taken_at.resize(block + 1, 0);
        }
        s.deltas[block] = Some(delta);
        s.taken_at[block] = now;
        Ok(())
    }

    pub(crate) fn delta(&self, slot: usize, block: usize) -> Option<&Tensor> {
        self.slots.get(slot)?.deltas.get(block)?.as_ref()
    }

    /// The summed cached contributions of blocks `from..to` for `slot`, or `None` if one is
    /// missing.
    pub(crate) fn fill(&self, slot: usize, from: usize, to: usize) -> Result<Option<Tensor>> {
        let Some(s) = self.slots.get(slot) else {
            return Ok(None);
        };
        let mut sum: Option<Tensor> = None;
        for j in from..to {
            let Some(Some(d)) = s.deltas.get(j) else {
                return Ok(None);
            };
            sum = Some(match sum {
                None => d.clone(),
                Some(acc) => (acc + d)?,
            });
        }
        Ok(sum)
    }

    pub(crate) fn deep(&self, slot: usize) -> Option<&Tensor> {
        self.slots.get(slot)?.deep.as_ref()
    }

    pub(crate) fn set_deep(&mut self, slot: usize, h: Tensor) {
        self.slot_mut(slot).deep = Some(h);
    }
}
