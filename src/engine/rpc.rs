//! ggml's RPC backend (`ggml-rpc`): remote machines' devices for the llama.cpp engine, and
//! this machine's devices served to others (`jq-run rpc-server`).
//!
//! The bindings do not cover `ggml-rpc.h`, so the two functions we call are declared here
//! ([`DECLARED`] holds their C prototypes; a test checks them, the protocol version and the
//! HELLO command against the pinned header and source).
//!
//! ggml's client is blunt: a failed connect, a refused handshake or a dropped reply aborts the
//! process, and its sockets block without a time-out. So before ggml sees a server, [`hello`]
//! checks it from Rust (connect and HELLO, each bounded by a time-out); [`AbortHook`] turns a
//! later abort into one line naming the server and exit status 1; and [`Watchdog`] ends a run
//! that waits too long for a reply, naming the server it waits for.
//!
//! ggml RPC has no authentication and no encryption: anyone who can reach a server's port can
//! run graphs on it and read or write its buffers.

use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llama_cpp_sys_2::{ggml_backend_dev_t, ggml_backend_reg_t};

/// The protocol version of the linked ggml-rpc (`RPC_PROTO_*_VERSION` in `ggml-rpc.h`).
pub const PROTO_VERSION: (u8, u8, u8) = (7, 0, 0);
/// `GGML_RPC_MAX_SERVERS`.
pub const MAX_SERVERS: usize = 16;
/// `RPC_CMD_HELLO` (ggml keeps it at 14 across versions so any client can ask).
pub const CMD_HELLO: u8 = 14;
/// `RPC_CONN_CAPS_SIZE` (transport.h): the capability bytes of a HELLO request and reply.
pub const CONN_CAPS_SIZE: usize = 24;
/// The default port of llama.cpp's `rpc-server`.
pub const DEFAULT_PORT: u16 = 50052;

/// The C prototypes of what [`ffi`] declares, as `ggml-rpc.h` writes them.
pub const DECLARED: &[&str] = &[
    "ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint);",
    "void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir, size_t n_threads, size_t n_devices, ggml_backend_dev_t * devices);",
];

mod ffi {
    use super::*;
    extern "C" {
        pub fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> ggml_backend_reg_t;
        pub fn ggml_backend_rpc_start_server(
            endpoint: *const c_char,
            cache_dir: *const c_char,
            n_threads: usize,
            n_devices: usize,
            devices: *mut ggml_backend_dev_t,
        );
    }
}

/// `HOST:PORT` of an RPC server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        // ggml splits at the first ':' (so no IPv6 literals) and parses the rest as the port.
        let (host, port) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not HOST:PORT"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("'{s}': the host is empty or holds a space"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("'{s}': '{port}' is not a port (1-65535)"))?;
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

/// `HOST:PORT[,HOST:PORT...]`: distinct servers, at most [`MAX_SERVERS`].
pub fn parse_endpoints(s: &str) -> Result<Vec<Endpoint>, String> {
    let mut out: Vec<Endpoint> = Vec::new();
    for part in s.split(',') {
        let e: Endpoint = part.parse()?;
        if out.contains(&e) {
            return Err(format!("{e} is named twice"));
        }
        out.push(e);
    }
    if out.len() > MAX_SERVERS {
        return Err(format!(
            "{} servers: ggml-rpc takes at most {MAX_SERVERS}",
            out.len()
        ));
    }
    Ok(out)
}

/// Whether `v` is a server version this client accepts (ggml's own rule: same major, minor not
/// newer).
pub fn compatible(v: (u8, u8, u8)) -> bool {
    v.0 == PROTO_VERSION.0 && v.1 <= PROTO_VERSION.1
}

