//! U-ViT denoisers in candle: official U-ViT / AdaDiff checkpoints load by their tensor names.
//! Latent models come with the networks around them: the Stable Diffusion autoencoder's decoder
//! ([`LatentDecoder`]) and published text encoders ([`PretrainedText`]), found by
//! [`pretrained::resolve`].
//!
//! [`UVit`] exposes the forward pass block by block (`embed` → `block(i)` … → `decode`), which
//! both the trainer and the early-exit driver in `deediff-uem` build on.

pub mod alloc;
pub mod amx;
pub mod attention;
pub mod autoencoder;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod embedding;
mod error;
mod flash;
pub mod isa;
pub mod kernels;
pub mod layers;
pub mod macs;
pub mod matmul;
pub mod model_file;
pub mod narrow;
pub mod panels;
pub mod pool;
pub mod pretrained;
pub mod pretrained_text;
mod rowops;
pub mod text_encoder;
pub mod uvit;

pub use autoencoder::LatentDecoder;
pub use checkpoint::{Checkpoint, ConfigHints, LoadedUVit};
pub use config::{UVitConfig, Variant};
pub use deediff_eval::error::one_line;
pub use error::{Error, Result};
pub use macs::MacCounts;
pub use pretrained_text::{PretrainedText, Tokens};
pub use uvit::{Conditioning, UVit};
