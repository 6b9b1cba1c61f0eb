//! The stock `worker` binary: celeryd with the example tasks registered.

use std::process::ExitCode;

/// mimalloc rather than the C library's allocator: a task's way through the worker makes
/// about a hundred small allocations (most of them the AMQP client's, one per message
/// header), and mimalloc spends a fraction of glibc's instructions on each (README,
/// Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    celeryd::main_with(celeryd::tasks::example_registry())
}
