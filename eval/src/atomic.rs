//! Checked, atomic file writes, shared by every tool that writes results (images, statistics,
//! reports, checkpoints).
//!
//! Encoders that write through a `BufWriter` and let it drop lose the error of the final flush:
//! on a full disk they "succeed" with an empty or truncated file. Here the buffer is flushed and
//! the file synced before it is renamed over the target, so an error always reaches the caller
//! and the previous file stays untouched until the new one is complete on disk.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Writes `path` through `write`, which fills a buffered temporary file in the same folder; the
/// file is flushed, synced and renamed over `path` only when everything succeeded (else removed).
/// An existing path that is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written
/// in place: renaming over it would replace the device node itself, which as root breaks every
/// later `>/dev/null` on the machine. The error is the bare cause; callers name the file.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let meta = std::fs::metadata(path);
    if meta.as_ref().is_ok_and(|m| m.is_dir()) || path.as_os_str().to_string_lossy().ends_with('/')
    {
        return Err(io::Error::other("is a folder; give a file name"));
    }
    if meta.is_ok_and(|m| !m.is_file()) {
        let mut w = BufWriter::new(std::fs::OpenOptions::new().write(true).open(path)?);
        write(&mut w)?;
        return w.into_inner().map_err(|e| e.into_error()).map(drop);
    }
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself reaches the disk with the folder's metadata.
        if let Ok(dir) = File::open(folder_of(path)) {
            dir.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.NAME.tmp-PID` beside `path`: same file system (so the rename is atomic), hidden from
/// image-folder listings, distinct per process (shards may share a folder).
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a file path"))?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A writer that reports its first error once and then swallows everything: writers such as
/// `zip::ZipWriter` finalise again when dropped after an error and print their own second,
/// misleading message ("failed to finalize archive") unless later writes succeed.
pub struct FirstError<W> {
    inner: W,
    failed: bool,
}

impl<W> FirstError<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            failed: false,
        }
    }

    /// `op` on the inner writer until something failed, `ok` (pretended success) after.
    fn guard<T>(&mut self, ok: T, op: impl FnOnce(&mut W) -> io::Result<T>) -> io::Result<T> {
        if self.failed {
            return Ok(ok);
        }
        let r = op(&mut self.inner);
        self.failed = r.is_err();
        r
    }
}

impl<W: Write> Write for FirstError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.guard(buf.len(), |w| w.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.guard((), Write::flush)
    }
}

impl<W: Seek> Seek for FirstError<W> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.guard(0, |w| w.seek(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::write_atomic;
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;

    /// A regular file is replaced whole; a failed write leaves it untouched and no temporary
    /// behind; a FIFO (standing in for `/dev/null`) is written through and survives as a FIFO.
    #[test]
    fn atomic_writes_replace_files_but_not_special_files() {
        let dir = std::env::temp_dir().join(format!("deediff-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("out.txt");
        std::fs::write(&file, "old contents, longer").unwrap();
        write_atomic(&file, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        let err = write_atomic(&file, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let folder = write_atomic(&dir, |w| w.write_all(b"x")).unwrap_err();
        assert!(folder.to_string().contains("is a folder"), "{folder}");

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
        write_atomic(&fifo, |w| w.write_all(b"through")).unwrap();
        // Checked before joining: had the FIFO been renamed over, its reader would never return.
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(reader.join().unwrap(), "through");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `/dev/full` fails with the disk-full cause instead of succeeding silently.
    #[test]
    fn a_full_device_is_an_error() {
        let err = write_atomic(std::path::Path::new("/dev/full"), |w| {
            w.write_all(&[0; 100])
        })
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }
}
