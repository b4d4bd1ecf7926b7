//! Command-line front doors (`txt2img`, `generate`, `train`) and library examples, on top of the
//! deediff crates. The shared pieces live here so each binary stays a short `main`.

pub mod cli;
pub mod progress;

use std::path::Path;

/// Writes `path` atomically: `write` fills a temporary file beside it, which is then renamed
/// over `path`, so a killed job never leaves a half-written output.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write(&tmp).and_then(|()| Ok(std::fs::rename(&tmp, path)?));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Ends a command-line tool: on error, prints one line (the error and its causes, outermost
/// first) and exits with status 1.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
