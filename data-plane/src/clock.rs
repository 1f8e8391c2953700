//! The one place the data plane reads the clock; everything else takes `now`.

use std::time::Instant;

#[expect(clippy::disallowed_methods, reason = "time enters the data plane here")]
pub fn now() -> Instant {
    Instant::now()
}
