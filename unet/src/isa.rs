//! The vector instruction set the CPU kernels use, chosen once per process at run time.
//!
//! The workspace is never built with `target-cpu=native`: the same binary runs on AVX2-only AMD
//! EPYCs and on Intel Xeons with full-width AVX-512, so every hot kernel is compiled for each
//! level and picks one here. `DEEDIFF_ISA=avx2|generic` caps the choice (read once), which is how
//! the tests check the fallback paths on a CPU that has the faster one.

use std::sync::OnceLock;

/// Environment variable that caps [`isa`]: `avx512`, `avx2` or `generic`.
pub const ISA_ENV: &str = "DEEDIFF_ISA";

/// Instruction-set levels, ordered from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline x86-64 (SSE2) or any other architecture.
    Generic,
    /// AVX2 + FMA (256-bit).
    Avx2,
    /// AVX-512 F (512-bit), with AVX2 + FMA.
    Avx512,
}

impl Isa {
    /// The spelling `DEEDIFF_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        [Isa::Generic, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .find(|i| i.name() == s.trim().to_ascii_lowercase())
    }
}

/// The best level this CPU supports.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

/// The level every kernel of this process uses: [`detected`], capped by `DEEDIFF_ISA`. An
/// unknown value is reported once on stderr and ignored (a library cannot exit the process).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detected();
        match std::env::var(ISA_ENV) {
            Err(_) => best,
            Ok(v) => match Isa::parse(&v) {
                Some(cap) => cap.min(best),
                None => {
                    eprintln!(
                        "warning: {ISA_ENV}={v:?} is not one of avx512, avx2, generic; using {}",
                        best.name()
                    );
                    best
                }
            },
        }
    })
}

/// Compiles `$body` three times — baseline x86-64, AVX2+FMA and AVX-512 — and runs the one
/// [`isa`] selects. The bodies are plain loops written to auto-vectorise, so each copy gets the
/// vector width of its target.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                match $crate::isa::isa() {
                    // SAFETY: `isa()` returns a level only when the CPU supports its features.
                    $crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Isa::Generic => {}
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels_and_orders_them() {
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse(" generic "), Some(Isa::Generic));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("sse4"), None);
        assert!(Isa::Generic < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(isa() <= detected());
    }
}
