//! `jq-run serve` end to end: the official `openai` and `ollama` Python clients (PyPI, see
//! scripts/setup) drive the server binary; the references are llama.cpp's greedy decoding
//! and tokenizer through the bindings, and the `jq-run` CLI's own output.

mod common;
use jq::engine::llama::Llama;
use jq::quant::GgmlType;
use jq::synth::{write_gemma3, Gemma3Dims};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

fn tiny() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = common::scratch_dir().join("tiny-gemma3.gguf");
        write_gemma3(&p, Gemma3Dims::TINY, 384, GgmlType::F32).unwrap();
        p
    })
}

/// The tiny model with a trained context of 1024 (the same weights).
fn tiny_1k() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = tiny().with_file_name("tiny-gemma3-1k.gguf");
        let dims = Gemma3Dims {
            n_ctx: 1024,
            ..Gemma3Dims::TINY
        };
        write_gemma3(&p, dims, 384, GgmlType::F32).unwrap();
        p
    })
}

fn real() -> PathBuf {
    let dir = std::env::var_os("JQ_MODELS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/jq/models"),
        PathBuf::from,
    );
    let p = dir.join("gemma-3-270m-q4_k_m.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (it fetches the real Gemma 3 270M)",
        p.display()
    );
    p
}

/// A running `jq-run serve`, killed on drop; its stderr is collected.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jq-run"))
            .arg("serve")
            .arg(model)
            .args(["--port", "0", "-t", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        let mut line = String::new();
        while err.read_line(&mut line).unwrap() > 0 {
            log.lock().unwrap().push_str(&line);
            if let Some(rest) = line.split("listening on http://").nth(1) {
                addr = Some(rest.split_whitespace().next().unwrap().to_string());
                break;
            }
            line.clear();
        }
        let addr =
            addr.unwrap_or_else(|| panic!("the server did not start:\n{}", log.lock().unwrap()));
        let l = log.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            for line in err.lines().map_while(Result::ok) {
                rest.push_str(&line);
                rest.push('\n');
                l.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Server { child, addr, log }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The official clients' results for `cases` (`[api, call, kwargs]`).
    fn clients(&self, key: &str, cases: Value) -> Vec<Value> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_clients.py");
        let o = Command::new("python3")
            .arg(script)
            .arg(self.base())
            .arg(key)
            .arg(cases.to_string())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "the Python clients failed (run scripts/setup to install openai and ollama):\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log.lock().unwrap()
        );
        serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
    }

    /// A raw HTTP/1.1 request: (status, body).
    fn http(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        // A body over the limit may be refused before it is all sent.
        let _ = s.write_all(body);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        let head_end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
        let mut body = resp[head_end..].to_vec();
        if text[..head_end]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}

/// llama.cpp's greedy continuation (through the bindings), cut at end of generation.
fn greedy(l: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let n_ctx = (prompt.len() + n).max(512) as u32;
    let (_, _, g) = l.greedy_decode(prompt, n, n_ctx, 1).unwrap();
    let end = g.iter().position(|&t| l.is_eog(t)).unwrap_or(g.len());
    g[..end].to_vec()
}

fn text_of(l: &Llama, ids: &[u32]) -> String {
    String::from_utf8_lossy(&ids.iter().flat_map(|&t| l.piece(t)).collect::<Vec<u8>>()).into_owned()
}

/// A JSON array of token ids.
fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn ok(v: &Value) -> &Value {
    v.get("ok")
        .unwrap_or_else(|| panic!("client call failed: {v}"))
}

#[test]
fn official_clients_against_llama_cpp_references() {
    let l = Llama::load(tiny()).unwrap();
    let srv = Server::start(
        tiny(),
        &[
            "--parallel",
            "2",
            "-c",
            "256",
            "--temp",
            "0",
            "--alias",
            "tiny",
        ],
    );
    let turns = vec![("user".to_string(), "hello world".to_string())];
    let chat_text = l.format_chat(&turns, true).unwrap();
    let chat_prompt = l.tokenize_with(&chat_text, true, true);
    let chat_ref = greedy(&l, &chat_prompt, 10);
    let comp_prompt = l.tokenize_with("the cat sat", true, true);
    let comp_ref = greedy(&l, &comp_prompt, 10);
    let comp_text = text_of(&l, &comp_ref);
    assert!(comp_text.chars().count() >= 5, "{comp_text:?}");
    // A stop string from the middle of the greedy text: the reply ends before it.
    let stop: String = comp_text.chars().skip(3).take(2).collect();
    let before = &comp_text[..comp_text.find(&stop).unwrap()];
    let msgs = json!([{"role": "user", "content": "hello world"}]);
    let r = srv.clients(
        "",
        json!([
            ["openai", "chat", {"model": "tiny", "messages": msgs, "max_tokens": 10}],
            ["openai", "chat", {"model": "tiny", "messages": msgs, "max_tokens": 10, "stream": true,
                                "stream_options": {"include_usage": true}}],
            ["openai", "completions", {"model": "tiny", "prompt": "the cat sat", "max_tokens": 10}],
            ["openai", "completions", {"model": "tiny", "prompt": "the cat sat", "max_tokens": 10, "stream": true}],
            ["openai", "completions", {"model": "tiny", "prompt": "the cat sat", "max_tokens": 10, "stop": [stop]}],
            ["openai", "completions", {"model": "tiny", "prompt": "the cat sat", "max_tokens": 16, "temperature": 1.0, "seed": 7}],
            ["openai", "completions", {"model": "tiny", "prompt": "the cat sat", "max_tokens": 16, "temperature": 1.0, "seed": 7}],
            ["openai", "completions", {"model": "tiny", "prompt": "the cat sat", "max_tokens": 16, "temperature": 1.0, "seed": 8}],
            ["openai", "models", {}],
            ["ollama", "list", {}],
            ["ollama", "generate", {"model": "tiny", "prompt": "the cat sat", "raw": true,
                                    "options": {"num_predict": 10, "temperature": 0}, "stream": false}],
            ["ollama", "generate", {"model": "tiny", "prompt": "the cat sat", "raw": true,
                                    "options": {"num_predict": 10, "temperature": 0}, "stream": true}],
            ["ollama", "ochat", {"model": "tiny", "messages": msgs, "options": {"num_predict": 10}, "stream": false}],
            ["ollama", "show", {"model": "tiny"}],
            ["openai", "chat", {"model": "other", "messages": msgs}],
        ]),
    );
    let chat_want = text_of(&l, &chat_ref);
    // Non-streamed chat: llama.cpp's greedy reply, usage counted by llama.cpp's tokenizer.
    let c = ok(&r[0]);
    assert_eq!(c["choices"][0]["message"]["content"], chat_want.as_str());
    assert_eq!(c["usage"]["prompt_tokens"], chat_prompt.len());
    assert_eq!(c["usage"]["completion_tokens"], chat_ref.len());
    assert_eq!(
        c["usage"]["total_tokens"],
        chat_prompt.len() + chat_ref.len()
    );
    let finish = if chat_ref.len() == 10 {
        "length"
    } else {
        "stop"
    };
    assert_eq!(c["choices"][0]["finish_reason"], finish);
    // Streamed chat: the deltas add up to the same text; usage in a last chunk.
    let chunks = ok(&r[1]).as_array().unwrap();
    let joined: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(joined, chat_want);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], chat_ref.len());
    // Completions, plain and streamed.
    let c = ok(&r[2]);
    assert_eq!(c["choices"][0]["text"], comp_text.as_str());
    assert_eq!(c["usage"]["prompt_tokens"], comp_prompt.len());
    let joined: String = ok(&r[3])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(joined, comp_text);
    // Stop string.
    let c = ok(&r[4]);
    assert_eq!(
        c["choices"][0]["text"], before,
        "stop {stop:?} in {comp_text:?}"
    );
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    // Seeds: same seed, same text; another seed, other text.
    let t = |i: usize| {
        ok(&r[i])["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(t(5), t(6));
    assert_ne!(t(5), t(7), "seeds 7 and 8 drew the same 16 tokens");
    // Model lists.
    assert_eq!(ok(&r[8])[0]["id"], "tiny");
    assert_eq!(ok(&r[9])["models"][0]["model"], "tiny");
    assert_eq!(ok(&r[9])["models"][0]["details"]["format"], "gguf");
    // Ollama: raw generate is the completion, chat is the chat.
    let g = ok(&r[10]);
    assert_eq!(g["response"], comp_text.as_str());
    assert_eq!(g["done"], true);
    // The same prompt ran before and both sequences still hold it: all but its last token
    // are reused, only that one is evaluated (Ollama counts evaluated tokens).
    assert_eq!(g["prompt_eval_count"], 1);
    assert_eq!(g["eval_count"], comp_ref.len());
    let lines = ok(&r[11]).as_array().unwrap();
    let joined: String = lines
        .iter()
        .map(|c| c["response"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(joined, comp_text);
    assert_eq!(lines.last().unwrap()["done"], true);
    assert_eq!(ok(&r[12])["message"]["content"], chat_want.as_str());
    assert!(ok(&r[13])["template"]
        .as_str()
        .unwrap()
        .contains("<start_of_turn>"));
    assert_eq!(r[14]["status"], 404, "{}", r[14]);
    // Every request was logged on stderr.
    let log = srv.log.lock().unwrap().clone();
    assert!(log.contains("POST /v1/chat/completions 200"), "{log}");
    assert!(log.contains("POST /v1/chat/completions 404"), "{log}");
}

/// One bad request: what is sent, the status, and a word the error message must hold.
struct Bad {
    name: &'static str,
    path: &'static str,
    headers: Vec<&'static str>,
    body: Vec<u8>,
    status: u16,
    says: &'static str,
}

#[test]
fn bad_requests_get_their_status_and_error_object_and_the_server_keeps_serving() {
    const AUTH: &str = "Authorization: Bearer sekrit";
    let srv = Server::start(
        tiny(),
        &[
            "-c",
            "64",
            "--temp",
            "0",
            "--api-key",
            "sekrit",
            "--alias",
            "tiny",
        ],
    );
    let chat = |extra: Value| {
        let mut v = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string().into_bytes()
    };
    let bad = |name, path, body: Vec<u8>, status, says| Bad {
        name,
        path,
        headers: vec![AUTH],
        body,
        status,
        says,
    };
    let cc = "/v1/chat/completions";
    let long = "the cat sat on the mat ".repeat(40);
    let mut cases = vec![
        bad(
            "broken JSON",
            cc,
            b"{\"model\": ".to_vec(),
            400,
            "not valid JSON",
        ),
        bad("not an object", cc, b"[1, 2]".to_vec(), 400, "JSON object"),
        bad(
            "invalid UTF-8",
            cc,
            b"{\"model\": \"\xff\xfe\"}".to_vec(),
            400,
            "UTF-8",
        ),
        bad("huge body", cc, vec![b' '; 9 << 20], 413, "larger than"),
        bad(
            "negative max_tokens",
            cc,
            chat(json!({"max_tokens": -5})),
            400,
            "max_tokens",
        ),
        bad(
            "max_tokens a string",
            cc,
            chat(json!({"max_tokens": "5"})),
            400,
            "max_tokens",
        ),
        bad(
            "max_tokens over the context",
            cc,
            chat(json!({"max_tokens": 100000})),
            400,
            "context",
        ),
        bad(
            "missing messages",
            cc,
            br#"{"model":"tiny"}"#.to_vec(),
            400,
            "messages",
        ),
        bad(
            "empty messages",
            cc,
            chat(json!({"messages": []})),
            400,
            "messages",
        ),
        bad(
            "bad role",
            cc,
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            400,
            "role",
        ),
        bad(
            "content a number",
            cc,
            chat(json!({"messages": [{"role": "user", "content": 5}]})),
            400,
            "content",
        ),
        bad(
            "prompt over context",
            cc,
            chat(json!({"messages": [{"role": "user", "content": long}]})),
            400,
            "context",
        ),
        bad("n = 2", cc, chat(json!({"n": 2})), 400, "n = 2"),
        bad(
            "tools",
            cc,
            chat(json!({"tools": [{"type": "function"}]})),
            400,
            "tools",
        ),
        bad(
            "response_format",
            cc,
            chat(json!({"response_format": {"type": "json_object"}})),
            400,
            "response_format",
        ),
        bad(
            "logprobs",
            cc,
            chat(json!({"logprobs": true})),
            400,
            "logprobs",
        ),
        bad(
            "unknown model",
            cc,
            chat(json!({"model": "gpt-9"})),
            404,
            "gpt-9",
        ),
        bad(
            "temperature below 0",
            cc,
            chat(json!({"temperature": -1})),
            400,
            "temperature",
        ),
        bad("top_p above 1", cc, chat(json!({"top_p": 2})), 400, "top_p"),
        bad("stop a number", cc, chat(json!({"stop": 3})), 400, "stop"),
        bad(
            "stream not a bool",
            cc,
            chat(json!({"stream": "yes"})),
            400,
            "stream",
        ),
        bad("no such route", "/v1/engines", Vec::new(), 404, "no route"),
        bad(
            "completion prompt missing",
            "/v1/completions",
            br#"{"model":"tiny"}"#.to_vec(),
            400,
            "prompt",
        ),
        bad(
            "ollama format",
            "/api/generate",
            br#"{"model":"tiny","prompt":"hi","format":"json"}"#.to_vec(),
            400,
            "format",
        ),
        bad(
            "ollama options not an object",
            "/api/chat",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":3}"#.to_vec(),
            400,
            "options",
        ),
        bad(
            "ollama context not token ids",
            "/api/generate",
            br#"{"model":"tiny","prompt":"hi","context":[1,"x"]}"#.to_vec(),
            400,
            "context",
        ),
        bad(
            "ollama context id past the vocabulary",
            "/api/generate",
            br#"{"model":"tiny","prompt":"hi","context":[1,99999999]}"#.to_vec(),
            400,
            "context",
        ),
        bad(
            "ollama keep_alive not a duration",
            "/api/chat",
            br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"keep_alive":"soon"}"#
                .to_vec(),
            400,
            "keep_alive",
        ),
        bad(
            "ollama unknown model",
            "/api/show",
            br#"{"model":"llama9"}"#.to_vec(),
            404,
            "llama9",
        ),
    ];
    cases.push(Bad {
        name: "wrong key",
        path: cc,
        headers: vec!["Authorization: Bearer nope"],
        body: chat(json!({})),
        status: 401,
        says: "API key",
    });
    cases.push(Bad {
        name: "no key",
        path: "/v1/models",
        headers: vec![],
        body: Vec::new(),
        status: 401,
        says: "API key",
    });
    assert!(cases.len() >= 20);
    for c in &cases {
        let method = if c.path == "/v1/models" {
            "GET"
        } else {
            "POST"
        };
        let (status, body) = srv.http(method, c.path, &c.headers, &c.body);
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{}: the error body is not JSON ({e}): {:?}",
                c.name,
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(status, c.status, "{}: {v}", c.name);
        // OpenAI's error object on /v1, Ollama's on /api.
        let msg = if c.path.starts_with("/api/") {
            v["error"].as_str()
        } else {
            assert!(v["error"]["type"].is_string(), "{}: {v}", c.name);
            v["error"]["message"].as_str()
        }
        .unwrap_or_else(|| panic!("{}: no error message in {v}", c.name));
        assert!(
            msg.contains(c.says),
            "{}: {msg:?} does not say {:?}",
            c.name,
            c.says
        );
    }
    // The over-context prompt is OpenAI's context_length_exceeded, naming the field.
    let (_, b) = srv.http("POST", cc, &[AUTH], &cases[11].body);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(v["error"]["param"], "messages");
    // A client that disconnects mid-stream: its sequence is freed and the next request runs.
    {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        let body = chat(json!({"stream": true, "max_tokens": 60}));
        write!(
            s,
            "POST {cc} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut first = [0u8; 64];
        let n = s.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    }
    // /health needs no key; a good request still works after all of the above.
    assert_eq!(srv.http("GET", "/health", &[], b"").0, 200);
    let (status, body) = srv.http("POST", cc, &[AUTH], &chat(json!({})));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 2);
    assert_eq!(v["object"], "chat.completion");
}

/// `jq-run MODEL -p P -n N --temp 0` on stdout, without its final newline.
fn cli_text(model: &Path, extra: &[&str], prompt: &str, n: usize) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_jq-run"))
        .arg(model)
        .args(["-p", prompt, "-n", &n.to_string(), "--temp", "0", "-t", "1"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut out = o.stdout;
    assert_eq!(out.pop(), Some(b'\n'));
    String::from_utf8_lossy(&out).into_owned()
}

fn completion(srv: &Server, prompt: &str, n: usize) -> String {
    let body = json!({"prompt": prompt, "max_tokens": n, "temperature": 0}).to_string();
    let (status, b) = srv.http("POST", "/v1/completions", &[], body.as_bytes());
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn greedy_server_output_equals_the_cli_on_llama_cpp_and_stream_layers() {
    let m = real();
    let prompt = "The capital of France is";
    for extra in [&[][..], &["--stream-layers"][..]] {
        let want = cli_text(&m, extra, prompt, 12);
        let mut args = vec!["-c", "256"];
        args.extend_from_slice(extra);
        let srv = Server::start(&m, &args);
        assert_eq!(completion(&srv, prompt, 12), want, "{extra:?}");
        // The tiny model too (random weights: many near-ties, a stricter check of the paths).
        let want = cli_text(tiny(), extra, "the cat sat", 10);
        let srv = Server::start(tiny(), &args);
        assert_eq!(completion(&srv, "the cat sat", 10), want, "{extra:?} tiny");
    }
}

/// Sampling settings shared by the CLI and the server in [`same_seed_same_text_on_llama_cpp_and_stream_layers`].
const SAMPLED: [&str; 12] = [
    "--temp",
    "1.1",
    "--top-k",
    "100",
    "--top-p",
    "0.9",
    "--min-p",
    "0.02",
    "--repeat-penalty",
    "1.2",
    "-t",
    "1",
];

/// `jq-run MODEL -p P -n N` with [`SAMPLED`] and `-s SEED`, without the final newline.
fn cli_sampled(model: &Path, extra: &[&str], prompt: &str, n: usize, seed: u64) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_jq-run"))
        .arg(model)
        .args(["-p", prompt, "-n", &n.to_string(), "-s", &seed.to_string()])
        .args(SAMPLED)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut out = o.stdout;
    assert_eq!(out.pop(), Some(b'\n'));
    String::from_utf8_lossy(&out).into_owned()
}

fn completion_sampled(srv: &Server, prompt: &str, n: usize, seed: u64) -> String {
    let body = json!({"prompt": prompt, "max_tokens": n, "temperature": 1.1, "top_k": 100,
        "top_p": 0.9, "min_p": 0.02, "repeat_penalty": 1.2, "seed": seed})
    .to_string();
    let (status, b) = srv.http("POST", "/v1/completions", &[], body.as_bytes());
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Item 5 of the issue: `--stream-layers` samples with llama.cpp's own chain over its logits,
/// so the same flags and seed give the llama.cpp engine's text (the reference: llama.cpp's
/// sampler on llama.cpp's logits), on the CLI and in the server, on `--parallel 1` and
/// `--parallel 2` (the batched sweep).
#[test]
fn same_seed_same_text_on_llama_cpp_and_stream_layers() {
    for (m, prompt, n) in [
        (real(), "Once upon a time", 24),
        (tiny().to_path_buf(), "the cat sat", 16),
    ] {
        let want = cli_sampled(&m, &[], prompt, n, 5);
        // Sampling is on: the text is neither the greedy one nor another seed's.
        assert_ne!(want, cli_text(&m, &[], prompt, n), "{}", m.display());
        assert_ne!(want, cli_sampled(&m, &[], prompt, n, 6), "{}", m.display());
        assert_eq!(
            cli_sampled(&m, &["--stream-layers"], prompt, n, 5),
            want,
            "{}: CLI --stream-layers",
            m.display()
        );
        for extra in [
            &[][..],
            &["--stream-layers"][..],
            &["--stream-layers", "--parallel", "2"][..],
        ] {
            let mut args = vec!["-c", "256"];
            args.extend_from_slice(extra);
            let srv = Server::start(&m, &args);
            assert_eq!(
                completion_sampled(&srv, prompt, n, 5),
                want,
                "{}: serve {extra:?}",
                m.display()
            );
        }
    }
}

/// Prompt-prefix reuse and Ollama's `context`: a request that continues a conversation whose
/// keys and values a sequence still holds evaluates only what follows (Ollama's
/// `prompt_eval_count`, OpenAI's `usage.prompt_tokens_details.cached_tokens`), and its reply
/// is llama.cpp's greedy continuation of the whole prompt (through the bindings). On the
/// llama.cpp engine with 2 sequences and on `--stream-layers` with 1 and 2; the official
/// clients send `context` and `keep_alive` back.
#[test]
fn a_continued_conversation_evaluates_only_its_new_tokens() {
    let m = real();
    let l = Llama::load(&m).unwrap();
    let gemma = jq::chat::ChatTemplate::resolve(Some("gemma"), None, "<bos>", "<eos>")
        .unwrap()
        .unwrap();
    let u1 = "Name a colour.";
    let u2 = "Another one.";
    let count = |v: &Value| v.as_u64().unwrap() as usize;
    for extra in [
        &["--parallel", "2"][..],
        &["--stream-layers"][..],
        &["--stream-layers", "--parallel", "2"][..],
    ] {
        let mut args = vec!["-c", "512", "--chat-template", "gemma", "--temp", "0"];
        args.extend_from_slice(extra);
        let srv = Server::start(&m, &args);
        let o = json!({"num_predict": 8, "temperature": 0});
        let msgs1 = json!([{"role": "user", "content": u1}]);
        let msgs2 = json!([{"role": "user", "content": u1},
                           {"role": "assistant", "content": {"$from": [2, "choices", 0, "message", "content"]}},
                           {"role": "user", "content": u2}]);
        let r = srv.clients(
            "",
            json!([
                ["ollama", "generate", {"model": "gemma-3-270m-q4_k_m", "prompt": u1, "options": o, "stream": false, "keep_alive": "5m"}],
                ["ollama", "generate", {"model": "gemma-3-270m-q4_k_m", "prompt": u2, "options": o, "stream": false, "keep_alive": 300,
                                        "context": {"$from": [0, "context"]}}],
                ["openai", "chat", {"model": "gemma-3-270m-q4_k_m", "messages": msgs1, "max_tokens": 8}],
                ["openai", "chat", {"model": "gemma-3-270m-q4_k_m", "messages": msgs2, "max_tokens": 8}],
                ["ollama", "generate", {"model": "gemma-3-270m-q4_k_m", "prompt": "", "keep_alive": 0}],
            ]),
        );
        let (r0, r1) = (ok(&r[0]), ok(&r[1]));
        // The first request: the templated prompt, all evaluated; its context is prompt + reply.
        let p0 = l.tokenize_chat(&gemma.apply(&[("user".into(), u1.into())], true).unwrap());
        let c0 = ids(&r0["context"]);
        assert_eq!(c0[..p0.len()], p0[..], "{extra:?}");
        assert_eq!(c0[p0.len()..], greedy(&l, &p0, 8)[..], "{extra:?}");
        assert_eq!(count(&r0["prompt_eval_count"]), p0.len(), "{extra:?}");
        // The continuation: context + the new turn (no second BOS); the cache held all of
        // the context but its last token (sampled, never evaluated).
        let turn2 = l.tokenize_with(
            &gemma.apply(&[("user".into(), u2.into())], true).unwrap(),
            false,
            true,
        );
        let p1: Vec<u32> = c0.iter().chain(&turn2).copied().collect();
        let c1 = ids(&r1["context"]);
        assert_eq!(c1[..p1.len()], p1[..], "{extra:?}");
        assert_eq!(
            c1[p1.len()..],
            greedy(&l, &p1, 8)[..],
            "{extra:?}: the cold reply"
        );
        assert_eq!(
            count(&r1["prompt_eval_count"]),
            p1.len() - (c0.len() - 1),
            "{extra:?}"
        );
        // OpenAI: the same opening as request 0 is held (all but its last token), then the
        // second chat continues request 2's reply.
        let (a2, a3) = (ok(&r[2]), ok(&r[3]));
        let details = |v: &Value| count(&v["usage"]["prompt_tokens_details"]["cached_tokens"]);
        assert_eq!(details(a2), p0.len() - 1, "{extra:?}");
        let reply = a2["choices"][0]["message"]["content"].as_str().unwrap();
        let turns3 = [
            ("user".into(), u1.into()),
            ("assistant".into(), reply.to_string()),
            ("user".into(), u2.into()),
        ];
        let p3 = l.tokenize_chat(&gemma.apply(&turns3, true).unwrap());
        assert_eq!(count(&a3["usage"]["prompt_tokens"]), p3.len(), "{extra:?}");
        let cached = details(a3);
        assert!(
            cached >= p0.len() && cached < p3.len(),
            "{extra:?}: {cached} of {}",
            p3.len()
        );
        assert_eq!(
            a3["choices"][0]["message"]["content"].as_str().unwrap(),
            text_of(&l, &greedy(&l, &p3, 8)),
            "{extra:?}: the cold reply"
        );
        assert_eq!(ok(&r[4])["done_reason"], "unload");
    }
}

/// The server's resident set (Linux /proc), in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A bounded load test on loopback: 32 clients x 20 requests (plain and streamed, OpenAI and
/// Ollama) on `--parallel 4`; every request succeeds with its whole body, and the server's
/// resident set after the last round is within a bound of what it was after the first.
#[test]
fn thirty_two_clients_twenty_requests_each_and_the_memory_stays_flat() {
    const CLIENTS: usize = 32;
    const ROUNDS: usize = 20;
    let srv = Server::start(tiny(), &["--parallel", "4", "-c", "128", "--temp", "0"]);
    let pid = srv.child.id();
    let want = completion(&srv, "the cat sat", 4);
    let one = |k: usize| -> Result<(), String> {
        let (path, body) = match k % 3 {
            0 => (
                "/v1/completions",
                json!({"prompt": "the cat sat", "max_tokens": 4, "temperature": 0}),
            ),
            1 => (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 4, "stream": true}),
            ),
            _ => (
                "/api/generate",
                json!({"prompt": "the cat sat", "raw": true,
                   "options": {"num_predict": 4, "temperature": 0}}),
            ),
        };
        let (status, b) = srv.http("POST", path, &[], body.to_string().as_bytes());
        let b = String::from_utf8_lossy(&b).into_owned();
        let complete = match k % 3 {
            0 => {
                serde_json::from_str::<Value>(&b)
                    .ok()
                    .and_then(|v| v["choices"][0]["text"].as_str().map(|t| t == want))
                    == Some(true)
            }
            1 => b.ends_with("data: [DONE]\n\n"),
            _ => b
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<Value>(l).ok())
                .is_some_and(|v| v["done"] == true),
        };
        if status == 200 && complete {
            Ok(())
        } else {
            Err(format!("{path}: {status} {b:?}"))
        }
    };
    let round = |r: usize| -> Vec<String> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..CLIENTS)
                .map(|c| s.spawn(move || one(r * CLIENTS + c)))
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().unwrap().err())
                .collect()
        })
    };
    // Warm-up: the first rounds reach every allocator arena and tokio worker.
    let mut failed = round(0);
    failed.extend(round(1));
    let warm = rss(pid);
    for r in 2..ROUNDS {
        failed.extend(round(r));
    }
    let end = rss(pid);
    assert!(
        failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    // 576 requests after warm-up: a leak of even 16 KiB per request shows.
    const BOUND: u64 = 8 << 20;
    assert!(
        end <= warm + BOUND,
        "the resident set grew from {warm} to {end} bytes after warm-up"
    );
    eprintln!(
        "rss after warm-up {warm}, after {} requests {end}",
        CLIENTS * ROUNDS
    );
}

