//! The routes: OpenAI (`/v1/chat/completions`, `/v1/completions`, `/v1/models`), Ollama
//! (`/api/generate`, `/api/chat`, `/api/tags`, `/api/show`, `/api/version`) and `/health`.
//! Streams are server-sent events ending in `data: [DONE]` (OpenAI) or NDJSON (Ollama, the
//! default there as in Ollama). A response whose client disconnects drops its event
//! channel, which frees the sequence at the worker's next step.

use super::api::{self, ApiError, ApiResult};
use super::worker::{Event, Job, Report};
use super::Server;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type App = Arc<Server>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    OpenAi,
    Ollama,
}

fn json_response(status: u16, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(d: Dialect, e: &ApiError) -> Response {
    json_response(
        e.status,
        &match d {
            Dialect::OpenAi => e.openai(),
            Dialect::Ollama => e.ollama(),
        },
    )
}

/// A handler's result as a response: the dialect's error object for an error.
fn answer(d: Dialect, r: ApiResult<Response>) -> Response {
    r.unwrap_or_else(|e| error_response(d, &e))
}

fn dialect_of(path: &str) -> Dialect {
    if path.starts_with("/api/") {
        Dialect::Ollama
    } else {
        Dialect::OpenAi
    }
}

/// The routes over a loaded model.
pub fn router(app: App) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { json_response(200, &json!({"status": "ok"})) }),
        )
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/api/generate", post(ollama_generate))
        .route("/api/chat", post(ollama_chat))
        .route("/api/tags", get(ollama_tags))
        .route("/api/show", post(ollama_show))
        .route(
            "/api/version",
            get(|| async { json_response(200, &json!({"version": env!("CARGO_PKG_VERSION")})) }),
        )
        .fallback(|req: Request| async move {
            let p = req.uri().path().to_string();
            error_response(
                dialect_of(&p),
                &ApiError::status(404, format!("no route {} {p}", req.method())),
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(super::MAX_BODY))
        .layer(middleware::from_fn(log))
        .with_state(app)
}

/// One line per request on stderr: method, path, status, time to the response head.
async fn log(req: Request, next: Next) -> Response {
    let (m, p) = (req.method().clone(), req.uri().path().to_string());
    let t = Instant::now();
    let r = next.run(req).await;
    eprintln!(
        "{m} {p} {} {:.1} ms",
        r.status().as_u16(),
        t.elapsed().as_secs_f64() * 1e3
    );
    r
}

/// `--api-key`: `Authorization: Bearer KEY` on everything but /health, compared in constant
/// time.
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    use subtle::ConstantTimeEq;
    if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        next.run(req).await
    } else {
        error_response(
            dialect_of(req.uri().path()),
            &ApiError::status(
                401,
                "invalid or missing API key (Authorization: Bearer KEY)",
            )
            .with_code("invalid_api_key"),
        )
    }
}

fn body_object(body: Result<Bytes, BytesRejection>) -> ApiResult<Map<String, Value>> {
    let b = body.map_err(|e| {
        let s = e.status().as_u16();
        if s == 413 {
            ApiError::status(
                413,
                format!("the request body is larger than {} bytes", super::MAX_BODY),
            )
        } else {
            ApiError::status(s, e.body_text())
        }
    })?;
    api::object(&b)
}

static SEEDS: AtomicU64 = AtomicU64::new(0);

