//! The one place the control plane reads the clock; everything else takes `now`.

use std::time::{Instant, SystemTime};

#[expect(
    clippy::disallowed_methods,
    reason = "time enters the control plane here"
)]
pub fn now() -> Instant {
    Instant::now()
}

#[expect(
    clippy::disallowed_methods,
    reason = "wall-clock time enters the control plane here"
)]
pub fn wall() -> SystemTime {
    SystemTime::now()
}
