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
    fn mi_option_set_default(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// mimalloc's defaults keep freed memory for a while and commit arenas eagerly
/// (as 2 MiB huge pages where the kernel allows): under webhook load that was
/// ~40% of the server's peak RSS (realistic stream, 5,000 events: 114 MiB
/// peak; with these three set 71 MiB).
///
/// They are mimalloc's *defaults* from here on, so a `MIMALLOC_*` variable in
/// the environment still wins (mimalloc reads the environment after this and
/// only then). This must run before mimalloc initializes: set from `main`
/// (as it was), the eager-commit and huge-page options came after mimalloc's
/// own start-up had already used them, and the peak stayed ~25 MiB higher
/// than with the variables set (bench/RESULTS.md, "Where the memory goes").
/// It allocates nothing and calls nothing but mimalloc's option setter.
extern "C" fn tune_allocator() {
    // Indices of mimalloc 3's `mi_option_e` (libmimalloc-sys 0.1.49, v3/include/mimalloc.h).
    const ARENA_EAGER_COMMIT: std::os::raw::c_int = 4;
    const ALLOW_LARGE_OS_PAGES: std::os::raw::c_int = 6;
    const PURGE_DELAY: std::os::raw::c_int = 15;
    for (option, value) in [
        (ARENA_EAGER_COMMIT, 0),
        (ALLOW_LARGE_OS_PAGES, 0),
        // Return freed pages to the OS at once instead of after 10 ms.
        (PURGE_DELAY, 0),
    ] {
        // SAFETY: writes a default into mimalloc's static option table; no
        // allocation, no other state.
        unsafe { mi_option_set_default(option, value) };
    }
}

/// Runs [`tune_allocator`] as an ELF constructor ahead of mimalloc's own
/// (`__attribute__((constructor))`, priority 101 at most): constructors in
/// `.init_array.NNNNN` run in ascending NNNNN, before unnumbered ones, and all
/// of them before Rust's runtime or anything else allocates.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00100"]
static TUNE_ALLOCATOR_FIRST: extern "C" fn() = tune_allocator;

fn main() {
    // Elsewhere there is no constructor above: the options still apply to
    // whatever mimalloc does from here on.
    #[cfg(not(target_os = "linux"))]
    tune_allocator();
    cli::main()
}
