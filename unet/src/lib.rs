//! U-ViT denoisers in candle: official U-ViT / AdaDiff checkpoints load by their tensor names.
