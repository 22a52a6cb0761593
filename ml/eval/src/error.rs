//! Error type of the crate.

/// Everything that can go wrong while evaluating. Bad *model output* is never an error:
/// it is scored (as invalid JSON or wrong fields).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model or processor failed to load or run.
    #[error("model: {0}")]
    Model(#[from] foundry_idefics2::Error),
    /// The adapter could not be attached.
    #[error("adapter: {0}")]
    Adapter(#[from] foundry_qlora::Error),
    /// An example or argument is malformed (names what and where).
    #[error("input: {0}")]
    Input(String),
    /// The eval spec is inconsistent.
    #[error("eval spec: {0}")]
    Spec(String),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, EvalError>;
