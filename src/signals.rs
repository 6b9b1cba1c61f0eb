//! OS signals -> shutdown modes: the first TERM/INT asks for a warm shutdown, a second one (or
//! QUIT) for a cold one.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use celeryd_actors::ShutdownMode;

/// Starts listening; the returned channel yields one mode per signal.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<ShutdownMode>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut warm_requested = false;
        loop {
            let mode = tokio::select! {
                _ = term.recv() => next_mode(&mut warm_requested),
                _ = int.recv() => next_mode(&mut warm_requested),
                _ = quit.recv() => ShutdownMode::Cold,
            };
            if tx.send(mode).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// First TERM/INT: warm; any later one: cold.
pub fn next_mode(warm_requested: &mut bool) -> ShutdownMode {
    if *warm_requested {
        ShutdownMode::Cold
    } else {
        *warm_requested = true;
        ShutdownMode::Warm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_signal_is_cold() {
        let mut w = false;
        assert_eq!(next_mode(&mut w), ShutdownMode::Warm);
        assert_eq!(next_mode(&mut w), ShutdownMode::Cold);
        assert_eq!(next_mode(&mut w), ShutdownMode::Cold);
    }
}