fn fmt_version(v: (u8, u8, u8)) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// Connects to `e` and performs ggml's HELLO handshake, each step bounded by `timeout`;
/// returns the protocol version the server announces. The connection is closed afterwards (a
/// ggml server serves one client at a time). Errors are one line naming the server.
pub fn hello(e: &Endpoint, timeout: Duration) -> Result<(u8, u8, u8), String> {
    let addrs: Vec<_> = (e.host.as_str(), e.port)
        .to_socket_addrs()
        .map_err(|err| format!("RPC server {e}: cannot resolve '{}': {err}", e.host))?
        .collect();
    let mut last = None;
    let mut sock = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(err) => last = Some(err),
        }
    }
    let mut s = sock.ok_or_else(|| {
        format!(
            "RPC server {e}: cannot connect: {}",
            last.map_or_else(|| "no address".to_string(), |x| x.to_string())
        )
    })?;
    let io = |what: &str, err: std::io::Error| {
        if matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            format!(
                "RPC server {e}: no HELLO reply within {:.1} s (busy with another client, or not a ggml RPC server)",
                timeout.as_secs_f64()
            )
        } else {
            format!("RPC server {e}: {what}: {err}")
        }
    };
    s.set_read_timeout(Some(timeout))
        .map_err(|x| io("setting a time-out", x))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|x| io("setting a time-out", x))?;
    let _ = s.set_nodelay(true);
    // | cmd (1) | request size (8, LE) | conn_caps (24): no capabilities, plain TCP |
    let mut req = vec![CMD_HELLO];
    req.extend_from_slice(&(CONN_CAPS_SIZE as u64).to_le_bytes());
    req.extend_from_slice(&[0u8; CONN_CAPS_SIZE]);
    s.write_all(&req).map_err(|x| io("sending HELLO", x))?;
    // | reply size (8, LE) | major minor patch pad | conn_caps (24) |
    let mut size = [0u8; 8];
    s.read_exact(&mut size).map_err(|x| {
        if x.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("RPC server {e}: closed the connection instead of answering HELLO (not a ggml RPC server of protocol {}?)", fmt_version(PROTO_VERSION))
        } else {
            io("reading the HELLO reply", x)
        }
    })?;
    let n = u64::from_le_bytes(size);
    if n != 4 + CONN_CAPS_SIZE as u64 {
        return Err(format!(
            "RPC server {e}: HELLO reply of {n} bytes, expected {} (not a ggml RPC server of protocol {}?)",
            4 + CONN_CAPS_SIZE,
            fmt_version(PROTO_VERSION)
        ));
    }
    let mut rsp = [0u8; 4 + CONN_CAPS_SIZE];
    s.read_exact(&mut rsp)
        .map_err(|x| io("reading the HELLO reply", x))?;
    Ok((rsp[0], rsp[1], rsp[2]))
}

/// [`hello`], and the version must be one ggml's client accepts.
pub fn check_server(e: &Endpoint, timeout: Duration) -> Result<(), String> {
    let v = hello(e, timeout)?;
    if !compatible(v) {
        return Err(format!(
            "RPC server {e}: speaks protocol {}, this build speaks {}",
            fmt_version(v),
            fmt_version(PROTO_VERSION)
        ));
    }
    Ok(())
}

/// A device of a remote server, as ggml-rpc presents it.
#[derive(Debug, Clone)]
pub struct RemoteDevice {
    pub endpoint: Endpoint,
    /// ggml's name (`RPC0`, `RPC1`, ... across all servers).
    pub name: String,
    pub free: u64,
    pub total: u64,
    pub dev: ggml_backend_dev_t,
}

/// Servers handed to ggml-rpc, with the addresses they resolve to (to recognise their
/// sockets in /proc).
static CONNECTED: Mutex<Vec<(Endpoint, Vec<SocketAddr>)>> = Mutex::new(Vec::new());

