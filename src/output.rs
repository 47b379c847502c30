//! Output files that never destroy their inputs and never leave half a file behind: what every
//! writer (the GGUF writer, the `.npy` writer, the Modelfile) goes through.
//!
//! - [`refuse_aliases`]: every output path is compared with every input path, and with every
//!   other output, as files (device and inode after following symlinks, so `./x`, `a/../x`,
//!   symlinks and hard links are all caught), and refused before anything is read or written.
//! - [`AtomicFile`]: the data goes to `.NAME.<pid>.tmp` beside the target, held under an
//!   advisory lock (`flock`) while it is written, and is renamed over `NAME` only by
//!   [`AtomicFile::commit`]. Dropped without a commit (an error, a panic), the temporary file is
//!   removed. SIGINT, SIGTERM, SIGHUP and SIGXFSZ remove every temporary file still open and exit
//!   with 128 + the signal number. SIGKILL cannot be handled: the next write of the same name
//!   removes leftovers whose lock is free and whose process is gone, so two concurrent runs
//!   never collide and a live writer's file is never taken.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{out_role} {} is the same file as {in_role} {}: refusing to overwrite it", output.display(), input.display())]
    Alias {
        out_role: String,
        output: PathBuf,
        in_role: String,
        input: PathBuf,
    },
    #[error("{out_role} {}: is a directory, not a file", path.display())]
    IsDir { out_role: String, path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no file name to write to", path.display())]
    NoFileName { path: PathBuf },
}

