//! What the commands print on stdout.
//!
//! Owns: writing a line to stdout so that a closed pipe (`clerksync events list
//! | head`) ends the output quietly, as Unix tools do, instead of `println!`'s
//! panic. Must never: stop the command itself (a reindex piped into `head`
//! still finishes) or be used for logs (those go to stderr through tracing).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout is closed: later lines are dropped without trying.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Prints one line on stdout; a closed stdout ends the output silently, any
/// other write error is said once on stderr.
pub fn line(line: impl std::fmt::Display) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
        }
    }
}
