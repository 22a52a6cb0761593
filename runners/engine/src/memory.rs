//! How much memory a job may use, so that a run that cannot fit is refused
//! with numbers before it allocates, instead of aborting its process.

use std::path::Path;

/// The variable that sets the memory budget of a training job explicitly, in
/// bytes (a reservation on a shared host, or a test).
pub const MEMORY_BUDGET_VAR: &str = "FOUNDRY_TRAIN_MEMORY_BYTES";

/// The memory a job may use and where that figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Bytes.
    pub bytes: u64,
    /// `FOUNDRY_TRAIN_MEMORY_BYTES`, `MemAvailable` or `cgroup memory.max`.
    pub source: String,
}

/// The memory available to this process now: the explicit budget when set,
/// else the smaller of the kernel's `MemAvailable` and what the process's
/// cgroup (v2) still allows. `None` where neither can be read (not Linux).
pub fn available() -> std::result::Result<Option<Budget>, String> {
    if let Ok(v) = std::env::var(MEMORY_BUDGET_VAR) {
        let bytes = parse_bytes(&v)
            .ok_or_else(|| format!("{MEMORY_BUDGET_VAR} = {v:?} is not a byte count"))?;
        return Ok(Some(Budget {
            bytes,
            source: MEMORY_BUDGET_VAR.to_string(),
        }));
    }
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_available(&t))
        .map(|bytes| Budget {
            bytes,
            source: "MemAvailable".into(),
        });
    let cgroup =
        cgroup_room(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup")).map(|bytes| {
            Budget {
                bytes,
                source: "cgroup memory.max".into(),
            }
        });
    Ok(match (mem, cgroup) {
        (Some(m), Some(c)) => Some(if c.bytes < m.bytes { c } else { m }),
        (m, c) => m.or(c),
    })
}

/// `12345`, `8GiB`, `512MiB`, `2G` (binary units).
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// What the process's cgroup v2 still allows (`memory.max` minus
/// `memory.current`), or `None` when unlimited or unreadable.
fn cgroup_room(self_cgroup: &Path, root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(self_cgroup).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = root.join(rel.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max" means unlimited
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    Some(max.saturating_sub(current))
}

/// Bytes as `1.23 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_binary_units() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("8GiB"), Some(8 << 30));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("99999999999T"), None);
    }

    #[test]
    fn meminfo_and_cgroup_limits_are_read() {
        let info = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(info), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);

        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("self");
        std::fs::write(&cg, "0::/jobs/a\n").unwrap();
        let job = dir.path().join("root/jobs/a");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("memory.max"), "1000000\n").unwrap();
        std::fs::write(job.join("memory.current"), "400000\n").unwrap();
        assert_eq!(cgroup_room(&cg, &dir.path().join("root")), Some(600000));
        std::fs::write(job.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_room(&cg, &dir.path().join("root")), None);
    }

    #[test]
    fn this_machine_reports_some_memory() {
        if std::env::var(MEMORY_BUDGET_VAR).is_ok() {
            return;
        }
        let b = available().unwrap();
        if cfg!(target_os = "linux") {
            let b = b.expect("linux has /proc/meminfo");
            assert!(b.bytes > 0, "{b:?}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.00 GiB");
    }
}
