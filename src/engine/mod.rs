//! What `jq-run` drives. `native` runs Jarvis GGUFs on our own engine; the llama.cpp engine
//! (every other architecture) and the layer-streaming scheduler come with their issues.

pub mod llama;
pub mod native;

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
