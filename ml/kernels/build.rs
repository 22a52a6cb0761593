//! Tells the tests which CPU they will run on: `host_avx512bf16` when the
//! building machine has AVX512-F, -BW and -BF16 (native builds test where
//! they build), so tests that need those instructions are marked ignored,
//! not passed, elsewhere.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(host_avx512bf16)");
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
        {
            println!("cargo::rustc-cfg=host_avx512bf16");
        }
    }
}
