//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in quantization, adapters, training and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model crate failed.
    #[error("model: {0}")]
    Model(#[from] foundry_idefics2::Error),
    /// Reading or writing a file failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON document could not be parsed or written.
    #[error("json in {what}: {message}")]
    Json {
        /// What was being parsed.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// A quantized tensor is malformed or unsupported.
    #[error("quantization: {0}")]
    Quant(String),
    /// A LoRA configuration or adapter problem.
    #[error("lora: {0}")]
    Lora(String),
    /// A training configuration or data problem.
    #[error("train: {0}")]
    Train(String),
    /// A checkpoint is missing, malformed or does not fit the run.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The requested device or compute dtype is absent or unsupported.
    #[error("device: {0}")]
    Device(String),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