/// A seed for a request that gives none: the clock and a counter.
fn fresh_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ SEEDS.fetch_add(0x9E37_79B9, Ordering::Relaxed)) & 0xFFFF_FFFF
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 UTC time (Ollama's `created_at`, `modified_at`).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The model a request names must be this one (absent: this one).
fn check_model(app: &Server, m: &Map<String, Value>, d: Dialect) -> ApiResult<()> {
    let Some(name) = api::string(m, "model")? else {
        return Ok(());
    };
    let ours = &app.info.name;
    let file = app
        .info
        .path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("");
    let ok = name == ours
        || name == file
        || (d == Dialect::Ollama && name.strip_suffix(":latest") == Some(ours));
    if ok {
        Ok(())
    } else {
        Err(ApiError {
            status: 404,
            message: format!("model '{name}' not found: this server runs '{ours}'"),
            param: Some("model".into()),
            code: Some("model_not_found"),
        })
    }
}

/// A checked generation: the prompt's tokens and the job's settings.
struct Gen {
    job_prompt: Vec<u32>,
    sampler: crate::sample::SamplerConfig,
    max_tokens: usize,
    stop: Vec<String>,
}

fn prepare(
    app: &Server,
    m: &Map<String, Value>,
    names: &api::Names,
    prompt: Vec<u32>,
    param: &str,
    stop_key: &str,
) -> ApiResult<Gen> {
    let (sampler, max) = api::sampling(m, names, &app.defaults, fresh_seed())?;
    let stop = api::stops(m, stop_key)?;
    if prompt.is_empty() {
        return Err(ApiError::bad(param, "the prompt is empty"));
    }
    if prompt.len() >= app.n_ctx {
        return Err(ApiError {
            status: 400,
            message: format!(
                "the prompt is {} tokens, the context holds {} (one more is needed for the reply)",
                prompt.len(),
                app.n_ctx
            ),
            param: Some(param.into()),
            code: Some("context_length_exceeded"),
        });
    }
    let max_tokens = match max {
        Some(n) if n != usize::MAX && n > app.n_ctx => {
            return Err(ApiError::bad(
                names.max_tokens[0],
                format!(
                    "{} = {n} is more than the context of {} tokens",
                    names.max_tokens[0], app.n_ctx
                ),
            ))
        }
        Some(n) => n,
        None => app.default_max_tokens,
    };
    Ok(Gen {
        job_prompt: prompt,
        sampler,
        max_tokens,
        stop,
    })
}

fn tokenize(app: &Server, text: &str, chat: bool, param: &str) -> ApiResult<Vec<u32>> {
    // More bytes than the context could hold in its longest tokens is refused untokenized.
    let r = if chat {
        app.vocab.tokenize_chat(text)
    } else {
        app.vocab.tokenize(text)
    };
    r.map_err(|e| ApiError::bad(param, format!("{param}: {e}")))
}

fn format_chat(app: &Server, turns: &[(String, String)]) -> ApiResult<String> {
    let Some(t) = &app.template else {
        return Err(ApiError::bad(
            "messages",
            "this model has no chat template (start the server with --chat-template NAME|FILE)",
        ));
    };
    t.apply(turns, true)
        .map_err(|e| ApiError::bad("messages", format!("{e:#}")))
}

/// Sends the job; the receiver yields its events.
fn submit(app: &Server, g: Gen) -> ApiResult<UnboundedReceiver<Event>> {
    let (tx, rx) = unbounded_channel();
    app.jobs
        .send(Job {
            prompt: g.job_prompt,
            max_tokens: g.max_tokens,
            sampler: g.sampler,
            stop: g.stop,
            events: tx,
        })
        .map_err(|_| ApiError::status(500, "the engine has stopped"))?;
    Ok(rx)
}

/// Every event of a non-streamed job: the text and the report.
async fn collect(mut rx: UnboundedReceiver<Event>) -> ApiResult<(String, Report)> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(r) => return Ok((text, r)),
            Event::Failed(e) => return Err(ApiError::status(500, e)),
        }
    }
    Err(ApiError::status(500, "the engine dropped the request"))
}

fn usage(r: &Report) -> Value {
    json!({
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.generated_tokens,
        "total_tokens": r.prompt_tokens + r.generated_tokens,
        // As OpenAI and llama-server: prompt tokens whose cache was reused.
        "prompt_tokens_details": {"cached_tokens": r.cached_tokens},
    })
}