/// The Jarvis fixture converted by `jq-convert` (built beside `jq-run` by the workspace build),
/// in a temporary directory that goes away with the returned guard.
fn jarvis() -> (tempfile::TempDir, PathBuf) {
    let exe = Path::new(env!("CARGO_BIN_EXE_jq-run")).with_file_name("jq-convert");
    assert!(
        exe.exists(),
        "{} is missing: cargo build --release --workspace",
        exe.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("jarvis.gguf");
    let npz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jarvis/tiny-norm/model.npz");
    let o = Command::new(exe)
        .arg("npz-to-gguf")
        .arg(npz)
        .args(["--type", "f32", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, out)
}

#[test]
fn greedy_server_output_equals_the_cli_on_the_native_engine() {
    let (_dir, m) = jarvis();
    let want = cli_text(&m, &[], "the cat", 8);
    let srv = Server::start(&m, &[]);
    assert_eq!(completion(&srv, "the cat", 8), want);
    // Two requests at once are served one after the other, each as it would be alone.
    let got: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| completion(&srv, "the cat", 8)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, [want.clone(), want]);
}

#[test]
fn eight_clients_on_parallel_4_get_what_they_get_alone() {
    eight_clients(&["--parallel", "4", "-c", "256"]);
}

/// The same on `--stream-layers` with most layers streamed: the active sequences' next tokens
/// and the admitted prompts go through one sweep of the weights per micro-batch (checked here
/// from the server's `-v` step lines, and in tests/stream.rs from the executor's statistics).
#[test]
fn eight_clients_on_parallel_4_stream_layers_get_what_they_get_alone() {
    let log = eight_clients(&[
        "--parallel",
        "4",
        "-c",
        "256",
        "--stream-layers",
        "--vram-budget",
        "208MiB",
        "-v",
    ]);
    // Every step (`-v` logs one line each) swept the streamed layers once per micro-batch,
    // whatever sequences and prompts it held; some steps held several sequences, some
    // several prompts (the 8 requests arrive together).
    let steps: Vec<(usize, usize, usize, usize, f64)> = log
        .lines()
        .filter_map(|l| {
            let r = l.strip_prefix("stream step: ")?;
            let num = |after: &str| -> Option<f64> {
                r.split(after)
                    .nth(1)?
                    .split(|c: char| c != '.' && !c.is_ascii_digit())
                    .find(|w| !w.is_empty())?
                    .parse()
                    .ok()
            };
            let n_seq = r.split(' ').next()?.parse().ok()?;
            Some((
                n_seq,
                num("(")? as usize,
                num("), ")? as usize,
                num("micro-batches of ")? as usize,
                num(": ")?,
            ))
        })
        .collect();
    assert!(!steps.is_empty(), "no step lines in the log:\n{log}");
    eprintln!(
        "{} steps, first ones (sequences, prompts, tokens, micro-batch, sweeps): {:?}",
        steps.len(),
        &steps[..steps.len().min(6)]
    );
    for &(_, _, tokens, ub, sweeps) in &steps {
        assert_eq!(sweeps, tokens.div_ceil(ub) as f64, "{steps:?}");
    }
    assert!(steps.iter().any(|s| s.0 > 1), "{steps:?}");
    assert!(steps.iter().any(|s| s.1 > 1), "{steps:?}");
}

/// Returns the server's log.
fn eight_clients(args: &[&str]) -> String {
    let m = real();
    let l = Llama::load(&m).unwrap();
    let prompts = [
        "The capital of France is",
        "Water boils at",
        "The largest planet in the solar system is",
        "Once upon a time",
        "The first president of the United States was",
        "To make bread you need",
        "The speed of light is",
        "In 1492, Columbus",
    ];
    const N: usize = 12;
    // Batch composition changes which kernels run (and, for Q4_K weights, how activations
    // are quantized): a greedy text must match wherever the reference's top-1 margin exceeds
    // this bound. Measured: a step with a margin of 0.16 flipped under batching; a wrong
    // position or a mixed-up sequence changes tokens whose margins are several units.
    const BOUND: f32 = 0.5;
    let srv = Server::start(&m, args);
    if args.contains(&"--stream-layers") {
        let log = srv.log.lock().unwrap().clone();
        let streamed = log
            .split("streamed layers (")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        assert!(streamed >= 9, "most layers must stream:\n{log}");
    }
    let got: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(|| completion(&srv, p, N)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let v = l.n_vocab();
    for (p, got) in prompts.iter().zip(&got) {
        let ids = l.tokenize_with(p, true, true);
        let gen = greedy(&l, &ids, N);
        let all: Vec<u32> = ids.iter().chain(&gen).copied().collect();
        let logits = l.prompt_logits(&all, 512, 1).unwrap();
        // The first step whose top-1 margin is within the bound: text is only required to
        // match before it.
        let close = (0..gen.len()).find(|&i| {
            let row = &logits[(ids.len() - 1 + i) * v..(ids.len() + i) * v];
            let mut s: Vec<f32> = row.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            s[0] - s[1] < BOUND
        });
        let want = text_of(&l, &gen[..close.unwrap_or(gen.len())]);
        if close.is_none() {
            assert_eq!(got, &want, "{p:?}");
        } else {
            assert!(got.starts_with(&want), "{p:?}: {got:?} vs {want:?}");
        }
    }
    let log = srv.log.lock().unwrap().clone();
    log
}

/// Prompt-prefix reuse past the sliding window: the tiny Gemma-3 fixture attends over a
/// window of 8 positions on 5 of its 6 layers; a conversation of over 40 positions continued
/// through Ollama's `context` (raw prompts) reuses all but one of them, and the reply still
/// equals llama.cpp's greedy continuation of the whole prompt from a fresh context (the
/// bindings). On llama.cpp, by default (as llama-server) the sliding layers' cache is
/// window-sized: while it still has room for the whole conversation nothing is dropped and
/// the positions are reused; a conversation longer than it (over 300 positions, the cache
/// of `-b 16` holds 256) loses its early positions and is evaluated again from its start,
/// with the same reply; `--swa-full` keeps them all and reuses them.
#[test]
fn prefix_reuse_past_the_sliding_window_gives_the_cold_reply() {
    let sentence = "the cat sat on the mat and the dog ran to the cat and the cat ran to the dog";
    let n = 16;
    // (flags, sentences in the first prompt, evaluated again from the start)
    let short: &[&str] = &["-c", "128"];
    let long: &[&str] = &["-c", "1024", "-b", "16", "--alias", "tiny-gemma3"];
    for (extra, reps, again) in [
        (vec![short, &["--parallel", "2"]], 1, false),
        (vec![short, &["--parallel", "2", "--swa-full"]], 1, false),
        (vec![short, &["--stream-layers"]], 1, false),
        (
            vec![short, &["--stream-layers", "--parallel", "2"]],
            1,
            false,
        ),
        (vec![long, &["--parallel", "2"]], 14, true),
        (vec![long, &["--parallel", "2", "--swa-full"]], 14, false),
    ] {
        let m = if reps > 1 { tiny_1k() } else { tiny() };
        let l = Llama::load(m).unwrap();
        let args: Vec<&str> = extra.concat();
        let extra = &args;
        let p0_text = vec![sentence; reps].join(" and ");
        let p0_text = p0_text.as_str();
        let p0 = l.tokenize_with(p0_text, l.model.vocab().should_add_bos(), true);
        assert!(p0.len() > 2 * 8, "{} prompt tokens", p0.len());
        if again {
            assert!(p0.len() > 300, "{} prompt tokens", p0.len());
        }
        let srv = Server::start(m, &args);
        let gen = |body: Value| -> Value {
            let (status, b) = srv.http("POST", "/api/generate", &[], body.to_string().as_bytes());
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(status, 200, "{extra:?}: {v}");
            v
        };
        let o = json!({"num_predict": n, "temperature": 0});
        let r0 = gen(
            json!({"model": "tiny-gemma3", "prompt": p0_text, "raw": true, "stream": false, "options": o}),
        );
        let c0 = ids(&r0["context"]);
        assert_eq!(c0[..p0.len()], p0[..], "{extra:?}");
        assert_eq!(c0[p0.len()..], greedy(&l, &p0, n)[..], "{extra:?}");
        let more = " and the dog sat on the mat";
        let r1 = gen(
            json!({"model": "tiny-gemma3", "prompt": more, "raw": true, "stream": false, "options": o,
                             "context": c0}),
        );
        let p1: Vec<u32> = c0
            .iter()
            .copied()
            .chain(l.tokenize_with(more, false, true))
            .collect();
        assert!(c0.len() > 5 * 8, "{extra:?}: {} positions held", c0.len());
        let c1 = ids(&r1["context"]);
        assert_eq!(c1[..p1.len()], p1[..], "{extra:?}");
        assert_eq!(
            c1[p1.len()..],
            greedy(&l, &p1, n)[..],
            "{extra:?}: the cold reply"
        );
        // Only what follows the held positions was evaluated (the last context token was
        // sampled, never evaluated), or everything when they are gone.
        assert_eq!(
            r1["prompt_eval_count"].as_u64().unwrap() as usize,
            if again {
                p1.len()
            } else {
                p1.len() - (c0.len() - 1)
            },
            "{extra:?}"
        );
    }
}
