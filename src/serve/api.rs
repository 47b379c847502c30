//! Request bodies, read field by field: every wrong type, out-of-range value and unsupported
//! feature is an error naming the field (never silently ignored).

use crate::sample::SamplerConfig;
use serde_json::{Map, Value};

/// A request that cannot be served: HTTP status, message, and the offending field.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
    /// OpenAI's `code` (e.g. `context_length_exceeded`), when there is one.
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn status(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// OpenAI's error object.
    pub fn openai(&self) -> Value {
        let kind = match self.status {
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "invalid_request_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        serde_json::json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// Ollama's error object.
    pub fn ollama(&self) -> Value {
        serde_json::json!({ "error": self.message })
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// The body as a JSON object.
pub fn object(body: &[u8]) -> ApiResult<Map<String, Value>> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let what = if std::str::from_utf8(body).is_err() {
            "the body is not valid UTF-8"
        } else {
            "the body is not valid JSON"
        };
        ApiError::status(400, format!("{what}: {e}"))
    })?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::status(400, "the body must be a JSON object")),
    }
}

fn present<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

/// A number in `[lo, hi]`, if present.
pub fn number(m: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> ApiResult<Option<f64>> {
    let Some(v) = present(m, key) else {
        return Ok(None);
    };
    let x = v
        .as_f64()
        .ok_or_else(|| ApiError::bad(key, format!("{key} must be a number")))?;
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::bad(
            key,
            format!("{key} must be between {lo} and {hi}, not {x}"),
        ));
    }
    Ok(Some(x))
}

/// An integer in `[lo, hi]`, if present.
pub fn integer(m: &Map<String, Value>, key: &str, lo: i64, hi: i64) -> ApiResult<Option<i64>> {
    let Some(v) = present(m, key) else {
        return Ok(None);
    };
    let x = v
        .as_i64()
        .or_else(|| v.as_u64().map(|_| i64::MAX))
        .ok_or_else(|| ApiError::bad(key, format!("{key} must be an integer")))?;
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::bad(
            key,
            format!("{key} must be between {lo} and {hi}, not {x}"),
        ));
    }
    Ok(Some(x))
}

pub fn boolean(m: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(key, format!("{key} must be true or false"))),
    }
}

pub fn string<'a>(m: &'a Map<String, Value>, key: &str) -> ApiResult<Option<&'a str>> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(key, format!("{key} must be a string"))),
    }
}

/// `stop`: a string or an array of at most 16 strings.
pub fn stops(m: &Map<String, Value>, key: &str) -> ApiResult<Vec<String>> {
    match present(m, key) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() <= 16 => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad(key, format!("{key} must hold strings only")))
            })
            .collect(),
        Some(Value::Array(_)) => Err(ApiError::bad(key, format!("{key}: at most 16 strings"))),
        Some(_) => Err(ApiError::bad(
            key,
            format!("{key} must be a string or an array of strings"),
        )),
    }
}

/// OpenAI fields jq does not implement: refused by name rather than ignored.
pub fn refuse_unsupported_openai(m: &Map<String, Value>) -> ApiResult<()> {
    if let Some(n) = integer(m, "n", 1, i64::MAX)? {
        if n != 1 {
            return Err(ApiError::bad(
                "n",
                format!("n = {n} is not supported: one choice per request"),
            ));
        }
    }
    if let Some(b) = integer(m, "best_of", 1, i64::MAX)? {
        if b != 1 {
            return Err(ApiError::bad("best_of", "best_of > 1 is not supported"));
        }
    }
    for key in [
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "logit_bias",
        "suffix",
    ] {
        if let Some(v) = present(m, key) {
            let empty = v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(Map::is_empty)
                || v.as_str() == Some("none");
            if !empty {
                return Err(ApiError::bad(
                    key,
                    format!("{key} is not supported by jq-run serve"),
                ));
            }
        }
    }
    if let Some(v) = present(m, "response_format") {
        if v.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::bad(
                "response_format",
                "response_format is not supported by jq-run serve (only {\"type\":\"text\"})",
            ));
        }
    }
    for key in ["logprobs", "echo"] {
        match present(m, key) {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Number(n)) if key == "logprobs" && n.as_u64() == Some(0) => {}
            Some(_) => {
                return Err(ApiError::bad(
                    key,
                    format!("{key} is not supported by jq-run serve"),
                ))
            }
        }
    }
    if present(m, "top_logprobs").is_some() {
        return Err(ApiError::bad(
            "top_logprobs",
            "top_logprobs is not supported by jq-run serve",
        ));
    }
    Ok(())
}

/// The sampling fields shared by OpenAI bodies and Ollama `options` (under their names).
#[derive(Debug)]
pub struct Names {
    pub max_tokens: &'static [&'static str],
    pub repeat_last_n: &'static str,
}