/// A streamed reply in either dialect. OpenAI: server-sent events (`data: {..}` then
/// `data: [DONE]`), opened with `first` when given; Ollama: NDJSON. `text` writes a piece of
/// text, `done` the end (from the report) and a failure is the dialect's error object. A
/// client that goes away drops the receiver, which frees its sequence at the next step.
fn streamed_reply(
    rx: UnboundedReceiver<Event>,
    d: Dialect,
    first: Option<Value>,
    text: impl Fn(&str) -> Value + Send + 'static,
    done: impl Fn(&Report) -> Vec<Value> + Send + 'static,
) -> Response {
    let frame = move |v: &Value| match d {
        Dialect::OpenAi => format!("data: {v}\n\n"),
        Dialect::Ollama => format!("{v}\n"),
    };
    let mut start = first.map(|v| frame(&v)).unwrap_or_default();
    // The job's events up to its last (a channel closed early reads as a failure).
    let events = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let ev = rx
            .recv()
            .await
            .unwrap_or_else(|| Event::Failed("the engine dropped the request".into()));
        let more = matches!(ev, Event::Text(_));
        Some((ev, more.then_some(rx)))
    });
    let s = futures_util::StreamExt::map(events, move |ev| {
        let (values, last) = match ev {
            Event::Text(t) => (vec![text(&t)], false),
            Event::Done(r) => (done(&r), true),
            Event::Failed(e) => {
                let e = ApiError::status(500, e);
                let v = match d {
                    Dialect::OpenAi => e.openai(),
                    Dialect::Ollama => e.ollama(),
                };
                (vec![v], true)
            }
        };
        let mut out = std::mem::take(&mut start);
        for v in &values {
            out.push_str(&frame(v));
        }
        if last && d == Dialect::OpenAi {
            out.push_str("data: [DONE]\n\n");
        }
        Ok::<_, std::convert::Infallible>(Bytes::from(out))
    });
    let mut r = Response::new(Body::from_stream(s));
    let ct = match d {
        Dialect::OpenAi => "text/event-stream",
        Dialect::Ollama => "application/x-ndjson",
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// OpenAI's streamed reply: `chunk(delta, finish_reason)` writes one chunk; the first has an
/// empty delta (the role, for chat), the last the finish reason, then the usage chunk when
/// `stream_options.include_usage` asked for it.
fn openai_stream(
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    chunk: impl Fn(Option<&str>, Option<&str>) -> Value + Send + Sync + 'static,
) -> Response {
    let chunk = Arc::new(chunk);
    let c = chunk.clone();
    streamed_reply(
        rx,
        Dialect::OpenAi,
        Some(chunk(Some(""), None)),
        move |t| c(Some(t), None),
        move |r| {
            let mut last = chunk(None, Some(r.finish.reason()));
            if !include_usage {
                return vec![last];
            }
            last["usage"] = Value::Null;
            let mut u = chunk(None, None);
            u["choices"] = json!([]);
            u["usage"] = usage(r);
            vec![last, u]
        },
    )
}

fn stream_flags(m: &Map<String, Value>, default: bool) -> ApiResult<(bool, bool)> {
    let stream = api::boolean(m, "stream")?.unwrap_or(default);
    let include_usage = match m.get("stream_options").filter(|v| !v.is_null()) {
        None => false,
        Some(Value::Object(o)) => api::boolean(o, "include_usage")
            .map_err(|_| {
                ApiError::bad(
                    "stream_options.include_usage",
                    "stream_options.include_usage must be true or false",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::bad(
                "stream_options",
                "stream_options must be an object",
            ))
        }
    };
    Ok((stream, include_usage))
}

fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{:x}", fresh_seed())
}

async fn chat_completions(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(Dialect::OpenAi, chat_completions_inner(&app, body).await)
}

async fn chat_completions_inner(
    app: &Server,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let m = body_object(body)?;
    api::refuse_unsupported_openai(&m)?;
    check_model(app, &m, Dialect::OpenAi)?;
    let turns = api::messages(&m)?;
    let (stream, include_usage) = stream_flags(&m, false)?;
    let text = format_chat(app, &turns)?;
    let prompt = tokenize(app, &text, true, "messages")?;
    let g = prepare(app, &m, &api::OPENAI, prompt, "messages", "stop")?;
    let rx = submit(app, g)?;
    let (id, created, model) = (completion_id("chatcmpl"), now_s(), app.info.name.clone());
    if stream {
        return Ok(openai_stream(rx, include_usage, move |delta, finish| {
            let d = match delta {
                Some("") => json!({"role": "assistant", "content": ""}),
                Some(t) => json!({"content": t}),
                None => json!({}),
            };
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}]})
        }));
    }
    let (text, r) = collect(rx).await?;
    Ok(json_response(
        200,
        &json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": null, "finish_reason": r.finish.reason()}],
            "usage": usage(&r)}),
    ))
}

