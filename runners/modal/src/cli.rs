//! The `modal` command line, the only interface Modal offers besides Python.
//! Every call is an argv that can be printed (`--dry-run`) or recorded
//! (ModalJobSubmitted), run with a time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{ModalError, Result};

/// How to call the `modal` executable.
#[derive(Debug, Clone)]
pub struct ModalCli {
    /// The executable (`modal`, found on PATH, unless FOUNDRY_MODAL_BIN says otherwise).
    pub bin: PathBuf,
    /// Longest any one call may take.
    pub timeout: Duration,
    /// Extra environment for every call (e.g. `MODAL_PROFILE`, `MODAL_ENVIRONMENT`).
    pub env: Vec<(String, String)>,
}

/// What a finished call printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// The last `n` non-empty lines of stdout and stderr together.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .chain(self.stderr.lines())
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }
}

/// A submitted job, as `modal run --detach` reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The app id (`ap-…`).
    pub app_id: String,
    /// The function call id the launcher's entrypoint printed (`fc-…`).
    pub function_call_id: String,
}

/// Finds the first `prefix` + `[A-Za-z0-9]+` token in `text`.
fn find_id(text: &str, prefix: &str) -> Option<String> {
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let at = from + i;
        let before_ok = at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric();
        let rest: String = text[at + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if before_ok && !rest.is_empty() {
            return Some(format!("{prefix}{rest}"));
        }
        from = at + prefix.len();
    }
    None
}

/// Parses `modal run --detach` output: the app id from "View run at …/ap-…"
/// and the call id from the launcher's `FOUNDRY_FUNCTION_CALL_ID=` line.
pub fn parse_submission(out: &Output) -> Result<Submission> {
    let all = format!("{}\n{}", out.stdout, out.stderr);
    let app_id = find_id(&all, "ap-").ok_or_else(|| {
        ModalError::Cli(format!(
            "modal run printed no app id (ap-…): {}",
            out.tail(3)
        ))
    })?;
    let function_call_id = all
        .lines()
        .find_map(|l| l.trim().strip_prefix("FOUNDRY_FUNCTION_CALL_ID="))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ModalError::Cli(format!(
                "the launcher printed no FOUNDRY_FUNCTION_CALL_ID: {}",
                out.tail(3)
            ))
        })?;
    Ok(Submission {
        app_id,
        function_call_id,
    })
}

impl ModalCli {
    /// `modal` from FOUNDRY_MODAL_BIN or PATH, 10 minutes per call.
    pub fn from_env() -> Self {
        ModalCli {
            bin: std::env::var_os("FOUNDRY_MODAL_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("modal")),
            timeout: Duration::from_secs(600),
            env: Vec::new(),
        }
    }

    /// Whether the executable can be found (an absolute or relative path
    /// that exists, or a name on PATH).
    pub fn available(&self) -> bool {
        if self.bin.components().count() > 1 {
            return self.bin.is_file();
        }
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(&self.bin).is_file()))
    }

    /// The argv of a call, for printing and recording.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(self.bin.display().to_string())
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    }

    /// Runs `modal args…` in `cwd` and returns what it printed, whatever its exit.
    pub async fn call(&self, args: &[&str], cwd: Option<&Path>) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let shown = self.argv(args).join(" ");
        let out = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .map_err(|_| {
                ModalError::Cli(format!(
                    "`{shown}` took longer than {}s",
                    self.timeout.as_secs()
                ))
            })?
            .map_err(|e| ModalError::Cli(format!("cannot run `{shown}`: {e}")))?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a call that must succeed.
    pub async fn call_ok(&self, args: &[&str], cwd: Option<&Path>) -> Result<Output> {
        let out = self.call(args, cwd).await?;
        if out.code != Some(0) {
            return Err(ModalError::Cli(format!(
                "`{}` failed (exit {}): {}",
                self.argv(args).join(" "),
                out.code.map_or("signal".to_string(), |c| c.to_string()),
                out.tail(3)
            )));
        }
        Ok(out)
    }

    /// Downloads `remote` from `volume` to `local`; `false` when it is not there.
    pub async fn volume_get(&self, volume: &str, remote: &str, local: &Path) -> Result<bool> {
        let l = local.display().to_string();
        let out = self
            .call(&["volume", "get", "--force", volume, remote, &l], None)
            .await?;
        if out.code == Some(0) {
            return Ok(true);
        }
        let text = format!("{} {}", out.stdout, out.stderr).to_lowercase();
        if text.contains("no such file") || text.contains("not found") {
            return Ok(false);
        }
        Err(ModalError::Cli(format!(
            "`modal volume get {volume} {remote}` failed: {}",
            out.tail(3)
        )))
    }

    /// The state Modal shows for `app_id` (`ephemeral (detached)`, `stopped`, …),
    /// or `None` when `modal app list` does not list it.
    pub async fn app_state(&self, app_id: &str) -> Result<Option<String>> {
        let out = self.call_ok(&["app", "list", "--json"], None).await?;
        let apps: serde_json::Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
            ModalError::Cli(format!("`modal app list --json` printed no JSON list: {e}"))
        })?;
        Ok(apps.as_array().and_then(|a| {
            a.iter()
                .find(|x| x["app_id"].as_str() == Some(app_id))
                .and_then(|x| x["state"].as_str().map(str::to_string))
        }))
    }
}

/// Whether a state from `modal app list` means the app is over.
pub fn app_is_over(state: &str) -> bool {
    let s = state.trim_end_matches('.').to_lowercase();
    s.starts_with("stopped") || s.starts_with("stopping") || s == "disabled"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stdout: &str) -> Output {
        Output {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn parses_what_modal_run_prints() {
        let o = out(
            "✓ Initialized. View run at https://modal.com/apps/acme/main/ap-AbC123xyz\n\
                     ✓ Created objects.\nFOUNDRY_FUNCTION_CALL_ID=fc-01JXYZ\n✓ App completed.",
        );
        assert_eq!(
            parse_submission(&o).unwrap(),
            Submission {
                app_id: "ap-AbC123xyz".into(),
                function_call_id: "fc-01JXYZ".into()
            }
        );
    }

    #[test]
    fn missing_ids_are_clear_errors() {
        let e = parse_submission(&out("Error: no token\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no app id") && e.contains("Error: no token"),
            "{e}"
        );
        let e = parse_submission(&out("View run at https://x/ap-1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FOUNDRY_FUNCTION_CALL_ID"), "{e}");
        // "map-…" is not an app id.
        assert_eq!(find_id("heatmap-12 ap-9", "ap-").as_deref(), Some("ap-9"));
    }

    #[test]
    fn finds_the_executable_on_path_or_by_path() {
        let cli = |bin: &str| ModalCli {
            bin: PathBuf::from(bin),
            timeout: Duration::from_secs(1),
            env: Vec::new(),
        };
        assert!(cli("sh").available());
        assert!(!cli("no-such-modal-cli-here").available());
        assert!(cli("/bin/sh").available());
        assert!(!cli("/nonexistent/modal").available());
    }

    #[test]
    fn over_states() {
        assert!(app_is_over("stopped"));
        assert!(app_is_over("stopping..."));
        assert!(!app_is_over("ephemeral (detached)"));
        assert!(!app_is_over("initializing..."));
    }
}
