//! The sampling pipeline: a scheduler, a U-ViT and an exit policy composed into images.
