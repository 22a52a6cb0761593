//! The launcher app: a Python file for the `modal` CLI, rendered from the
//! template in `templates/launcher.py`.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{ModalError, Result};

/// The template, as committed.
pub const TEMPLATE: &str = include_str!("../templates/launcher.py");

/// Everything a launcher is rendered from.
#[derive(Debug, Clone, Serialize)]
pub struct LauncherSpec {
    /// The run it trains.
    pub run_id: String,
    /// Modal app name (recipe `backend.app_name`).
    pub app_name: String,
    /// GPU type (recipe `backend.gpu`).
    pub gpu: String,
    /// Per-attempt timeout in seconds (recipe `backend.timeout_s`).
    pub timeout_s: i64,
    /// Retries after a failed, preempted or timed-out attempt (recipe `backend.retries`).
    pub retries: i64,
    /// The device `ledger runner train` uses in the container (`cuda`).
    pub device: String,
    /// The local `ledger` binary put into the image (a `--features cuda` build).
    pub ledger_binary: String,
    /// The local ledger snapshot put into the image.
    pub bundle: String,
    /// The container's key file (a run-scoped, expiring trainer key the
    /// dispatcher registered), put into the image.
    pub key_file: String,
    /// Volume for run work, checkpoints and the outbox (recipe `backend.checkpoint_volume`).
    pub checkpoint_volume: String,
    /// Volume the pinned datasets and base models are staged in (recipe `backend.data_volume`).
    pub data_volume: String,
    /// Volume mounted as the HF cache.
    pub hf_cache_volume: String,
    /// Modal secrets attached by name (HF token, NATS credentials).
    pub secrets: Vec<String>,
    /// NATS URL the container tries first; empty for outbox only.
    pub nats_url: String,
}

/// Modal object names (the same rule `recipe declare` applies).
fn check_name(what: &str, v: &str) -> Result<()> {
    foundry_recipes::limits::check_modal_name(v)
        .map_err(|m| ModalError::Invalid(format!("{what} {m}")))
}