/// Hands the servers to ggml-rpc (each already passed [`check_server`]) and lists their
/// devices. ggml aborts here if a server vanished since the check; with [`AbortHook`]
/// installed that is a one-line error.
pub fn connect(endpoints: &[Endpoint]) -> Result<Vec<RemoteDevice>, String> {
    super::llama::backend().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for e in endpoints {
        let c = CString::new(e.to_string()).map_err(|_| format!("{e}: holds a NUL byte"))?;
        let addrs = (e.host.as_str(), e.port)
            .to_socket_addrs()
            .map(|a| a.collect())
            .unwrap_or_default();
        CONNECTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((e.clone(), addrs));
        // SAFETY: a valid C string; ggml copies it. The returned registry lives for the program.
        let reg = unsafe { ffi::ggml_backend_rpc_add_server(c.as_ptr()) };
        if reg.is_null() {
            return Err(format!("RPC server {e}: serves no device"));
        }
        // SAFETY: `reg` is a live registry from ggml; indices are below its device count.
        let n = unsafe { llama_cpp_sys_2::ggml_backend_reg_dev_count(reg) };
        for i in 0..n {
            // SAFETY: as above.
            let dev = unsafe { llama_cpp_sys_2::ggml_backend_reg_dev_get(reg, i) };
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: `dev` is a live device; the out-pointers are valid.
            unsafe { llama_cpp_sys_2::ggml_backend_dev_memory(dev, &mut free, &mut total) };
            // SAFETY: ggml returns a NUL-terminated name owned by the device.
            let name = unsafe { CStr::from_ptr(llama_cpp_sys_2::ggml_backend_dev_name(dev)) }
                .to_string_lossy()
                .into_owned();
            out.push(RemoteDevice {
                endpoint: e.clone(),
                name,
                free: free as u64,
                total: total as u64,
                dev,
            });
        }
    }
    Ok(out)
}

/// This process's TCP sockets: (inode, TCP state, peer address), from /proc/net/tcp{,6}.
fn tcp_sockets() -> Vec<(u64, u8, SocketAddr)> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(rem), Some(st), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            let Some((ip, port)) = rem.split_once(':') else {
                continue;
            };
            let (Ok(port), Ok(st), Ok(inode)) = (
                u16::from_str_radix(port, 16),
                u8::from_str_radix(st, 16),
                inode.parse::<u64>(),
            ) else {
                continue;
            };
            // The kernel prints each 32-bit word of the address in host (little-endian) order.
            let words: Vec<[u8; 4]> = (0..ip.len() / 8)
                .filter_map(|i| u32::from_str_radix(&ip[8 * i..8 * i + 8], 16).ok())
                .map(u32::to_le_bytes)
                .collect();
            let addr: std::net::IpAddr = if v6 && words.len() == 4 {
                let mut b = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(w);
                }
                let a6 = std::net::Ipv6Addr::from(b);
                a6.to_ipv4_mapped().map_or(a6.into(), Into::into)
            } else if let [w] = words[..] {
                std::net::Ipv4Addr::from(w).into()
            } else {
                continue;
            };
            out.push((inode, st, SocketAddr::new(addr, port)));
        }
    }
    out
}

/// The socket inode behind file descriptor `fd` of this process.
fn socket_inode(fd: &str) -> Option<u64> {
    let l = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    l.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The server whose address is `a`.
fn server_at(list: &[(Endpoint, Vec<SocketAddr>)], a: SocketAddr) -> Option<String> {
    list.iter()
        .find(|(_, addrs)| addrs.contains(&a))
        .map(|(e, _)| e.to_string())
}

/// Threads the watchdog saw reading a server's socket: (thread id, server).
static READERS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The servers a failure is about: the one the failing thread was seen talking to (ggml runs
/// one dispatcher thread per server and aborts on it), else those whose connection the peer
/// closed (TCP CLOSE_WAIT, then CLOSE), else those that no longer accept a connection, else
/// all of them.
fn culprit() -> String {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() }.to_string();
    if let Some((_, server)) = READERS
        .lock()
        .ok()
        .and_then(|r| r.iter().find(|x| x.0 == me).cloned())
    {
        return server;
    }
    let list = CONNECTED.lock().map(|l| l.clone()).unwrap_or_default();
    let mine: Vec<u64> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| socket_inode(e.ok()?.file_name().to_str()?))
                .collect()
        })
        .unwrap_or_default();
    let socks = tcp_sockets();
    // 8: CLOSE_WAIT (the server closed), 7: CLOSE (reset)
    for state in [8, 7] {
        let mut closed: Vec<String> = socks
            .iter()
            .filter(|(inode, st, _)| mine.contains(inode) && *st == state)
            .filter_map(|(_, _, a)| server_at(&list, *a))
            .collect();
        closed.dedup();
        if !closed.is_empty() {
            return closed.join(", ");
        }
    }
    let down: Vec<String> = list
        .iter()
        .filter(|(_, addrs)| {
            !addrs
                .iter()
                .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
        })
        .map(|(e, _)| e.to_string())
        .collect();
    let names: Vec<String> = if down.is_empty() {
        list.iter().map(|(e, _)| e.to_string()).collect()
    } else {
        down
    };
    names.join(", ")
}

