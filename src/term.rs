//! Colour on the terminal (`jq-run --color auto|always|never`): the chat's prompt, status
//! lines and errors. `auto` colours a stream only when it is a terminal and `NO_COLOR` is
//! unset or empty (<https://no-color.org>); styles are `anstyle`'s ANSI sequences.

use anstyle::{AnsiColor, Effects, Style};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};

/// When to colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorWhen {
    /// Only on a terminal (and without NO_COLOR).
    #[default]
    Auto,
    Always,
    Never,
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets the process's choice (the default is `auto`).
pub fn set(w: ColorWhen) {
    MODE.store(w as u8, Ordering::Relaxed);
}

/// Which stream a text goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Whether text for `s` is coloured.
pub fn enabled(s: Stream) -> bool {
    match MODE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && match s {
                    Stream::Stdout => std::io::stdout().is_terminal(),
                    Stream::Stderr => std::io::stderr().is_terminal(),
                }
        }
    }
}

/// An error's prefix.
pub const ERROR: Style = AnsiColor::Red.on_default().effects(Effects::BOLD);
/// A warning's prefix.
pub const WARNING: Style = AnsiColor::Yellow.on_default().effects(Effects::BOLD);
/// Status lines: the seed, `(stopped)`, the chat's hint.
pub const STATUS: Style = Style::new().effects(Effects::DIMMED);
/// The chat's input prompt.
pub const PROMPT: Style = AnsiColor::Green.on_default().effects(Effects::BOLD);

/// `text` in `style` when `s` is coloured, else as is.
pub fn paint(s: Stream, style: Style, text: &str) -> String {
    if enabled(s) {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

/// For stderr.
pub fn err(style: Style, text: &str) -> String {
    paint(Stream::Stderr, style, text)
}

/// Ends the process for a command line clap refused or answered: `--help` and `--version` print
/// to stdout and exit 0; a usage error prints clap's message to stderr and exits 1, as every
/// other error of the tools does (clap's own `exit` uses 2).
pub fn exit_on_clap_error(e: clap::Error) -> ! {
    let code = if e.use_stderr() { 1 } else { 0 };
    // Printing can only fail on a closed stream, when there is no one left to tell.
    let _ = e.print();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_and_never() {
        set(ColorWhen::Always);
        assert_eq!(err(ERROR, "error:"), "\x1b[1m\x1b[31merror:\x1b[0m");
        set(ColorWhen::Never);
        assert_eq!(err(ERROR, "error:"), "error:");
        set(ColorWhen::Auto);
    }
}
