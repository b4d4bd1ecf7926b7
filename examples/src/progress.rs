//! indicatif progress bars for sampling: position, rate, ETA and the mean exit depth so far.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `unit`s (model evaluations or images) with the mean depth as its message.
pub struct EvalBar {
    bar: ProgressBar,
}

impl EvalBar {
    pub fn new(len: u64, unit: &str) -> Self {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        Self { bar }
    }

    /// Per-evaluation update from a pipeline run.
    pub fn update(&self, p: &deediff_sampler::Progress) {
        self.update_from(0, p);
    }

    /// Per-evaluation update from a run that follows `offset` evaluations of earlier batches.
    pub fn update_from(&self, offset: u64, p: &deediff_sampler::Progress) {
        self.bar.set_position(offset + p.eval as u64);
        self.bar
            .set_message(format!("mean depth {:.2} blocks", p.mean_blocks));
    }

    /// Per-batch update: `done` units so far, mean depth over the run.
    pub fn set(&self, done: u64, mean_blocks: f64) {
        self.bar.set_position(done);
        self.bar
            .set_message(format!("mean depth {mean_blocks:.2} blocks"));
    }

    pub fn finish(&self) {
        self.bar.finish();
    }
}
