//! The one list of schedulers. A solver file declares a [`Registration`] — its named presets
//! and the diffusers config class it reads, if any — next to its settings ([`SolverConfig`])
//! and step logic; adding a scheduler is that file plus its line in the `solvers!` list of
//! `lib.rs`, which declares the module and registers it.
//!
//! [`SolverConfig`]: crate::SolverConfig

use crate::betas::BetaConfig;
use crate::config::Reader;
use crate::error::Result;
use crate::scheduler::SchedulerConfig;
use crate::REGISTRY;

/// Declares the solver modules and collects their registrations into `REGISTRY`, in order:
/// one line per solver.
macro_rules! solvers {
    ($($module:ident,)*) => {
        $(mod $module;)*
        /// Every solver's registration; presets are listed in this order.
        const REGISTRY: &[registry::Registration] = &[$($module::REGISTRATION,)*];
    };
}

/// A named preset: the solver's settings for a model trained with `betas` and ε-prediction.
pub(crate) struct Preset {
    pub name: &'static str,
    pub build: fn(BetaConfig) -> Result<SchedulerConfig>,
}

/// A diffusers scheduler class a solver reads from `scheduler_config.json`.
pub(crate) struct DiffusersClass {
    /// `_class_name`.
    pub name: &'static str,
    /// Accepted fields beyond [`crate::config::COMMON`] (groups, so shared lists are reused).
    pub fields: &'static [&'static [&'static str]],
    /// Settings from the parsed fields; an error is a message for the config's origin.
    pub read: fn(&Reader) -> Result<SchedulerConfig, String>,
}

/// Everything the crate knows about one solver beyond its type.
pub(crate) struct Registration {
    pub presets: &'static [Preset],
    pub diffusers: Option<DiffusersClass>,
}

const fn preset_count() -> usize {
    let (mut n, mut i) = (0, 0);
    while i < REGISTRY.len() {
        n += REGISTRY[i].presets.len();
        i += 1;
    }
    n
}

/// The preset names in registry order, gathered at compile time so the list is a constant.
const NAMES: [&str; preset_count()] = {
    let mut out = [""; preset_count()];
    let (mut i, mut k) = (0, 0);
    while i < REGISTRY.len() {
        let mut j = 0;
        while j < REGISTRY[i].presets.len() {
            out[k] = REGISTRY[i].presets[j].name;
            (j, k) = (j + 1, k + 1);
        }
        i += 1;
    }
    out
};

/// Names accepted by [`SchedulerConfig::by_name`].
pub const SCHEDULER_NAMES: &[&str] = &NAMES;

/// Every preset, in registry order.
pub(crate) fn presets() -> impl Iterator<Item = &'static Preset> {
    REGISTRY.iter().flat_map(|r| r.presets)
}

/// Every diffusers class a solver reads.
pub(crate) fn diffusers_classes() -> impl Iterator<Item = &'static DiffusersClass> {
    REGISTRY.iter().filter_map(|r| r.diffusers.as_ref())
}
