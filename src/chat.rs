//! Chat formatting: a conversation of `(role, content)` turns rendered into the prompt text a
//! model was trained on.
//!
//! Three sources, one type: a llama.cpp built-in template named on the command line
//! (`--chat-template chatml`, through `llama_chat_apply_template`), a Jinja file
//! (`--chat-template FILE`, rendered by `minijinja` with Python string methods, as Hugging Face
//! templates are written), or the GGUF's own `tokenizer.chat_template`. llama.cpp's C API does
//! not run Jinja: it recognises its built-in templates by pattern. The GGUF's template is
//! therefore given to llama.cpp first (what `llama-cli` does) and, when llama.cpp does not
//! recognise it, rendered as Jinja.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, CStr, CString};
use std::path::Path;

/// A template ready to format conversations.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// Given to `llama_chat_apply_template`: a built-in name or a template text llama.cpp
    /// recognises by pattern.
    Llama(String),
    /// Rendered by minijinja with `messages`, `add_generation_prompt`, `bos_token` and
    /// `eos_token`.
    Jinja {
        source: String,
        bos: String,
        eos: String,
    },
}

/// The names of llama.cpp's built-in templates (`chatml`, `llama3`, `gemma`, ...).
pub fn builtin_names() -> Vec<String> {
    // SAFETY: with a null output and length 0 the call only returns the count.
    let n = unsafe { llama_cpp_sys_2::llama_chat_builtin_templates(std::ptr::null_mut(), 0) };
    let Ok(n) = usize::try_from(n) else {
        return Vec::new();
    };
    let mut ptrs: Vec<*const c_char> = vec![std::ptr::null(); n];
    // SAFETY: `ptrs` has room for `n` pointers; llama.cpp fills them with static strings.
    unsafe { llama_cpp_sys_2::llama_chat_builtin_templates(ptrs.as_mut_ptr(), n) };
    ptrs.into_iter()
        .filter(|p| !p.is_null())
        // SAFETY: each non-null pointer is a NUL-terminated static string owned by llama.cpp.
        .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}

