//! Command-line front doors (`txt2img`, `generate`, `train`) and library examples, on top of the
//! deediff crates. The shared pieces live here so each binary stays a short `main`.

pub mod cli;
pub mod progress;

use std::path::Path;

/// Writes `path` atomically: `write` fills a temporary file beside it, which is then renamed
/// over `path`, so a killed job never leaves a half-written output. An existing path that is not
/// a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written in place: renaming over it would
/// replace the device node itself, which as root breaks every later `>/dev/null` on the machine.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return write(path);
    }
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

#[cfg(test)]
mod tests {
    use super::write_atomic;
    use std::os::unix::fs::FileTypeExt;

    /// A regular file is replaced whole; a FIFO (standing in for `/dev/null`) is written through
    /// and survives as a FIFO.
    #[test]
    fn atomic_writes_replace_files_but_not_special_files() {
        let dir = std::env::temp_dir().join(format!("deediff-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("out.txt");
        std::fs::write(&file, "old contents, longer").unwrap();
        write_atomic(&file, |tmp| Ok(std::fs::write(tmp, "new")?)).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");

        let fifo = dir.join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        write_atomic(&fifo, |path| Ok(std::fs::write(path, "through")?)).unwrap();
        // Checked before joining: had the FIFO been renamed over, its reader would never return.
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(reader.join().unwrap(), "through");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