fn io_err(path: &Path, source: io::Error) -> OutputError {
    OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Device and inode of the file `p` names, following symlinks; `None` when it does not exist.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `a` and `b` name the same existing file (symlinks followed, hard links included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((file_id(a), file_id(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses any output that is an input or another output. `outputs` and `inputs` are
/// `(role, path)` pairs; roles name the flag or argument (`--dump-logits`, `-o`, `the model`)
/// so the error says which of the user's paths collide. An output that does not exist yet
/// cannot be an existing input, but two outputs naming the same not-yet-existing file are
/// caught by comparing their resolved paths.
pub fn refuse_aliases(
    outputs: &[(&str, &Path)],
    inputs: &[(&str, &Path)],
) -> Result<(), OutputError> {
    for (i, &(out_role, out)) in outputs.iter().enumerate() {
        if out.is_dir() {
            return Err(OutputError::IsDir {
                out_role: out_role.into(),
                path: out.to_path_buf(),
            });
        }
        for &(in_role, input) in inputs {
            if same_file(out, input) {
                return Err(OutputError::Alias {
                    out_role: out_role.into(),
                    output: out.to_path_buf(),
                    in_role: in_role.into(),
                    input: input.to_path_buf(),
                });
            }
        }
        for &(other_role, other) in &outputs[..i] {
            if same_file(out, other) || resolved(out).is_some_and(|r| Some(r) == resolved(other)) {
                return Err(OutputError::Alias {
                    out_role: out_role.into(),
                    output: out.to_path_buf(),
                    in_role: other_role.into(),
                    input: other.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// The absolute path `p` will be written at: its directory resolved, its file name kept.
fn resolved(p: &Path) -> Option<PathBuf> {
    let name = p.file_name()?;
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(dir.canonicalize().ok()?.join(name))
}

// ------------------------------------------------------------------ signal-time cleanup

/// Temporary files being written: C strings, leaked, so the signal handler can read them at
/// any moment without locking or freeing anything.
const SLOTS: usize = 32;
static TEMPS: [AtomicPtr<libc::c_char>; SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

extern "C" fn on_signal(sig: libc::c_int) {
    let mut removed = false;
    for slot in &TEMPS {
        let p = slot.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `p` is a NUL-terminated string leaked by `register` and never freed;
            // unlink is async-signal-safe.
            unsafe { libc::unlink(p) };
            removed = true;
        }
    }
    if removed {
        let msg = b"\ninterrupted: the unfinished output was removed\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a static.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
    // SAFETY: _exit ends the process at once without running destructors (which could touch
    // state the interrupted threads hold).
    unsafe { libc::_exit(128 + sig) };
}

/// Installs the handler once. A handler that runs `unlink` + `_exit` is all this needs (no
/// thread, no chaining), so it is set with `sigaction` directly.
fn install_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGXFSZ] {
            // SAFETY: a zeroed sigaction with a valid handler and an empty mask is a valid
            // argument. A signal the parent set to be ignored (nohup, a test's SIGXFSZ) stays
            // ignored: we only replace the default action.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

fn register(path: &Path) -> Option<usize> {
    install_handlers();
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let p = c.into_raw();
    for (i, slot) in TEMPS.iter().enumerate() {
        if slot
            .compare_exchange(std::ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Some(i);
        }
    }
    // More than SLOTS outputs at once: this one is still removed on error, just not on a
    // signal. The string is leaked either way (it may be read by a handler).
    None
}

fn deregister(slot: Option<usize>) {
    if let Some(i) = slot {
        // The string stays leaked: a handler running right now may still be reading it.
        TEMPS[i].store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

// ------------------------------------------------------------------ atomic files

/// The temporary name of `NAME` for process `pid`: `.NAME.<pid>.tmp`.
fn temp_name(name: &std::ffi::OsStr, pid: u32) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(".");
    s.push(name);
    s.push(format!(".{pid}.tmp"));
    s
}

/// Removes `.NAME.<pid>.tmp` leftovers in `dir` whose process is gone and whose lock is free
/// (a writer killed with SIGKILL). Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, name: &std::ffi::OsStr) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let prefix = {
        let mut p = b".".to_vec();
        p.extend_from_slice(name.as_bytes());
        p.push(b'.');
        p
    };
    let mut n = 0;
    for e in entries.flatten() {
        let f = e.file_name();
        let b = f.as_bytes();
        let Some(pid) = b
            .strip_prefix(prefix.as_slice())
            .and_then(|r| r.strip_suffix(b".tmp"))
            .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = e.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // SAFETY: a valid descriptor; LOCK_NB never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0
            && std::fs::remove_file(&path).is_ok()
        {
            n += 1;
        }
    }
    n
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A file written under a temporary name and renamed into place by [`AtomicFile::commit`].
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    slot: Option<usize>,
}

impl AtomicFile {
    /// Creates `.NAME.<pid>.tmp` beside `path`, locked, after removing stale leftovers of the
    /// same name. Fails when the directory cannot be written (so a caller can check every
    /// output location before doing any work).
    pub fn create(path: &Path) -> Result<AtomicFile, OutputError> {
        let name = path.file_name().ok_or_else(|| OutputError::NoFileName {
            path: path.to_path_buf(),
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if path.is_dir() {
            return Err(OutputError::IsDir {
                out_role: "output".into(),
                path: path.to_path_buf(),
            });
        }
        remove_stale_temps(dir, name);
        let tmp = dir.join(temp_name(name, std::process::id()));
        // Registered (and the handlers installed) before the file exists, so a signal at any
        // moment after it appears removes it.
        let slot = register(&tmp);
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) => {
                deregister(slot);
                return Err(io_err(path, e));
            }
        };
        let me = AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
            slot,
        };
        // SAFETY: a valid descriptor; the lock is released when the file is closed.
        if unsafe { libc::flock(me.file().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io_err(path, io::Error::last_os_error()));
        }
        Ok(me)
    }

    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open until commit")
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary path being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the data and renames the temporary file over the final path.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let file = self.file.take().expect("open until commit");
        file.sync_all().map_err(|e| io_err(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            // Put the file back so Drop removes the temporary.
            self.file = Some(file);
            io_err(&self.path, e)
        })?;
        deregister(self.slot.take());
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.slot.is_some() || self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
            deregister(self.slot.take());
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    use std::io::Write;
    let f = AtomicFile::create(path)?;
    f.file().write_all(bytes).map_err(|e| io_err(path, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_by_inode_symlink_hard_link_and_dot_paths() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.gguf");
        std::fs::write(&a, b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let hard = d.path().join("hard");
        std::fs::hard_link(&a, &hard).unwrap();
        let dotted = d.path().join(".").join("sub/../a.gguf");
        std::fs::create_dir(d.path().join("sub")).unwrap();
        for out in [&a, &link, &hard, &dotted] {
            let e = refuse_aliases(&[("-o", out)], &[("the input", &a)]).unwrap_err();
            assert!(
                e.to_string().contains("is the same file as the input"),
                "{e}"
            );
        }
        let other = d.path().join("b.gguf");
        refuse_aliases(&[("-o", &other)], &[("the input", &a)]).unwrap();
        // Two outputs naming the same new file.
        let e = refuse_aliases(
            &[
                ("-o", &other),
                ("--modelfile", &d.path().join("sub/../b.gguf")),
            ],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--modelfile"), "{e}");
    }

    #[test]
    fn temp_is_locked_named_by_pid_and_removed_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        {
            let f = AtomicFile::create(&p).unwrap();
            let want = d
                .path()
                .join(format!(".out.bin.{}.tmp", std::process::id()));
            assert_eq!(f.temp_path(), want);
            assert!(want.exists());
            // A second writer in this process collides on the name instead of sharing it.
            assert!(AtomicFile::create(&p).is_err());
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        write_atomic(&p, b"done").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"done");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temps_go_only_when_dead_and_unlocked() {
        let d = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::new("m.gguf");
        // A pid that cannot be alive (above the kernel's pid_max of 2^22).
        let dead = d.path().join(".m.gguf.99999999.tmp");
        std::fs::write(&dead, b"partial").unwrap();
        // A leftover of a dead pid whose lock someone still holds is kept.
        let held = d.path().join(".m.gguf.99999998.tmp");
        std::fs::write(&held, b"partial").unwrap();
        let lock = File::open(&held).unwrap();
        // SAFETY: a valid descriptor.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        // A live process's file is kept (our parent is alive).
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        let live = d.path().join(format!(".m.gguf.{parent}.tmp"));
        std::fs::write(&live, b"partial").unwrap();
        let other = d.path().join(".n.gguf.99999999.tmp");
        std::fs::write(&other, b"partial").unwrap();
        assert_eq!(remove_stale_temps(d.path(), name), 1);
        assert!(!dead.exists() && held.exists() && live.exists() && other.exists());
    }
}
