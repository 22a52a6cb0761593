//! Run-time choice of the CPU's vector width for the hand-written loops.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so that one binary runs everywhere. The hot
//! element-wise and small-rank loops are written once as plain Rust and instantiated twice by
//! [`vectorized`]: as is, and inside a `#[target_feature(enable = "avx512f,…")]` wrapper that
//! LLVM vectorizes with AVX-512. Which one runs is decided per call from a cached CPUID check.
//! Neither copy uses fused multiply-adds, so both round identically.

/// What this CPU (and, for AMX, the kernel) lets the hand-written kernels use: the one probe,
/// run once per process, that every kernel asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// AVX-512F/BW/VL, AVX2 and FMA: the wide copy of each [`vectorized`] loop.
    pub avx512: bool,
    /// AVX-512F/BW and AVX512-BF16: the bf16 products (`vdpbf16ps`).
    pub avx512_bf16: bool,
    /// AMX-BF16 and AMX-TILE, with Linux's permission for this process to use the tile
    /// registers (`tdpbf16ps`).
    pub amx_bf16: bool,
}

/// The CPU's features, probed on first use.
pub fn features() -> Features {
    static FEATURES: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
    *FEATURES.get_or_init(probe)
}

#[cfg(target_arch = "x86_64")]
fn probe() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx512f_bw = has!("avx512f") && has!("avx512bw");
    Features {
        avx512: avx512f_bw && has!("avx512vl") && has!("avx2") && has!("fma"),
        avx512_bf16: avx512f_bw && has!("avx512bf16"),
        amx_bf16: amx_permitted(),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn probe() -> Features {
    Features::default()
}

/// CPUID.(EAX=7, ECX=0):EDX bit 22 (AMX-BF16) and bit 24 (AMX-TILE), then
/// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): the kernel enables the 8 KiB tile
/// state for this process (all its threads) or refuses.
#[cfg(target_arch = "x86_64")]
fn amx_permitted() -> bool {
    #[cfg(target_os = "linux")]
    {
        let id = std::arch::x86_64::__cpuid_count(7, 0);
        let cpu = (id.edx >> 22) & 1 == 1 && (id.edx >> 24) & 1 == 1;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments; it changes no memory of ours.
        cpu && unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Whether this CPU has AVX-512F/BW/VL, AVX2 and FMA (the wide copy of each loop).
pub fn has_avx512() -> bool {
    features().avx512
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
