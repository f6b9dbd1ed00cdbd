//! Progress bars on a terminal (hidden otherwise).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lode_store::{ChunkCounts, PushProgress};

/// A progress bar on a terminal, hidden otherwise.
pub fn bar(show: bool, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A push's two bars: layer bytes read, chunks sealed and stored.
pub struct PushBars {
    layers: ProgressBar,
    chunks: ProgressBar,
}

impl PushBars {
    /// Bars shown when `show` (a terminal, no `--json`).
    pub fn new(show: bool) -> Self {
        let layers = bar(show, "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} {msg}");
        layers.set_prefix("layers");
        let chunks = bar(show, "{prefix:>9} {pos} chunks sealed, {msg}");
        chunks.set_prefix("chunks");
        Self { layers, chunks }
    }
}

impl PushProgress for PushBars {
    fn layers(&self, read: u64, total: u64) {
        self.layers.set_length(total);
        self.layers.set_position(read);
    }

    fn chunks(&self, c: ChunkCounts) {
        self.chunks.set_position(c.sealed);
        self.chunks.set_message(format!(
            "{} new, {} already stored, {} holes",
            c.new, c.already_stored, c.holes
        ));
    }

    fn finished(&self) {
        self.layers.finish_and_clear();
        self.chunks.finish_and_clear();
    }
}

impl Drop for PushBars {
    fn drop(&mut self) {
        self.layers.finish_and_clear();
        self.chunks.finish_and_clear();
    }
}