pub const OPENAI: Names = Names {
    max_tokens: &["max_completion_tokens", "max_tokens"],
    repeat_last_n: "repeat_last_n",
};
pub const OLLAMA: Names = Names {
    max_tokens: &["num_predict"],
    repeat_last_n: "repeat_last_n",
};

/// The sampler for a request (the server's flags fill what it leaves out; no seed: a fresh
/// one) and its token limit (`None`: the server's default).
pub fn sampling(
    m: &Map<String, Value>,
    names: &Names,
    defaults: &SamplerConfig,
    fresh_seed: u64,
) -> ApiResult<(SamplerConfig, Option<usize>)> {
    let mut s = defaults.clone();
    let f32_of = |x: Option<f64>| x.map(|v| v as f32);
    if let Some(t) = f32_of(number(m, "temperature", 0.0, 100.0)?) {
        s.temperature = t;
    }
    if let Some(p) = f32_of(number(m, "top_p", 0.0, 1.0)?) {
        s.top_p = p;
    }
    if let Some(p) = f32_of(number(m, "min_p", 0.0, 1.0)?) {
        s.min_p = p;
    }
    if let Some(k) = integer(m, "top_k", 0, i64::from(i32::MAX))? {
        s.top_k = k as usize;
    }
    if let Some(p) = f32_of(number(m, "presence_penalty", -2.0, 2.0)?) {
        s.presence_penalty = p;
    }
    if let Some(p) = f32_of(number(m, "frequency_penalty", -2.0, 2.0)?) {
        s.frequency_penalty = p;
    }
    if let Some(p) = f32_of(number(m, "repeat_penalty", 0.0, 100.0)?) {
        if p == 0.0 {
            return Err(ApiError::bad(
                "repeat_penalty",
                "repeat_penalty must be above 0",
            ));
        }
        s.repeat_penalty = p;
    }
    if let Some(n) = integer(m, names.repeat_last_n, 0, 1 << 20)? {
        s.repeat_last_n = n as usize;
    }
    s.seed = match present(m, "seed") {
        None => fresh_seed,
        Some(v) => v
            .as_i64()
            .map(|x| x as u64)
            .or_else(|| v.as_u64())
            .ok_or_else(|| ApiError::bad("seed", "seed must be an integer"))?,
    };
    let mut max = None;
    for key in names.max_tokens {
        if let Some(n) = integer(m, key, -1, i64::MAX)? {
            // -1 (Ollama's num_predict): until the end of generation or the context.
            max = Some(if n < 0 {
                if *key != "num_predict" {
                    return Err(ApiError::bad(key, format!("{key} must be at least 0")));
                }
                usize::MAX
            } else {
                n as usize
            });
            break;
        }
    }
    Ok((s, max))
}

/// Chat messages: `[{role, content}]`, content a string or text parts.
pub fn messages(m: &Map<String, Value>) -> ApiResult<Vec<(String, String)>> {
    let Some(Value::Array(list)) = present(m, "messages") else {
        return Err(ApiError::bad(
            "messages",
            "messages must be a non-empty array",
        ));
    };
    if list.is_empty() {
        return Err(ApiError::bad(
            "messages",
            "messages must be a non-empty array",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, msg)| {
            let at = format!("messages[{i}]");
            let o = msg
                .as_object()
                .ok_or_else(|| ApiError::bad(&at, format!("{at} must be an object")))?;
            let role = match o.get("role").and_then(Value::as_str) {
                Some(r @ ("system" | "user" | "assistant")) => r.to_string(),
                Some("developer") => "system".to_string(),
                Some(r) => {
                    return Err(ApiError::bad(
                        &format!("{at}.role"),
                        format!(
                            "{at}.role '{r}' is not supported (system, developer, user, assistant)"
                        ),
                    ))
                }
                None => {
                    return Err(ApiError::bad(
                        &format!("{at}.role"),
                        format!("{at}.role must be a string"),
                    ))
                }
            };
            if o.get("images").is_some_and(|v| !v.is_null()) {
                return Err(ApiError::bad(
                    &format!("{at}.images"),
                    "images are not supported",
                ));
            }
            if o.get("tool_calls").is_some_and(|v| !v.is_null()) {
                return Err(ApiError::bad(
                    &format!("{at}.tool_calls"),
                    "tool calls are not supported",
                ));
            }
            let content = match o.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::bad(
                                    &format!("{at}.content"),
                                    format!("{at}.content: only text parts are supported"),
                                ))
                            }
                        }
                    }
                    s
                }
                Some(Value::Null) | None if role == "assistant" => String::new(),
                _ => {
                    return Err(ApiError::bad(
                        &format!("{at}.content"),
                        format!("{at}.content must be a string"),
                    ))
                }
            };
            Ok((role, content))
        })
        .collect()
}
