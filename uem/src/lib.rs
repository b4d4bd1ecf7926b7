//! Uncertainty estimation modules (certainty heads), exit policies, DeeDiff losses and the trainer.