/// A Python string literal of `s` (JSON strings are valid Python literals).
fn py_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl LauncherSpec {
    /// Checks what Modal would refuse later, with a clear message now.
    pub fn validate(&self) -> Result<()> {
        check_name("app name", &self.app_name)?;
        check_name("checkpoint volume", &self.checkpoint_volume)?;
        check_name("data volume", &self.data_volume)?;
        check_name("HF cache volume", &self.hf_cache_volume)?;
        for s in &self.secrets {
            check_name("secret", s)?;
        }
        foundry_recipes::limits::check_modal_gpu(&self.gpu)
            .map_err(|m| ModalError::Invalid(format!("backend.gpu {m}")))?;
        if !(0..=10).contains(&self.retries) {
            return Err(ModalError::Invalid(format!(
                "backend.retries must be in 0..=10 (Modal's limit), got {}",
                self.retries
            )));
        }
        if self.timeout_s < 1 {
            return Err(ModalError::Invalid(format!(
                "backend.timeout_s must be at least 1, got {}",
                self.timeout_s
            )));
        }
        if !matches!(self.device.as_str(), "cuda" | "cpu") {
            return Err(ModalError::Invalid(format!(
                "container device {:?}: cuda or cpu",
                self.device
            )));
        }
        Ok(())
    }

    /// The launcher's Python source.
    pub fn render(&self) -> Result<String> {
        self.validate()?;
        let secrets = format!(
            "[{}]",
            self.secrets
                .iter()
                .map(|s| py_str(s))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let run_text: String = self
            .run_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let values: [(&str, String); 15] = [
            ("RUN_ID_TEXT", run_text),
            ("RUN_ID", py_str(&self.run_id)),
            ("APP_NAME", py_str(&self.app_name)),
            ("GPU", py_str(&self.gpu)),
            ("TIMEOUT_S", self.timeout_s.to_string()),
            ("RETRIES", self.retries.to_string()),
            ("DEVICE", py_str(&self.device)),
            ("LEDGER_BINARY", py_str(&self.ledger_binary)),
            ("BUNDLE", py_str(&self.bundle)),
            ("KEY_FILE", py_str(&self.key_file)),
            ("CHECKPOINT_VOLUME", py_str(&self.checkpoint_volume)),
            ("DATA_VOLUME", py_str(&self.data_volume)),
            ("HF_CACHE_VOLUME", py_str(&self.hf_cache_volume)),
            ("SECRETS", secrets),
            ("NATS_URL", py_str(&self.nats_url)),
        ];
        // One pass over the template: a value is written once and never
        // read again, so no value can bring in a placeholder of its own.
        let mut out = String::with_capacity(TEMPLATE.len() + 512);
        let mut rest = TEMPLATE;
        while let Some(at) = rest.find("{{") {
            out.push_str(&rest[..at]);
            let tail = &rest[at + 2..];
            let Some(end) = tail.find("}}") else {
                return Err(ModalError::Invalid(
                    "launcher template: a placeholder is not closed".into(),
                ));
            };
            let name = &tail[..end];
            let Some((_, v)) = values.iter().find(|(k, _)| *k == name) else {
                return Err(ModalError::Invalid(format!(
                    "launcher template: placeholder {{{{{name}}}}} has no value"
                )));
            };
            out.push_str(v);
            rest = &tail[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> LauncherSpec {
        LauncherSpec {
            run_id: "0190abcd".into(),
            app_name: "foundry".into(),
            gpu: "H100".into(),
            timeout_s: 3600,
            retries: 2,
            device: "cuda".into(),
            ledger_binary: "/opt/ledger \"cuda\"".into(),
            bundle: "/tmp/b.foundry".into(),
            checkpoint_volume: "foundry-checkpoints".into(),
            data_volume: "foundry-data".into(),
            hf_cache_volume: "foundry-hf-cache".into(),
            secrets: vec!["hf-token".into(), "nats-creds".into()],
            nats_url: String::new(),
            key_file: "/work/container.nk".into(),
        }
    }

    #[test]
    fn renders_every_placeholder_with_python_literals() {
        let src = spec().render().unwrap();
        assert!(!src.contains("{{"), "{src}");
        assert!(src.contains("RUN_ID = \"0190abcd\""));
        assert!(src.contains("GPU = \"H100\""));
        assert!(src.contains("TIMEOUT_S = 3600"));
        assert!(src.contains("RETRIES = 2"));
        assert!(src.contains("SECRETS = [\"hf-token\", \"nats-creds\"]"));
        // Quotes in a path are escaped, not closing the literal.
        assert!(src.contains(r#"LEDGER_BINARY = "/opt/ledger \"cuda\"""#));
        // Deterministic: same spec, same bytes (its sha256 is recorded).
        assert_eq!(
            sha256_hex(src.as_bytes()),
            sha256_hex(spec().render().unwrap().as_bytes())
        );
    }

    #[test]
    fn values_render_once_as_literals_and_bring_in_no_code_or_placeholders() {
        let mut s = spec();
        s.nats_url = "{{GPU}}\" + __import__('os').system('x') + \"{{RUN_ID}}".into();
        s.bundle = "/tmp/{{KEY_FILE}}\n".into();
        let src = s.render().unwrap();
        assert!(
            src.contains(r#"NATS_URL = "{{GPU}}\" + __import__('os').system('x') + \"{{RUN_ID}}""#)
        );
        assert!(src.contains(r#"BUNDLE = "/tmp/{{KEY_FILE}}\n""#));
        // Exactly the template's placeholders were replaced, nothing else.
        assert_eq!(src.matches("{{").count(), 3, "{src}");
        let mut s = spec();
        s.gpu = "A{{DEVICE}}B".into();
        let e = s.render().unwrap_err().to_string();
        assert!(e.contains("a Modal GPU is"), "{e}");
    }

    #[test]
    fn refuses_what_modal_would_refuse() {
        let mut s = spec();
        s.checkpoint_volume = "bad volume".into();
        let e = s.render().unwrap_err().to_string();
        assert!(e.contains("checkpoint volume \"bad volume\""), "{e}");
        let mut s = spec();
        s.retries = 11;
        assert!(s.render().unwrap_err().to_string().contains("0..=10"));
        let mut s = spec();
        s.gpu = " ".into();
        assert!(s.render().unwrap_err().to_string().contains("backend.gpu"));
    }
}
