//! The byte progress bar every long conversion shows (hidden when not asked for).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` bytes with rate and ETA; hidden unless `show`.
pub fn byte_bar(total: u64, show: bool) -> ProgressBar {
    let pb = if show {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}
