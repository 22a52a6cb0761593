//! Loading: sharded checkpoints, the hub cache layout (offline), bf16 checkpoints and
//! fail-fast errors on config/weights mismatches.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use foundry_idefics2::hub::{resolve, ModelSource};
use foundry_idefics2::{Error, Idefics2};

fn copy_dir(src: &Path, dst: &Path, skip_weights: bool) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if skip_weights && name.to_string_lossy().ends_with(".safetensors") {
            continue;
        }
        std::fs::copy(e.path(), dst.join(name)).unwrap();
    }
}

fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("tiny/model.safetensors"), &Device::Cpu).unwrap()
}

fn reference_logits(model: &Idefics2) -> Tensor {
    let g = golden("tiny");
    model
        .forward(
            &ids_u32(&g["gen0.input_ids"]),
            Some(&g["gen0.pixel_values"]),
            Some(&g["gen0.pixel_attention_mask"]),
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn write_model(
    map: &HashMap<String, Tensor>,
    config_patch: Option<(&str, serde_json::Value)>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny"), dir.path(), true);
    candle_core::safetensors::save(map, dir.path().join("model.safetensors")).unwrap();
    if let Some((k, v)) = config_patch {
        let p = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg[k] = v;
        std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    }
    dir
}

#[test]
fn sharded_checkpoint_loads_identically() {
    let map = tensors();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny"), dir.path(), true);
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut index = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let sub: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), map[*n].clone()))
            .collect();
        candle_core::safetensors::save(&sub, dir.path().join(shard)).unwrap();
        for n in part {
            index.insert((*n).clone(), shard.into());
        }
    }
    let idx = serde_json::json!({"metadata": {}, "weight_map": index});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        idx.to_string(),
    )
    .unwrap();
    let sharded = Idefics2::load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let single = Idefics2::load_dir(&fixtures().join("tiny"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&reference_logits(&sharded), &reference_logits(&single)),
        0.0
    );
}

#[test]
fn missing_tensor_is_named() {
    let mut map = tensors();
    map.remove("model.text_model.layers.1.mlp.up_proj.weight");
    let dir = write_model(&map, None);
    let err = Idefics2::load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor(n) if n == "model.text_model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let mut map = tensors();
    map.insert(
        "model.connector.perceiver_resampler.latents".into(),
        Tensor::zeros((7, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = write_model(&map, None);
    let err = Idefics2::load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, expected, found }
            if name == "model.connector.perceiver_resampler.latents" && expected == &[8, 64] && found == &[7, 64]),
        "{err}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let mut map = tensors();
    let name = "model.vision_model.post_layernorm.bias";
    map.insert(name.into(), map[name].to_dtype(DType::F16).unwrap());
    let dir = write_model(&map, None);
    let err = Idefics2::load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::DtypeMismatch { name: n, .. } if n == name),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_an_error() {
    let mut map = tensors();
    map.insert(
        "model.text_model.layers.9.mlp.up_proj.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = write_model(&map, None);
    let err = Idefics2::load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("layers.9"), "{err}");
}

#[test]
fn bf16_checkpoint_loads_and_f32_file_under_bf16_config_fails() {
    let map: HashMap<String, Tensor> = tensors()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap()))
        .collect();
    let dir = write_model(&map, Some(("dtype", "bfloat16".into())));
    let m = Idefics2::load_dir(dir.path(), DType::BF16, &Device::Cpu).unwrap();
    let l = reference_logits(&m);
    assert_eq!(l.dtype(), DType::BF16);
    // The same bf16 file is also usable in f32.
    let m32 = Idefics2::load_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let d = max_abs_diff(&reference_logits(&m32), &reference_logits(&load_tiny()));
    println!("bf16-rounded weights vs f32 weights: max abs logit diff {d}");
    let dir = write_model(&tensors(), Some(("dtype", "bfloat16".into())));
    let err = Idefics2::load_dir(dir.path(), DType::BF16, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::DtypeMismatch { .. }), "{err}");
}

fn load_tiny() -> Idefics2 {
    Idefics2::load_dir(&fixtures().join("tiny"), DType::F32, &Device::Cpu).unwrap()
}

/// Builds `models--ORG--NAME/{refs/main, snapshots/<sha>/..., blobs/}` like huggingface_hub.
fn fake_hub_cache(root: &Path, sha: &str) {
    let repo = root.join("models--foundry-test--idefics2-tiny");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for (i, e) in std::fs::read_dir(fixtures().join("tiny"))
        .unwrap()
        .enumerate()
    {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("golden") {
            continue;
        }
        let blob = blobs.join(format!("{:064x}", i + 1));
        std::fs::copy(e.path(), &blob).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(format!("../../blobs/{:064x}", i + 1), snap.join(&name))
            .unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, snap.join(&name)).unwrap();
    }
}

#[test]
fn hub_cache_resolves_offline_at_a_pinned_revision() {
    let cache = tempfile::tempdir().unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    fake_hub_cache(cache.path(), sha);
    for revision in [sha, "main"] {
        let src = ModelSource::Hub {
            repo_id: "foundry-test/idefics2-tiny".into(),
            revision: revision.into(),
            cache_dir: Some(cache.path().to_path_buf()),
            offline: true,
        };
        let dir = resolve(&src).unwrap();
        assert!(
            dir.ends_with(format!("snapshots/{sha}")),
            "{}",
            dir.display()
        );
        let m = Idefics2::load_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        let d = max_abs_diff(&reference_logits(&m), &golden("tiny")["gen0.prompt_logits"]);
        assert!(d < 1e-4);
        foundry_idefics2::processor::Processor::from_dir(&dir).unwrap();
    }
    // A revision that is not in the cache fails without touching the network.
    let src = ModelSource::Hub {
        repo_id: "foundry-test/idefics2-tiny".into(),
        revision: "ffffffffffffffffffffffffffffffffffffffff".into(),
        cache_dir: Some(cache.path().to_path_buf()),
        offline: true,
    };
    let err = resolve(&src).unwrap_err();
    assert!(matches!(err, Error::Hub(_)), "{err}");
}