async fn completions(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(Dialect::OpenAi, completions_inner(&app, body).await)
}

async fn completions_inner(
    app: &Server,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let m = body_object(body)?;
    api::refuse_unsupported_openai(&m)?;
    check_model(app, &m, Dialect::OpenAi)?;
    let text = match m.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(a)) if a.len() > 1 => {
            return Err(ApiError::bad("prompt", "one prompt per request"))
        }
        _ => return Err(ApiError::bad("prompt", "prompt must be a string")),
    };
    let (stream, include_usage) = stream_flags(&m, false)?;
    let prompt = tokenize(app, &text, false, "prompt")?;
    let g = prepare(app, &m, &api::OPENAI, prompt, "prompt", "stop")?;
    let rx = submit(app, g)?;
    let (id, created, model) = (completion_id("cmpl"), now_s(), app.info.name.clone());
    if stream {
        return Ok(openai_stream(rx, include_usage, move |delta, finish| {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
        }));
    }
    let (text, r) = collect(rx).await?;
    Ok(json_response(
        200,
        &json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": r.finish.reason()}],
            "usage": usage(&r)}),
    ))
}

async fn models(State(app): State<App>) -> Response {
    json_response(
        200,
        &json!({"object": "list", "data": [{
            "id": app.info.name, "object": "model", "created": now_s(), "owned_by": "jq",
        }]}),
    )
}

// ---------------------------------------------------------------- Ollama

fn ollama_options(m: &Map<String, Value>) -> ApiResult<Map<String, Value>> {
    for key in ["format", "tools", "images", "suffix"] {
        if m.get(key).is_some_and(|v| {
            !(v.is_null() || v.as_str() == Some("") || v.as_array().is_some_and(Vec::is_empty))
        }) {
            return Err(ApiError::bad(
                key,
                format!("{key} is not supported by jq-run serve"),
            ));
        }
    }
    match m.get("options") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(ApiError::bad("options", "options must be an object")),
    }
}

fn ollama_done(model: &str, r: &Report, extra: (&str, Value)) -> Value {
    let ns = |d: std::time::Duration| d.as_nanos() as u64;
    let mut v = json!({
        "model": model, "created_at": rfc3339(now_s()), "done": true,
        "done_reason": r.finish.reason(),
        "total_duration": ns(r.prompt_time + r.decode_time), "load_duration": 0,
        // As Ollama: the prompt tokens evaluated, not those whose cache was reused.
        "prompt_eval_count": r.prompt_tokens - r.cached_tokens,
        "prompt_eval_duration": ns(r.prompt_time),
        "eval_count": r.generated_tokens, "eval_duration": ns(r.decode_time),
    });
    v[extra.0] = extra.1;
    v
}

/// Ollama's `keep_alive`: a duration ("5m", "1h30m", "30s", "0") or a number of seconds
/// (negative: forever). Accepted and checked; the model stays loaded for the process's life.
fn keep_alive(m: &Map<String, Value>) -> ApiResult<Option<f64>> {
    let bad = || {
        ApiError::bad(
            "keep_alive",
            "keep_alive must be a number of seconds or a duration such as \"5m\"",
        )
    };
    match m.get("keep_alive") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) => {
            let s = s.trim();
            if let Ok(x) = s.parse::<f64>() {
                return Ok(Some(x));
            }
            // Go's time.ParseDuration units.
            let (mut total, mut rest, neg) = match s.strip_prefix('-') {
                Some(r) => (0.0, r, true),
                None => (0.0, s, false),
            };
            if rest.is_empty() {
                return Err(bad());
            }
            while !rest.is_empty() {
                let n = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .ok_or_else(bad)?;
                let x: f64 = rest[..n].parse().map_err(|_| bad())?;
                let u = rest[n..]
                    .find(|c: char| c.is_ascii_digit() || c == '.')
                    .map_or(rest.len(), |k| n + k);
                let scale = match &rest[n..u] {
                    "ns" => 1e-9,
                    "us" | "µs" => 1e-6,
                    "ms" => 1e-3,
                    "s" => 1.0,
                    "m" => 60.0,
                    "h" => 3600.0,
                    _ => return Err(bad()),
                };
                total += x * scale;
                rest = &rest[u..];
            }
            Ok(Some(if neg { -total } else { total }))
        }
        Some(_) => Err(bad()),
    }
}

