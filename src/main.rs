//! The stock `worker` binary: celeryd with the example tasks registered.

use std::process::ExitCode;

fn main() -> ExitCode {
    celeryd::main_with(celeryd::tasks::example_registry())
}
