//! llama.cpp's and ggml's log lines, captured. By default nothing is printed; the error lines
//! are kept so that a failed load can say why (`llama.cpp could not load X: <its own error>`)
//! instead of llama-cpp-2's bare "null result". `-v/--verbose` (or `JQ_LLAMA_LOG=1`) prints
//! every line to stderr as well. One callback serves llama.cpp, ggml and every engine
//! (`llama`, `stream`) in the process.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Error lines since the last [`take_errors`] (bounded: the oldest are dropped), and the
/// unfinished line that CONT messages extend; while recording, every line.
struct Captured {
    errors: Vec<String>,
    partial: String,
    partial_is_error: bool,
    recording: bool,
    recorded: String,
}

static CAPTURED: Mutex<Captured> = Mutex::new(Captured {
    errors: Vec::new(),
    partial: String::new(),
    partial_is_error: false,
    recording: false,
    recorded: String::new(),
});

/// Keeps every log line from now on (`true`) or stops keeping them, for [`take_recorded`]
/// (tests read llama.cpp's model-info lines, which its C API has no getter for).
pub fn record(on: bool) {
    let mut c = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
    c.recording = on;
}

/// Every line logged while recording, since the last call.
pub fn take_recorded() -> Vec<String> {
    let mut c = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut c.recorded)
        .lines()
        .map(str::to_string)
        .collect()
}

const MAX_ERRORS: usize = 32;

/// Prints every library log line to stderr from now on.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// The error lines logged since the last call, oldest first.
pub fn take_errors() -> Vec<String> {
    let mut c = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut c.errors)
}

/// The most telling error line logged since the last [`take_errors`]: the last one that is not
/// a generic "failed to load" wrapper around the real cause. Clears the captured lines.
pub fn last_error() -> Option<String> {
    let errors = take_errors();
    let generic = |l: &str| l.ends_with("failed to load model") || l.ends_with("failed to load");
    errors
        .iter()
        .rev()
        .find(|l| !generic(l))
        .or(errors.last())
        .cloned()
}

fn keep(c: &mut Captured, line: String) {
    if c.errors.len() == MAX_ERRORS {
        c.errors.remove(0);
    }
    c.errors.push(line);
}

/// The callback given to `llama_log_set` (which also sets ggml's).
unsafe extern "C" fn on_log(
    level: llama_cpp_sys_2::ggml_log_level,
    text: *const c_char,
    _: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if verbose() {
        eprint!("{text}");
    }
    let mut c = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
    if c.recording {
        c.recorded.push_str(&text);
    }
    if level != llama_cpp_sys_2::GGML_LOG_LEVEL_CONT {
        c.partial.clear();
        c.partial_is_error = level == llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR;
    }
    if !c.partial_is_error {
        return;
    }
    c.partial.push_str(&text);
    while let Some(i) = c.partial.find('\n') {
        let line: String = c.partial.drain(..=i).collect();
        let line = line.trim().to_string();
        if !line.is_empty() {
            keep(&mut c, line);
        }
    }
}

/// Routes llama.cpp's and ggml's logs through [`on_log`]. Called once the backend exists
/// (llama.cpp resets nothing afterwards).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("JQ_LLAMA_LOG").is_some_and(|v| v == "1") {
            set_verbose(true);
        }
        // SAFETY: `on_log` matches ggml_log_callback, is thread-safe (a mutex) and lives for
        // the whole program; the user data is unused.
        unsafe { llama_cpp_sys_2::llama_log_set(Some(on_log), std::ptr::null_mut()) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_error_lines_joined_across_cont() {
        let send = |level, s: &str| {
            let c = std::ffi::CString::new(s).unwrap();
            // SAFETY: a valid C string.
            unsafe { on_log(level, c.as_ptr(), std::ptr::null_mut()) };
        };
        take_errors();
        send(llama_cpp_sys_2::GGML_LOG_LEVEL_INFO, "loading\n");
        send(
            llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR,
            "llama_model_load: error loading model: ",
        );
        send(
            llama_cpp_sys_2::GGML_LOG_LEVEL_CONT,
            "tensor 'x' has wrong shape\n",
        );
        send(
            llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR,
            "llama_model_load_from_file_impl: failed to load model\n",
        );
        assert_eq!(
            last_error().as_deref(),
            Some("llama_model_load: error loading model: tensor 'x' has wrong shape")
        );
        assert!(take_errors().is_empty());
    }
}
