//! The `clerksync` binary: the command line (`cli/`) over the service library
//! and the load generator, and the demo (`demo.rs`).

mod cli;
mod demo;

// glibc's malloc took about 10% of the server's CPU under load (`perf`: many
// small short-lived allocations of JSON and rows across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    cli::main()
}
