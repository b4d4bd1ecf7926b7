//! U-ViT denoisers in candle: official U-ViT / AdaDiff checkpoints load by their tensor names.
//!
//! [`UVit`] exposes the forward pass block by block (`embed` → `block(i)` … → `decode`), which
//! both the trainer and the early-exit driver in `deediff-uem` build on.

pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod embedding;
pub mod kernels;
pub mod layers;
pub mod macs;
pub mod text_encoder;
pub mod uvit;

pub use checkpoint::{Checkpoint, CheckpointError, ConfigHints, LoadedUVit};
pub use config::{UVitConfig, Variant};
pub use macs::MacCounts;
pub use uvit::{Conditioning, UVit};
