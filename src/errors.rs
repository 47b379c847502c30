//! How the binaries report an error: one line, the causes joined by ": ", without repeating a
//! cause that the line already says (a context "reading X" around an error "X: ..." says the
//! path once), and a closed stdout (`| head`) told apart so it can end the program quietly.

/// The error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string().replace(['\n', '\r'], " ");
        let c = c.trim();
        if c.is_empty() || out.contains(c) {
            continue;
        }
        // "ctx: X: detail" followed by "X: detail": keep the longer, drop the repeat.
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(c);
    }
    out
}

/// Whether the error comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn joins_causes_once() {
        let e = Err::<(), _>(std::io::Error::other("m.gguf: no such file"))
            .context("m.gguf: no such file")
            .context("reading m.gguf")
            .unwrap_err();
        assert_eq!(one_line(&e), "reading m.gguf: m.gguf: no such file");
        let e = anyhow::anyhow!("two\nlines");
        assert_eq!(one_line(&e), "two lines");
        let p = Err::<(), _>(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing")
            .unwrap_err();
        assert!(is_broken_pipe(&p) && !is_broken_pipe(&e));
    }
}
