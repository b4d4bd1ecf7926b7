//! `--device cpu|cuda[:N]`: parsing and opening the compute device, shared by `fid` and the
//! sampling tools (deediff-examples uses it too, so there is one parser and one set of messages).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// A device named on the command line, not yet opened (parsing must not touch a GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// CUDA device ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a device: expected cpu, cuda or cuda:N");
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The `--device` flag, flattened into every tool's arguments (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArg {
    /// Compute device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

impl DeviceArg {
    pub fn open(&self) -> Result<Device> {
        self.device.open()
    }
}

impl DeviceSpec {
    /// Opens the device. CUDA fails with one line when the binary was built without the `cuda`
    /// feature (candle then has no CUDA backend at all) or when no GPU answers at that ordinal.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(_) if !candle_core::utils::cuda_is_available() => Err(Error::Invalid(
                "--device cuda: this binary was built without CUDA support: rebuild with \
                     --features cuda"
                    .into(),
            )),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                let cause = crate::error::without_backtrace(&e.to_string()).replace('\n', " ");
                Error::Invalid(format!("--device {self}: no usable CUDA GPU ({cause})"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceSpec;

    #[test]
    fn parses_cpu_and_cuda_ordinals_and_rejects_the_rest() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in [
            "", "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda0", "cpu:0",
        ] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(
                err.contains("expected cpu, cuda or cuda:N"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_opens_and_cuda_needs_the_feature() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert_eq!(
                err,
                "--device cuda: this binary was built without CUDA support: rebuild with \
                 --features cuda"
            );
        }
    }
}
