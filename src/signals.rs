//! OS signals -> what the operator asked for: the first TERM/INT a warm shutdown, a second one
//! (or QUIT) a cold one, HUP a warm stop followed by a re-exec of the same command line.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use celeryd_actors::ShutdownMode;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop (warm or cold).
    Shutdown(ShutdownMode),
    /// Warm stop, then start again as the same process (HUP).
    Restart,
}

/// Starts listening; the returned channel yields one request per signal. A HUP becomes a
/// [`Request::Restart`] only when `can_restart` says yes (it checks the new configuration and
/// logs why not); a refused one changes nothing, so the next TERM is still a warm stop.
pub fn listen(
    can_restart: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<mpsc::UnboundedReceiver<Request>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let request = tokio::select! {
                _ = term.recv() => Request::Shutdown(next_mode(&mut stopping)),
                _ = int.recv() => Request::Shutdown(next_mode(&mut stopping)),
                _ = quit.recv() => Request::Shutdown(ShutdownMode::Cold),
                _ = hup.recv() => {
                    if stopping || !can_restart() { continue }
                    stopping = true;
                    Request::Restart
                }
            };
            if tx.send(request).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// First TERM/INT: warm; any later one (also after a HUP): cold.
pub fn next_mode(stopping: &mut bool) -> ShutdownMode {
    if *stopping {
        ShutdownMode::Cold
    } else {
        *stopping = true;
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
