//! Tells the tests whether Hugging Face `datasets` (with Pillow) is importable by `python3`:
//! `has_hf_datasets`, so the test that loads written Parquet shards with it runs where it can
//! and shows as ignored, not passed, elsewhere. `tools/test.sh` installs it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_hf_datasets)");
    println!("cargo::rerun-if-changed=build.rs");
    let found = std::process::Command::new("python3")
        .args(["-c", "import datasets, PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        println!("cargo::rustc-cfg=has_hf_datasets");
    }
}
