//! Progress bars for long loops that also leave a trace in non-interactive logs.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar on stderr. When stderr is not a terminal (CI, `nohup`), the bar is hidden
/// and a plain line is printed every 5% of the steps instead.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    steps: usize,
    step: usize,
}

impl Progress {
    /// A bar for `steps` steps labelled `label`.
    pub fn new(steps: usize, label: &str) -> Self {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta}) {prefix}",
            )
            .expect("valid template"),
        );
        bar.set_message(label.to_string());
        Self {
            bar,
            steps,
            step: 0,
        }
    }

    /// Advances one step, showing `msg` (a loss, a metric).
    pub fn tick(&mut self, msg: String) {
        let steps = self.steps.max(1);
        if self.bar.is_hidden() && (self.step % (steps / 20).max(1) == 0 || self.step + 1 == steps)
        {
            eprintln!(
                "{} {}/{} {msg} ({:.0?})",
                self.bar.message(),
                self.step + 1,
                steps,
                self.bar.elapsed()
            );
        }
        self.bar.set_prefix(msg);
        self.bar.inc(1);
        self.step += 1;
    }

    /// Seconds since the bar was created.
    pub fn elapsed_secs(&self) -> f64 {
        self.bar.elapsed().as_secs_f64()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish();
    }
}
