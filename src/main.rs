//! The `clerksync` binary: the command line (`cli/`) over the service library
//! and the load generator, and the demo (`demo.rs`).

mod cli;
mod demo;

// glibc's malloc took about 10% of the server's CPU under load (`perf`: many
// small short-lived allocations of JSON and rows across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own options (the library is linked by the `mimalloc` crate; its
// `extended` API is not used for this one call).
extern "C" {
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// mimalloc's defaults keep freed memory for a while and commit arenas eagerly
/// (as 2 MiB huge pages where the kernel allows): under webhook load that was
/// ~40% of the server's peak RSS (realistic stream, 5,000 events: 114 MiB
/// peak; with these three set 71 MiB). Each is left alone when its
/// `MIMALLOC_*` variable is set, so an operator can still choose.
fn tune_allocator() {
    // Indices of mimalloc 3's `mi_option_e` (libmimalloc-sys 0.1.49, v3/include/mimalloc.h).
    const ARENA_EAGER_COMMIT: std::os::raw::c_int = 4;
    const ALLOW_LARGE_OS_PAGES: std::os::raw::c_int = 6;
    const PURGE_DELAY: std::os::raw::c_int = 15;
    for (var, option, value) in [
        ("MIMALLOC_ARENA_EAGER_COMMIT", ARENA_EAGER_COMMIT, 0),
        ("MIMALLOC_ALLOW_LARGE_OS_PAGES", ALLOW_LARGE_OS_PAGES, 0),
        // Return freed pages to the OS at once instead of after 10 ms.
        ("MIMALLOC_PURGE_DELAY", PURGE_DELAY, 0),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: sets a plain integer option; mimalloc reads options when it uses them.
            unsafe { mi_option_set(option, value) };
        }
    }
}

fn main() {
    tune_allocator();
    cli::main()
}