/// Writes one line to stderr and ends the process with status 1, without unwinding or
/// running destructors (ggml's state is not trustworthy any more).
fn die(line: &str) -> ! {
    let s = format!("jq-run: error: {line}\n");
    // SAFETY: writing a valid buffer to fd 2, then _exit, which never returns.
    unsafe {
        libc::write(2, s.as_ptr().cast(), s.len());
        libc::_exit(1)
    }
}

/// Turns ggml's aborts (`GGML_ABORT`, failed `GGML_ASSERT`) into one line naming the RPC
/// server at fault and exit status 1, instead of a core dump.
#[derive(Debug)]
pub struct AbortHook;

impl AbortHook {
    pub fn install() -> AbortHook {
        extern "C" fn on_abort(msg: *const c_char) {
            let text = if msg.is_null() {
                String::new()
            } else {
                // SAFETY: ggml passes a NUL-terminated message valid for the call.
                unsafe { CStr::from_ptr(msg) }
                    .to_string_lossy()
                    .trim()
                    .to_string()
            };
            // ggml writes "file.cpp:LINE: message": the message is what says something.
            let text = match text.find(".cpp:") {
                Some(i) => text[i + 5..]
                    .split_once(": ")
                    .map_or(text.clone(), |(_, m)| m.to_string()),
                None => text,
            };
            let who = culprit();
            die(&format!(
                "RPC server {who}: the connection failed or the reply was malformed (ggml: {text})"
            ));
        }
        // SAFETY: `on_abort` matches ggml_abort_callback_t and never returns.
        unsafe { llama_cpp_sys_2::ggml_set_abort_callback(Some(on_abort)) };
        AbortHook
    }
}

/// Ends the run with one line when ggml waits longer than the time-out for a server's reply:
/// ggml's sockets block forever on a server that stopped answering. A server's dispatcher
/// thread that sits in a socket read without receiving a byte for the whole time-out is
/// stalled (an idle dispatcher waits on its queue, not on the socket); a slow remote
/// computation longer than the time-out reads the same, hence a generous default.
#[derive(Debug)]
pub struct Watchdog;

/// The file descriptor thread `tid` of this process reads from, when it sits in a socket
/// read (Linux x86-64 syscall numbers: read, recvfrom, recvmsg; the first argument is the fd).
fn reading_fd(tid: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let mut f = s.split_whitespace();
    let nr: i64 = f.next()?.parse().ok()?;
    if !matches!(nr, 0 | 45 | 47) {
        return None;
    }
    let fd = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
    Some(fd.to_string())
}