/// llama.cpp's template engine on `template` (a name or a template text).
fn llama_apply(template: &str, turns: &[(String, String)], add_assistant: bool) -> Result<String> {
    let tmpl = CString::new(template).map_err(|_| anyhow!("the chat template holds a NUL byte"))?;
    let owned = turns
        .iter()
        .map(|(r, c)| Ok((CString::new(r.as_str())?, CString::new(c.as_str())?)))
        .collect::<std::result::Result<Vec<_>, std::ffi::NulError>>()
        .map_err(|_| anyhow!("a chat message holds a NUL byte"))?;
    let msgs: Vec<llama_cpp_sys_2::llama_chat_message> = owned
        .iter()
        .map(|(r, c)| llama_cpp_sys_2::llama_chat_message {
            role: r.as_ptr(),
            content: c.as_ptr(),
        })
        .collect();
    let total: usize = turns.iter().map(|(r, c)| r.len() + c.len()).sum();
    let mut buf = vec![0u8; (total * 2).max(256)];
    for _ in 0..2 {
        let len = i32::try_from(buf.len()).context("the conversation is over 2 GiB")?;
        // SAFETY: `tmpl` and every message string outlive the call; `buf` has `len` bytes.
        let n = unsafe {
            llama_cpp_sys_2::llama_chat_apply_template(
                tmpl.as_ptr(),
                msgs.as_ptr(),
                msgs.len(),
                add_assistant,
                buf.as_mut_ptr().cast(),
                len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            bail!("llama.cpp does not recognise this chat template");
        };
        if n <= buf.len() {
            buf.truncate(n);
            return String::from_utf8(buf).context("the formatted chat is not UTF-8");
        }
        buf.resize(n, 0);
    }
    bail!("llama.cpp's chat template output kept growing")
}

impl ChatTemplate {
    /// The template for `--chat-template FLAG` (a file, else a built-in name) or, without the
    /// flag, the GGUF's own. `bos`/`eos` are the vocabulary's token texts (for Jinja).
    /// `Ok(None)`: no flag and no template in the file.
    pub fn resolve(
        flag: Option<&str>,
        gguf: Option<&str>,
        bos: &str,
        eos: &str,
    ) -> Result<Option<ChatTemplate>> {
        let jinja = |source: String| ChatTemplate::Jinja {
            source,
            bos: bos.to_string(),
            eos: eos.to_string(),
        };
        let Some(flag) = flag else {
            let Some(t) = gguf else { return Ok(None) };
            let probe = [("user".to_string(), "hi".to_string())];
            return Ok(Some(if llama_apply(t, &probe, true).is_ok() {
                ChatTemplate::Llama(t.to_string())
            } else {
                jinja(t.to_string())
            }));
        };
        let p = Path::new(flag);
        if p.is_file() {
            let source = std::fs::read_to_string(p)
                .with_context(|| format!("--chat-template {flag}: reading the Jinja file"))?;
            let t = jinja(source);
            // Compiled now so a syntax error is reported at start, naming the file.
            t.check()
                .with_context(|| format!("--chat-template {flag}"))?;
            return Ok(Some(t));
        }
        let names = builtin_names();
        if names.iter().any(|n| n == flag) {
            return Ok(Some(ChatTemplate::Llama(flag.to_string())));
        }
        bail!(
            "--chat-template {flag}: not a file and not one of llama.cpp's built-in templates ({})",
            names.join(", ")
        )
    }

    fn env(source: &str) -> Result<minijinja::Environment<'_>> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", source)
            .map_err(|e| anyhow!("the Jinja chat template does not parse: {e}"))?;
        Ok(env)
    }

    fn check(&self) -> Result<()> {
        if let ChatTemplate::Jinja { source, .. } = self {
            Self::env(source)?;
        }
        Ok(())
    }

    /// The conversation as prompt text; `add_assistant` opens the model's turn at the end.
    pub fn apply(&self, turns: &[(String, String)], add_assistant: bool) -> Result<String> {
        match self {
            ChatTemplate::Llama(t) => llama_apply(t, turns, add_assistant),
            ChatTemplate::Jinja { source, bos, eos } => {
                let env = Self::env(source)?;
                let messages: Vec<_> = turns
                    .iter()
                    .map(|(r, c)| minijinja::context! { role => r, content => c })
                    .collect();
                env.get_template("chat")
                    .and_then(|t| {
                        t.render(minijinja::context! {
                            messages => messages,
                            add_generation_prompt => add_assistant,
                            bos_token => bos,
                            eos_token => eos,
                        })
                    })
                    .map_err(|e| anyhow!("rendering the Jinja chat template: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns() -> Vec<(String, String)> {
        vec![
            ("system".into(), "Be brief.".into()),
            ("user".into(), "hello".into()),
        ]
    }

    #[test]
    fn chatml_is_llama_cpps_builtin() {
        let t = ChatTemplate::resolve(Some("chatml"), None, "<s>", "</s>")
            .unwrap()
            .unwrap();
        assert_eq!(
            t.apply(&turns(), true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn unknown_name_lists_the_builtins() {
        let e = ChatTemplate::resolve(Some("no-such-template"), None, "", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--chat-template no-such-template"), "{e}");
        assert!(e.contains("chatml"), "{e}");
    }

    #[test]
    fn jinja_with_python_methods_and_an_unrecognised_gguf_template() {
        let src = "{{ bos_token }}{% for m in messages %}[{{ m.role.upper() }}] {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}";
        let t = ChatTemplate::resolve(None, Some(src), "<s>", "</s>")
            .unwrap()
            .unwrap();
        assert!(matches!(t, ChatTemplate::Jinja { .. }));
        assert_eq!(
            t.apply(&turns(), true).unwrap(),
            "<s>[SYSTEM] Be brief.\n[USER] hello\n[ASSISTANT]"
        );
    }
}
