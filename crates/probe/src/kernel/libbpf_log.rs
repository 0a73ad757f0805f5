//! libbpf's messages as the probe's own log events (target `libbpf`), in its format and at its
//! level, instead of raw lines on stderr. The probe binary installs this; tests and benches
//! keep libbpf's default (stderr), where a failing test's verifier log is wanted as it is.
//!
//! While `auto` tries the empty fexit pair ([`super::floor::fexit_fires`]), a refusal is a
//! finding, not a fault — under lockdown every start would otherwise warn "permission error
//! while running as root; try raising 'ulimit -l'?", which is neither true nor actionable: those
//! messages are logged at debug, and the refusal is said once, in `fileHookNote`.

use std::cell::Cell;

use libbpf_rs::PrintLevel;

thread_local! {
    static REFUSAL_EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// Sends libbpf's warnings and information to `tracing` (its debug messages stay off: libbpf
/// only formats them when asked).
pub fn to_tracing() {
    libbpf_rs::set_print(Some((PrintLevel::Info, forward)));
}

fn forward(level: PrintLevel, message: String) {
    let message = message.trim_end();
    if REFUSAL_EXPECTED.with(Cell::get) {
        tracing::debug!(target: "libbpf", expected = true, "{message}");
        return;
    }
    match level {
        PrintLevel::Warn => tracing::warn!(target: "libbpf", "{message}"),
        PrintLevel::Info => tracing::info!(target: "libbpf", "{message}"),
        PrintLevel::Debug => tracing::debug!(target: "libbpf", "{message}"),
    }
}

/// Runs `f` (on this thread: libbpf calls back on the calling thread) with what libbpf says
/// logged at debug.
pub(super) fn refusal_expected<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            REFUSAL_EXPECTED.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(REFUSAL_EXPECTED.with(|flag| flag.replace(true)));
    f()
}
