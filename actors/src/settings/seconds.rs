//! [`Seconds`]: a duration as settings spell it (a number of seconds, whole or not), checked
//! when read so that no later code meets a negative, infinite or NaN one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A number of seconds, finite and not negative (`time_limit = 30`, `heartbeat_interval =
/// 0.5`). Read from TOML as an integer or a float; a negative or non-finite value is refused
/// at parse time, naming the key. Each key's own range (a time limit above 0, a heartbeat
/// interval of at least 0.1 s…) is checked by the section's `validate`.
///
/// ```
/// use celeryd_actors::settings::Seconds;
/// assert_eq!(Seconds::new(1.5).unwrap().as_secs_f64(), 1.5);
/// assert!(Seconds::new(-1.0).is_err());
/// assert!(Seconds::new(f64::NAN).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Seconds(f64);

impl Seconds {
    /// `secs` when it is a finite number not below 0.
    pub fn new(secs: f64) -> Result<Seconds, String> {
        if secs.is_finite() && secs >= 0.0 {
            Ok(Seconds(secs))
        } else {
            Err(format!("{secs} is not a number of seconds (0 or more)"))
        }
    }

    /// A whole number of seconds (for defaults).
    pub const fn whole(secs: u32) -> Seconds {
        Seconds(secs as f64)
    }

    /// The value as a float of seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0
    }

    /// As a [`Duration`] (always representable: finite and not negative).
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0)
    }

    /// Whether it is 0.
    pub fn is_zero(self) -> bool {
        self.0 == 0.0
    }
}

impl TryFrom<f64> for Seconds {
    type Error = String;

    fn try_from(secs: f64) -> Result<Self, Self::Error> {
        Seconds::new(secs)
    }
}

impl From<Seconds> for f64 {
    fn from(s: Seconds) -> f64 {
        s.0
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct T {
        s: Seconds,
    }

    #[test]
    fn integers_and_floats_are_read_and_a_negative_value_is_refused_naming_the_key() {
        let t: T = toml::from_str("s = 30").unwrap();
        assert_eq!(t.s.duration(), Duration::from_secs(30));
        let t: T = toml::from_str("s = 0.25").unwrap();
        assert_eq!(t.s.as_secs_f64(), 0.25);
        let e = toml::from_str::<T>("s = -2").unwrap_err().to_string();
        assert!(e.contains("0 or more") && e.contains('s'), "{e}");
        let e = toml::from_str::<T>("s = nan").unwrap_err().to_string();
        assert!(e.contains("not a number of seconds"), "{e}");
        assert_eq!(
            toml::to_string(&T {
                s: Seconds::whole(2)
            })
            .unwrap(),
            "s = 2.0\n"
        );
    }
}
