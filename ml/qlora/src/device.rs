//! Device and compute-dtype selection, failing fast: a run that asks for CUDA on a build or a
//! machine without it stops at once with a one-line reason instead of silently using the CPU.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Whether this build has the CUDA backend (`--features cuda`).
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// Parses a device spec: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`. Returns the CUDA ordinal, or
/// `None` for the CPU.
pub fn parse_device(spec: &str) -> Result<Option<usize>> {
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(0)),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map(Some).map_err(|_| {
                Error::Device(format!("bad device `{spec}`: expected cpu, cuda or cuda:N"))
            }),
            None => Err(Error::Device(format!(
                "bad device `{spec}`: expected cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// Opens the device named by `spec` (see [`parse_device`]). Asking for CUDA in a build without
/// the `cuda` feature, or on a machine without that GPU, is an error naming the device.
pub fn select_device(spec: &str) -> Result<Device> {
    match parse_device(spec)? {
        None => Ok(Device::Cpu),
        Some(n) => {
            if !CUDA_COMPILED {
                return Err(Error::Device(format!(
                    "`{spec}` requested but this build has no CUDA support (rebuild with --features cuda)"
                )));
            }
            Device::new_cuda(n).map_err(|e| {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("").trim();
                Error::Device(format!("`{spec}` requested but not available: {first}"))
            })
        }
    }
}

/// The compute dtype on `device`: `requested` if given and supported there, otherwise f32 on
/// the CPU and bf16 on devices that support it. bf16 tensors on the CPU are refused (the fast CPU
/// kernels are f32 and candle's CPU bf16 GEMM is slow); bf16 *products* with f32 activations are
/// a per-linear setting instead (`SeamLinear::set_products`).
pub fn compute_dtype(device: &Device, requested: Option<DType>) -> Result<DType> {
    match requested {
        None => Ok(if device.supports_bf16() {
            DType::BF16
        } else {
            DType::F32
        }),
        Some(DType::F32) => Ok(DType::F32),
        Some(DType::BF16) if device.supports_bf16() => Ok(DType::BF16),
        Some(DType::F16) if !device.is_cpu() => Ok(DType::F16),
        Some(d) => Err(Error::Device(format!(
            "compute dtype {d:?} is not supported on {}",
            device_name(device)
        ))),
    }
}

/// A short name of a device for messages and events (`cpu`, `cuda:N`, `metal`).
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse_device("cpu").unwrap(), None);
        assert_eq!(parse_device(" CUDA ").unwrap(), Some(0));
        assert_eq!(parse_device("cuda:3").unwrap(), Some(3));
        for bad in ["cuda:x", "tpu", "", "cuda:-1"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
        }
    }

    #[test]
    fn cpu_is_f32_and_refuses_bf16() {
        let d = select_device("cpu").unwrap();
        assert!(d.is_cpu());
        assert_eq!(compute_dtype(&d, None).unwrap(), DType::F32);
        assert_eq!(compute_dtype(&d, Some(DType::F32)).unwrap(), DType::F32);
        let e = compute_dtype(&d, Some(DType::BF16))
            .unwrap_err()
            .to_string();
        assert!(e.contains("BF16") && e.contains("cpu"), "{e}");
        assert_eq!(device_name(&d), "cpu");
    }

    #[test]
    #[cfg_attr(feature = "cuda", ignore = "needs a build without the cuda feature")]
    fn cuda_absent_fails_fast_with_one_line() {
        for spec in ["cuda", "cuda:0", "cuda:7"] {
            let e = select_device(spec).unwrap_err().to_string();
            assert!(!e.contains('\n'), "one line: {e}");
            assert!(e.contains(spec), "{e}");
            if !CUDA_COMPILED {
                assert!(e.contains("--features cuda"), "{e}");
            }
        }
    }
}
