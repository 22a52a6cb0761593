//! Strict safetensors loading: every tensor the model asks for must exist with the
//! shape the config implies and the dtype the checkpoint declares.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A set of safetensors files (one file or the shards of an index) opened lazily by mmap.
pub struct Weights {
    st: MmapedSafetensors,
    names: BTreeSet<String>,
    dtype: DType,
    file_dtype: Option<DType>,
    device: Device,
    used: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("tensors", &self.names.len())
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards
/// named by `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return shard_files(&index, |f| inside(dir, f));
    }
    Err(Error::Config(format!(
        "no model.safetensors or model.safetensors.index.json in {}",
        dir.display()
    )))
}

/// `dir/name` if `name` stays inside `dir`: relative, without `..`, and not
/// a link that leads out. An index is input like any other file.
pub fn inside(dir: &Path, name: &str) -> Result<PathBuf> {
    let out = || {
        Error::Config(format!(
            "{}: the index names {name:?}, which leads outside the model directory",
            dir.display()
        ))
    };
    let rel = Path::new(name);
    if name.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(out());
    }
    let p = dir.join(rel);
    if let (Ok(d), Ok(f)) = (dir.canonicalize(), p.canonicalize()) {
        if !f.starts_with(&d) {
            return Err(out());
        }
    }
    Ok(p)
}

/// The distinct shard file names of a `model.safetensors.index.json`, resolved by `resolve`.
pub fn shard_files(
    index: &Path,
    mut resolve: impl FnMut(&str) -> Result<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config(format!("{} has no weight_map", index.display())))?;
    let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    files.into_iter().map(&mut resolve).collect()
}

/// Parses a dtype name as written in config.json (`float32`, `bfloat16`, ...).
pub fn parse_dtype(name: &str) -> Option<DType> {
    match name.trim_start_matches("torch.") {
        "float32" | "f32" => Some(DType::F32),
        "bfloat16" | "bf16" => Some(DType::BF16),
        "float16" | "f16" => Some(DType::F16),
        _ => None,
    }
}

impl Weights {
    /// Opens `files`; tensors are converted to `dtype` on load. When `file_dtype` is
    /// given, every tensor in the files must have that dtype.
    pub fn open(
        files: &[PathBuf],
        dtype: DType,
        file_dtype: Option<DType>,
        device: &Device,
    ) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; as everywhere with mmap, they
        // must not be truncated while the model is being loaded.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::Safetensors {
            path: files.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            st,
            names,
            dtype,
            file_dtype,
            device: device.clone(),
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// The compute dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a tensor named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Loads `name`, checking its shape against `shape` and its dtype against the checkpoint's.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if !self.names.contains(name) {
            return Err(Error::MissingTensor(name.to_string()));
        }
        let view = self
            .st
            .get(name)
            .map_err(|_| Error::MissingTensor(name.to_string()))?;
        if view.shape() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let found: DType = view.dtype().try_into().map_err(|_| Error::DtypeMismatch {
            name: name.to_string(),
            expected: format!("{:?}", self.file_dtype.unwrap_or(self.dtype)),
            found: format!("{:?}", view.dtype()),
        })?;
        let ok = match self.file_dtype {
            Some(d) => d == found,
            None => found.is_float(),
        };
        if !ok {
            return Err(Error::DtypeMismatch {
                name: name.to_string(),
                expected: format!("{:?}", self.file_dtype.unwrap_or(self.dtype)),
                found: format!("{found:?}"),
            });
        }
        let t = self.st.load(name, &self.device)?.to_dtype(self.dtype)?;
        if let Ok(mut u) = self.used.lock() {
            u.insert(name.to_string());
        }
        Ok(t)
    }

    /// Names present in the files that no `get` has asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.names
            .iter()
            .filter(|n| !used.contains(*n))
            .cloned()
            .collect()
    }
}

/// Writes `tensors` to a safetensors file with `{"format": "pt"}` metadata (as PyTorch does).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(tensors.iter(), Some(meta), path).map_err(|e| {
        Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}
