//! Run-time choice of the CPU's vector width for the hand-written loops.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so that one binary runs everywhere. The hot
//! element-wise and small-rank loops are written once as plain Rust and instantiated twice by
//! [`vectorized`]: as is, and inside a `#[target_feature(enable = "avx512f,…")]` wrapper that
//! LLVM vectorizes with AVX-512. Which one runs is decided per call from a cached CPUID check.
//! Neither copy uses fused multiply-adds, so both round identically.

/// Whether this CPU has AVX-512F/BW/VL, AVX2 and FMA (the wide copy of each loop).
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a function whose body is compiled twice, for baseline x86-64 and for AVX-512, and
/// which runs the AVX-512 copy when [`has_avx512`] is true. The body must be safe code.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::cpu::has_avx512() {
                    // SAFETY: the CPU has every feature `wide` is compiled for (checked above).
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use vectorized;