/// Ollama's `context`: token ids an earlier `/api/generate` reply returned.
fn ollama_context(app: &Server, m: &Map<String, Value>) -> ApiResult<Option<Vec<u32>>> {
    let n_vocab = app.vocab.n_vocab() as u64;
    match m.get("context") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.is_empty() => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&t| t < n_vocab)
                    .map(|t| t as u32)
                    .ok_or_else(|| {
                        ApiError::bad(
                            "context",
                            format!("context must hold token ids below {n_vocab}"),
                        )
                    })
            })
            .collect::<ApiResult<Vec<u32>>>()
            .map(Some),
        Some(_) => Err(ApiError::bad(
            "context",
            "context must be an array of token ids",
        )),
    }
}

/// Ollama's streamed reply: `piece(text)` is the (key, value) a line carries, `done` the last
/// line.
fn ollama_stream(
    rx: UnboundedReceiver<Event>,
    model: String,
    piece: impl Fn(&str) -> (&'static str, Value) + Send + 'static,
    done: impl Fn(&Report, &str) -> Value + Send + 'static,
) -> Response {
    streamed_reply(
        rx,
        Dialect::Ollama,
        None,
        move |t| {
            let (k, v) = piece(t);
            let mut o = json!({"model": model, "created_at": rfc3339(now_s()), "done": false});
            o[k] = v;
            o
        },
        move |r| vec![done(r, "")],
    )
}

async fn ollama_generate(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(Dialect::Ollama, ollama_generate_inner(&app, body).await)
}

async fn ollama_generate_inner(
    app: &Server,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let m = body_object(body)?;
    check_model(app, &m, Dialect::Ollama)?;
    let opts = ollama_options(&m)?;
    let prompt = api::string(&m, "prompt")?.unwrap_or("");
    let raw = api::boolean(&m, "raw")?.unwrap_or(false);
    let system = api::string(&m, "system")?;
    let stream = api::boolean(&m, "stream")?.unwrap_or(true);
    let unload = keep_alive(&m)? == Some(0.0);
    let context = ollama_context(app, &m)?;
    let model = app.info.name.clone();
    if prompt.is_empty() {
        // Ollama's "load the model" request (or, with keep_alive 0, "unload": the model
        // stays loaded here, one model per process).
        let reason = if unload { "unload" } else { "load" };
        return Ok(json_response(
            200,
            &json!({"model": model, "created_at": rfc3339(now_s()), "response": "", "done": true, "done_reason": reason}),
        ));
    }
    // As Ollama: the prompt goes through the chat template unless raw (or there is none).
    let (text, chat) = match (&app.template, raw) {
        (Some(t), false) => {
            let mut turns = Vec::new();
            if let Some(s) = system {
                turns.push(("system".to_string(), s.to_string()));
            }
            turns.push(("user".to_string(), prompt.to_string()));
            let text = t
                .apply(&turns, true)
                .map_err(|e| ApiError::bad("prompt", format!("{e:#}")))?;
            (text, true)
        }
        _ => (prompt.to_string(), false),
    };
    // A `context` from an earlier reply continues it: its tokens, then this prompt's (no
    // second BOS), so the sequence that still holds them evaluates only the new ones.
    let ids = match context {
        Some(mut c) => {
            c.extend(
                app.vocab
                    .tokenize_more(&text)
                    .map_err(|e| ApiError::bad("prompt", format!("prompt: {e}")))?,
            );
            c
        }
        None => tokenize(app, &text, chat, "prompt")?,
    };
    let g = prepare(app, &opts, &api::OLLAMA, ids, "prompt", "stop")?;
    let rx = submit(app, g)?;
    let m2 = model.clone();
    let with_context = move |r: &Report, text: &str| {
        let mut v = ollama_done(&m2, r, ("response", json!(text)));
        v["context"] = json!(r.context);
        v
    };
    if stream {
        return Ok(ollama_stream(
            rx,
            model,
            |t| ("response", json!(t)),
            with_context,
        ));
    }
    let (text, r) = collect(rx).await?;
    Ok(json_response(200, &with_context(&r, &text)))
}

async fn ollama_chat(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    answer(Dialect::Ollama, ollama_chat_inner(&app, body).await)
}

async fn ollama_chat_inner(
    app: &Server,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let m = body_object(body)?;
    check_model(app, &m, Dialect::Ollama)?;
    let opts = ollama_options(&m)?;
    let turns = api::messages(&m)?;
    let stream = api::boolean(&m, "stream")?.unwrap_or(true);
    let text = format_chat(app, &turns)?;
    let ids = tokenize(app, &text, true, "messages")?;
    let g = prepare(app, &opts, &api::OLLAMA, ids, "messages", "stop")?;
    let rx = submit(app, g)?;
    let model = app.info.name.clone();
    let msg = |t: &str| ("message", json!({"role": "assistant", "content": t}));
    keep_alive(&m)?;
    if stream {
        let m2 = model.clone();
        return Ok(ollama_stream(rx, model, msg, move |r, t| {
            ollama_done(&m2, r, msg(t))
        }));
    }
    let (text, r) = collect(rx).await?;
    Ok(json_response(200, &ollama_done(&model, &r, msg(&text))))
}

fn details(app: &Server) -> Value {
    let p = app.info.n_params as f64;
    let size = if p >= 1e9 {
        format!("{:.1}B", p / 1e9)
    } else {
        format!("{:.0}M", p / 1e6)
    };
    json!({"parent_model": "", "format": "gguf", "family": app.info.arch,
           "families": [app.info.arch], "parameter_size": size,
           "quantization_level": app.info.quant})
}

async fn ollama_tags(State(app): State<App>) -> Response {
    let modified = std::fs::metadata(&app.info.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    json_response(
        200,
        &json!({"models": [{
            "name": app.info.name, "model": app.info.name, "modified_at": rfc3339(modified),
            "size": app.info.size_bytes, "digest": "", "details": details(&app),
        }]}),
    )
}

async fn ollama_show(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| {
        let m = body_object(body)?;
        let name = api::string(&m, "model")?
            .or(api::string(&m, "name")?)
            .ok_or_else(|| ApiError::bad("model", "model must be a string"))?
            .to_string();
        let mut one = Map::new();
        one.insert("model".into(), Value::String(name));
        check_model(&app, &one, Dialect::Ollama)?;
        Ok(json!({
            "license": "", "modelfile": format!("FROM {}\n", app.info.path.display()),
            "parameters": "", "template": app.template_text, "details": details(&app),
            "model_info": {"general.architecture": app.info.arch,
                           "general.parameter_count": app.info.n_params,
                           "jq.engine": app.info.engine,
                           "jq.context_length": app.n_ctx},
            "capabilities": ["completion"],
            "modified_at": rfc3339(now_s()),
        }))
    })();
    answer(Dialect::Ollama, r.map(|v| json_response(200, &v)))
}

/// Serves `app` on `listener` until Ctrl-C (or SIGTERM).
pub async fn serve(listener: tokio::net::TcpListener, app: App) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing the SIGTERM handler");
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            eprintln!("serve: shutting down");
        })
        .await
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    fn ka(v: Value) -> Result<Option<f64>, String> {
        let mut m = Map::new();
        m.insert("keep_alive".into(), v);
        super::keep_alive(&m).map_err(|e| e.message)
    }

    /// Ollama's keep_alive as Go's time.ParseDuration reads it, or seconds.
    #[test]
    fn keep_alive_durations() {
        assert_eq!(ka(json!("5m")), Ok(Some(300.0)));
        assert_eq!(ka(json!("1h30m")), Ok(Some(5400.0)));
        assert_eq!(ka(json!("1.5s")), Ok(Some(1.5)));
        assert_eq!(ka(json!("-1m")), Ok(Some(-60.0)));
        assert_eq!(ka(json!("0")), Ok(Some(0.0)));
        assert_eq!(ka(json!(300)), Ok(Some(300.0)));
        assert_eq!(ka(json!(-1)), Ok(Some(-1.0)));
        assert_eq!(ka(Value::Null), Ok(None));
        for bad in [
            json!("5 minutes"),
            json!("m"),
            json!(""),
            json!(true),
            json!([1]),
        ] {
            let e = ka(bad.clone()).unwrap_err();
            assert!(e.contains("keep_alive"), "{bad}: {e}");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
