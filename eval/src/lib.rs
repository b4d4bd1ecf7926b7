//! FID/KID evaluation: pytorch-fid-exact InceptionV3 features, statistics and the Fréchet distance.
//!
//! Pipeline: images → [`FidInception`] features (`--dims` 64/192/768/2048) → [`Stats`]
//! (mean and ddof-1 covariance in f64, or mergeable [`Moments`]) → [`frechet_distance`].
//! Statistics files are pytorch-fid `.npz` (`mu`, `sigma`), readable by both tools.

pub mod conv;
pub mod error;
pub mod fmap;
pub mod frechet;
pub mod hashinit;
pub mod images;
pub mod import;
pub mod inception;
pub mod kid;
pub mod npz;
pub mod resize;
pub mod stats;
pub mod weights;

pub use error::{FidError, Result};
pub use frechet::frechet_distance;
pub use import::import_weights;
pub use inception::{block_for_dims, ChwImage, Features, FidInception, BLOCK_DIMS};
pub use kid::{kid, Kid, KidOptions};
pub use stats::{Moments, Stats};