/// How often thread `tid` has blocked and woken up so far (`voluntary_ctxt_switches`): a
/// thread that stays in one socket read does not change it; one that receives does.
fn wakeups(tid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Watchdog {
    pub fn start(timeout: Duration) -> Watchdog {
        std::thread::spawn(move || {
            // per thread reading a server's socket: its wake-ups, and since when it waits
            // without one
            let mut seen: Vec<(String, Option<u64>, Instant)> = Vec::new();
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let list = CONNECTED.lock().map(|l| l.clone()).unwrap_or_default();
                let socks = tcp_sockets();
                let now = Instant::now();
                let tids: Vec<String> = std::fs::read_dir("/proc/self/task")
                    .map(|d| {
                        d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                seen.retain(|x| tids.contains(&x.0));
                for tid in tids {
                    let server = reading_fd(&tid)
                        .and_then(|fd| socket_inode(&fd))
                        .and_then(|ino| socks.iter().find(|s| s.0 == ino))
                        .and_then(|s| server_at(&list, s.2));
                    let Some(server) = server else {
                        seen.retain(|x| x.0 != tid);
                        continue;
                    };
                    if let Ok(mut r) = READERS.lock() {
                        r.retain(|x| x.0 != tid);
                        r.push((tid.clone(), server.clone()));
                    }
                    let w = wakeups(&tid);
                    match seen.iter_mut().find(|x| x.0 == tid) {
                        Some(slot) if slot.1 == w => {
                            if now.duration_since(slot.2) >= timeout {
                                die(&format!(
                                    "RPC server {server}: no reply within {:.0} s (stalled or unreachable; --rpc-timeout sets the limit)",
                                    timeout.as_secs_f64()
                                ));
                            }
                        }
                        Some(slot) => *slot = (tid, w, now),
                        None => seen.push((tid, w, now)),
                    }
                }
            }
        });
        Watchdog
    }
}

/// Runs ggml's RPC server loop on `devices` (by ggml name; empty: every GPU, else the CPU)
/// at `endpoint`, caching tensors in `cache_dir` when given. Returns only when ggml cannot
/// set up (a bad device or an address it cannot listen on).
pub fn serve(
    endpoint: &Endpoint,
    devices: &[String],
    threads: usize,
    cache_dir: Option<&std::path::Path>,
) -> Result<(), String> {
    super::llama::backend().map_err(|e| e.to_string())?;
    let mut devs: Vec<ggml_backend_dev_t> = Vec::new();
    if devices.is_empty() {
        // SAFETY: plain registry queries.
        let n = unsafe { llama_cpp_sys_2::ggml_backend_dev_count() };
        for i in 0..n {
            // SAFETY: i < count.
            let d = unsafe { llama_cpp_sys_2::ggml_backend_dev_get(i) };
            // SAFETY: a live device.
            let t = unsafe { llama_cpp_sys_2::ggml_backend_dev_type(d) };
            if t == llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_GPU {
                devs.push(d);
            }
        }
        if devs.is_empty() {
            // SAFETY: a registry query.
            let cpu = unsafe {
                llama_cpp_sys_2::ggml_backend_dev_by_type(
                    llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_CPU,
                )
            };
            if cpu.is_null() {
                return Err("no CPU device in this build".into());
            }
            devs.push(cpu);
        }
    } else {
        for name in devices {
            let c = CString::new(name.as_str()).map_err(|_| format!("--device '{name}'"))?;
            // SAFETY: a valid C string; ggml compares it to its device names.
            let d = unsafe { llama_cpp_sys_2::ggml_backend_dev_by_name(c.as_ptr()) };
            if d.is_null() {
                return Err(format!(
                    "--device {name}: no such device here (devices: {})",
                    local_device_names().join(", ")
                ));
            }
            devs.push(d);
        }
    }
    let ep = CString::new(endpoint.to_string()).map_err(|_| "endpoint holds a NUL".to_string())?;
    let cache = cache_dir
        .map(|p| CString::new(p.to_string_lossy().as_bytes()))
        .transpose()
        .map_err(|_| "--cache holds a NUL byte".to_string())?;
    // SAFETY: valid C strings and a device array that outlive the call (which normally never
    // returns); ggml reads them only.
    unsafe {
        ffi::ggml_backend_rpc_start_server(
            ep.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            devs.len(),
            devs.as_mut_ptr(),
        )
    };
    Err(format!("ggml's RPC server could not serve on {endpoint}"))
}

/// ggml's names of this machine's devices.
pub fn local_device_names() -> Vec<String> {
    // SAFETY: registry queries; names are NUL-terminated and owned by ggml.
    unsafe {
        (0..llama_cpp_sys_2::ggml_backend_dev_count())
            .map(|i| {
                CStr::from_ptr(llama_cpp_sys_2::ggml_backend_dev_name(
                    llama_cpp_sys_2::ggml_backend_dev_get(i),
                ))
                .to_string_lossy()
                .into_owned()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let v = parse_endpoints("127.0.0.1:50052,gpu-box:7000").unwrap();
        assert_eq!(v[0].to_string(), "127.0.0.1:50052");
        assert_eq!(v[1].host, "gpu-box");
        assert_eq!(v[1].port, 7000);
        assert!(parse_endpoints("nohost").unwrap_err().contains("HOST:PORT"));
        assert!(parse_endpoints("a:0").unwrap_err().contains("not a port"));
        assert!(parse_endpoints("a:1,a:1").unwrap_err().contains("twice"));
        assert!(parse_endpoints(":5").is_err());
    }

    #[test]
    fn versions_follow_ggmls_rule() {
        assert!(compatible(PROTO_VERSION));
        assert!(compatible((7, 0, 9)));
        assert!(!compatible((6, 0, 0)));
        assert!(!compatible((7, 1, 0)));
    }
}
