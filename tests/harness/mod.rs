//! Running a binary as a hostile user would, and checking what it left behind: exit status
//! (a signal or a panic is a failure), a one-line error naming the culprit, peak RSS from
//! `wait4`'s `ru_maxrss`, inputs unchanged (SHA-256 before and after), no file left under an
//! output or temporary name. Shared by `tests/hostile_run.rs` and
//! `converters/tests/hostile_convert.rs`.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub args: Vec<String>,
    /// The exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Peak resident set, bytes.
    pub max_rss: u64,
}

impl Outcome {
    pub fn describe(&self) -> String {
        format!(
            "{:?}\n  code {:?} signal {:?}, peak RSS {} MiB\n  stderr: {}",
            self.args,
            self.code,
            self.signal,
            self.max_rss >> 20,
            self.stderr.trim_end()
        )
    }

    /// The `tool: error: ...` line, if the run ended with one.
    pub fn error_line(&self) -> Option<&str> {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .filter(|l| l.contains(": error: "))
    }
}

/// What else a run may be given.
#[derive(Debug, Default, Clone)]
pub struct Opts {
    pub stdin: Option<Vec<u8>>,
    /// `RLIMIT_FSIZE` in bytes (a full disk), with SIGXFSZ ignored so writes fail with EFBIG.
    pub fsize_limit: Option<u64>,
    pub cwd: Option<PathBuf>,
}

/// GNU time: it forks the binary from its own small, freshly exec'd process.
const TIME: &str = "/usr/bin/time";

/// Runs `bin args`, draining its pipes, and reports the binary's own peak RSS.
///
/// The kernel's `ru_maxrss` of a forked child starts from its parent's memory (the address
/// space it replaces at exec is a copy of the parent's), so a child of a large test process
/// looks large, and so does any fork of a fork. The binary is therefore run by GNU time
/// (`/usr/bin/time`), which reports `wait4`'s `ru_maxrss` of its own child; the status comes
/// from time's report (a signal) or its exit code (the child's).
pub fn run(bin: &Path, args: &[&str], o: &Opts) -> Outcome {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    assert!(
        Path::new(TIME).exists(),
        "{TIME} is missing: run scripts/setup (it installs the `time` package)"
    );
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut c = Command::new(TIME);
    c.args(["-f", "maxrss %M", "-o"])
        .arg(report.path())
        .arg(bin)
        .args(args)
        .stdin(if o.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RAYON_NUM_THREADS", "1");
    if let Some(d) = &o.cwd {
        c.current_dir(d);
    }
    if let Some(limit) = o.fsize_limit {
        // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec; both
        // the limit and the ignored SIGXFSZ are inherited by time's child.
        unsafe {
            c.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &r);
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    let mut child = c.spawn().expect("spawning the binary under /usr/bin/time");
    if let Some(input) = o.stdin.clone() {
        let mut si = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = si.write_all(&input);
        });
    }
    let out = child.wait_with_output().unwrap();
    let rep = std::fs::read_to_string(report.path()).unwrap_or_default();
    let signal = rep
        .lines()
        .find_map(|l| l.strip_prefix("Command terminated by signal "))
        .and_then(|n| n.trim().parse::<i32>().ok());
    let max_rss = rep
        .lines()
        .find_map(|l| l.strip_prefix("maxrss "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    Outcome {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: if signal.is_some() {
            None
        } else {
            out.status.code()
        },
        signal,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        max_rss,
    }
}

/// Asserts the run neither panicked nor died by a signal, and stayed under `rss_bound`.
pub fn assert_sane(o: &Outcome, rss_bound: u64) {
    assert!(o.signal.is_none(), "killed by signal: {}", o.describe());
    assert_ne!(o.code, Some(101), "panicked: {}", o.describe());
    assert!(
        !o.stderr.contains("panicked at"),
        "panicked: {}",
        o.describe()
    );
    assert!(
        o.max_rss <= rss_bound,
        "peak RSS {} MiB over the bound {} MiB: {}",
        o.max_rss >> 20,
        rss_bound >> 20,
        o.describe()
    );
}

/// Asserts a clean refusal: exit status 1, the last stderr line is `tool: error: ...` and
/// names one of `culprits`.
pub fn assert_refused(o: &Outcome, rss_bound: u64, culprits: &[&str]) {
    assert_sane(o, rss_bound);
    assert_eq!(o.code, Some(1), "expected a refusal: {}", o.describe());
    let line = o
        .error_line()
        .unwrap_or_else(|| panic!("no error line: {}", o.describe()));
    assert!(
        culprits.iter().any(|c| line.contains(c)),
        "the error does not name any of {culprits:?}: {}",
        o.describe()
    );
}

/// Exit 0, or a clean refusal naming one of `culprits`.
pub fn assert_ok_or_refused(o: &Outcome, rss_bound: u64, culprits: &[&str]) {
    assert_sane(o, rss_bound);
    if o.code != Some(0) {
        assert_refused(o, rss_bound, culprits);
    }
}

pub fn sha256(p: &Path) -> String {
    let mut h = Sha256::new();
    h.update(std::fs::read(p).unwrap_or_default());
    format!("{:x}", h.finalize())
}

/// Every file under `dir` (not following symlinks) with its hash.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_symlink() {
                out.insert(p, "symlink".into());
            } else {
                let h = sha256(&p);
                out.insert(p, h);
            }
        }
    }
    out
}

/// Asserts `dir` holds exactly what it held before (no input changed, nothing new: no output
/// of a refused run, no temporary file).
pub fn assert_unchanged(dir: &Path, before: &BTreeMap<PathBuf, String>, o: &Outcome) {
    let after = snapshot(dir);
    if &after != before {
        let changed: Vec<_> = after
            .iter()
            .filter(|(p, h)| before.get(*p) != Some(*h))
            .map(|(p, _)| p.display().to_string())
            .chain(
                before
                    .keys()
                    .filter(|p| !after.contains_key(*p))
                    .map(|p| format!("{} (removed)", p.display())),
            )
            .collect();
        panic!(
            "files changed or left behind: {changed:?}\n{}",
            o.describe()
        );
    }
}

/// A bound for the peak RSS of a hostile run, from a valid run of the same shape: twice its
/// peak plus 64 MiB (threads, allocator slack). A few-KB file asking for gigabytes is far above.
pub fn rss_bound(valid: &Outcome) -> u64 {
    2 * valid.max_rss + (64 << 20)
}
