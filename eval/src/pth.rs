//! PyTorch `.pth` state dicts (a zip holding a pickle) read with candle's reader, so that a
//! damaged file is one error line. Two things in that reader get in the way:
//!
//! * it panics on some damaged pickles (an overflow on a LONG1 of more than 8 bytes in debug
//!   builds, an out-of-range `Vec::remove` in `rebuild_args`);
//! * it prints a report to stderr (with a backtrace under `RUST_BACKTRACE`) for every state-dict
//!   entry it cannot read and leaves the entry out: one flipped byte in a storage class printed
//!   one report per tensor before the error about the missing tensors.
//!
//! So the entries are read first with candle's own pickle objects (the first bad one is the error,
//! by name), and the reader runs under a silent panic hook.

use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::Tensor;

use crate::error::one_line;

/// The tensors of `path`, read lazily; errors are one line without the path.
pub fn open(path: &Path) -> Result<PthTensors, String> {
    quietly(|| {
        check_entries(path)?;
        PthTensors::new(path, None).map_err(|e| one_line(&e))
    })
    .ok_or_else(|| "malformed PyTorch pickle".to_string())?
}

/// Every tensor of `path`, by name.
pub fn read_all(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let pth = open(path)?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let label = name.escape_debug();
            let t = quietly(|| pth.get(name))
                .ok_or_else(|| format!("tensor {label}: malformed"))?
                .map_err(|e| format!("tensor {label}: {}", one_line(&e)))?
                .ok_or_else(|| format!("tensor {label}: not found"))?;
            Ok((name.clone(), t))
        })
        .collect()
}

/// Reads every state-dict entry the way candle's reader will, and fails on the first it cannot.
fn check_entries(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let names = zip.file_names().collect::<Result<Vec<_>, _>>();
    let pickles: Vec<String> = names
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|f| f.ends_with("data.pkl"))
        .map(String::from)
        .collect();
    for name in pickles {
        let dir = PathBuf::from(name.trim_end_matches(".pkl"));
        let entry = zip.by_name(&name).map_err(|e| e.to_string())?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::BufReader::new(entry))
            .map_err(|e| one_line(&e))?;
        let Object::Dict(entries) = state_dict(stack.finalize().map_err(|e| one_line(&e))?) else {
            continue;
        };
        for (key, value) in entries {
            let label = match &key {
                Object::Unicode(k) => k.escape_debug().to_string(),
                other => format!("{other:?}"),
            };
            value
                .into_tensor_info(key, &dir)
                .map_err(|e| format!("tensor {label}: {}", one_line(&e)))?;
        }
    }
    Ok(())
}

/// The state dict of a pickle: the object itself, or the arguments of a TorchScript
/// `__torch__.Module` (as candle reads them); `None` for anything else.
fn state_dict(obj: Object) -> Object {
    match obj {
        Object::Build { callable, args } => match *callable {
            Object::Reduce { callable, .. }
                if matches!(&*callable, Object::Class { module_name, class_name }
                    if module_name == "__torch__" && class_name == "Module") =>
            {
                *args
            }
            _ => Object::None,
        },
        obj => obj,
    }
}

/// `f()`, or `None` if it panicked, without the panic's message: a user who gave a damaged file
/// gets one line naming it, not a "thread panicked at …" report from inside candle first. The
/// panic hook is process-wide, so it is swapped under a lock (two loaders cannot leave the
/// silent one behind), and a panic on another thread during `f` goes unreported.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _swap = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    out.ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Panics of this test that reached the installed hook (other tests' panics not counted).
    static SEEN: AtomicUsize = AtomicUsize::new(0);

    /// A panic inside `quietly` is `None` and reaches no hook; the hook installed before it is
    /// back afterwards.
    #[test]
    fn quietly_swallows_a_panic_and_restores_the_hook() {
        std::panic::set_hook(Box::new(|info| {
            if info.payload().downcast_ref::<&str>() == Some(&"quietly-test") {
                SEEN.fetch_add(1, Ordering::SeqCst);
            }
        }));
        assert_eq!(super::quietly(|| 7), Some(7));
        assert_eq!(super::quietly(|| -> i32 { panic!("quietly-test") }), None);
        assert_eq!(SEEN.load(Ordering::SeqCst), 0, "the panic reached the hook");
        let _ = std::panic::catch_unwind(|| panic!("quietly-test"));
        let _ = std::panic::take_hook();
        assert_eq!(SEEN.load(Ordering::SeqCst), 1, "the hook was not restored");
    }
}
