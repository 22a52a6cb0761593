//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running Idefics2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading a file failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("invalid json in {path}: {source}")]
    Json {
        /// The file that could not be parsed.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A safetensors file could not be parsed.
    #[error("invalid safetensors file {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A tensor named by the model is not in the weights.
    #[error("missing tensor `{0}` in the weights")]
    MissingTensor(String),
    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype other than the checkpoint declares.
    #[error("tensor `{name}` has dtype {found}, expected {expected}")]
    DtypeMismatch {
        /// Tensor name.
        name: String,
        /// Expected dtype.
        expected: String,
        /// Dtype found in the file.
        found: String,
    },
    /// Tensors in the weights that the model does not use.
    #[error("unexpected tensors in the weights (first few): {0:?}")]
    UnexpectedTensors(Vec<String>),
    /// The configuration is invalid or unsupported.
    #[error("config: {0}")]
    Config(String),
    /// Invalid input to a forward pass, the processor or generation.
    #[error("input: {0}")]
    Input(String),
    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Image decoding failure.
    #[error("image {path}: {message}")]
    Image {
        /// The image file (or `<memory>`).
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The hub client failed (including a cache miss in offline mode).
    #[error("hub: {0}")]
    Hub(String),
    /// A LoRA target or adapter problem.
    #[error("lora: {0}")]
    Lora(String),
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
