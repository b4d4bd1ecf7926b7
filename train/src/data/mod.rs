//! Training data: image sets read from common on-disk formats, held in memory as `[-1, 1]` pixels,
//! and captions generated from labels for text-to-image training.

pub mod captions;
pub mod cifar;
pub mod dataset;
pub mod folder;
pub mod idx;
pub mod mnist_json;

pub(crate) use crate::error::Error;
pub use captions::{Captioner, Captions, Concept, CONCEPTS};
pub use dataset::ImageDataset;
