//! What `jq-run` drives. `native` runs Jarvis GGUFs on our own engine; `llama` runs every
//! other architecture llama.cpp knows, placed on devices by `plan`.

pub mod llama;
mod llama_archs;
pub mod logs;
pub mod native;
pub mod placement;
pub mod plan;
pub mod rpc;
pub mod stream;

pub use llama_archs::LLAMA_ARCHS;

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:")
}

/// Memory the kernel says is available to new work in bytes (Linux `MemAvailable`), if known.
pub fn mem_available() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:")
}

/// A `KEY:   N kB` line of a /proc file, in bytes.
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
