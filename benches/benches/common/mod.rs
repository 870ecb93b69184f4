//! Criterion settings shared by the microbenchmarks.

use std::time::Duration;

use criterion::Criterion;

/// One second of warm-up, `measure_secs` of measurement, and no HTML
/// plots: they need system fonts, and the figures are read from the terminal.
pub fn config(measure_secs: u64) -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measure_secs))
}
