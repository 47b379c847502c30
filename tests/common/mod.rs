//! What the root integration tests share.
// Each test crate uses a part of this module.
#![allow(dead_code)]

/// How many of `got` differ from `want` in their bits (lengths must match).
pub fn bit_differences(got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

/// Runs `jq-run` with `args` (stdin closed), returning its output.
pub fn run_jq(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_jq-run"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawning jq-run")
}

/// stdout of a successful jq-run; a failed one fails the test with its stderr.
pub fn stdout_ok(o: &std::process::Output) -> Vec<u8> {
    stdout_ok_as(o, "jq-run")
}

/// stdout of a successful run of `what` (a program, a case); a failed one fails the test
/// with its stderr.
pub fn stdout_ok_as(o: &std::process::Output, what: &str) -> Vec<u8> {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout.clone()
}

/// The logits a `--dump-logits` run wrote.
pub fn npy_f32(p: &std::path::Path) -> Vec<f32> {
    jq::npy::parse(&std::fs::read(p).unwrap()).unwrap().data
}

/// A directory for this test process's shared fixtures (files made once, used by several
/// tests), removed when the process exits: statics are never dropped, so a `TempDir` in a
/// `OnceLock` would leave it behind in the system's temporary directory after every run.
pub fn scratch_dir() -> &'static std::path::Path {
    static D: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove() {
        if let Some(d) = D.get() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    D.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("jq-test-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        // SAFETY: `remove` is a plain function that only reads the initialised static; the
        // test harness ends the process through `exit`, which runs it once.
        unsafe { libc::atexit(remove) };
        d
    })
}
