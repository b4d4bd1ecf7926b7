//! Classifier-free guidance.

/// Guidance settings. `scale` follows diffusers (`ε = ε_u + g·(ε_c − ε_u)`, 1 = off); U-ViT's
/// configs write `s` with `ε = (1+s)·ε_c − s·ε_u`, i.e. `g = 1 + s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    pub scale: f64,
    /// Let the unconditional pass stop where the conditional pass of the same image stopped,
    /// instead of deciding on its own certainty as the official code does.
    pub shared_exit: bool,
}

impl Default for Guidance {
    fn default() -> Self {
        Self {
            scale: 1.0,
            shared_exit: false,
        }
    }
}

impl Guidance {
    /// From U-ViT's scale `s` (`cfg_scale` in its configs).
    pub fn from_uvit_scale(s: f64) -> Self {
        Self {
            scale: 1.0 + s,
            ..Self::default()
        }
    }

    /// Whether an unconditional pass is needed at all.
    pub fn is_active(&self) -> bool {
        self.scale != 1.0
    }
}
