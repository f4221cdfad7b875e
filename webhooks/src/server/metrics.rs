//! `/metrics`: the engine's registry ([`ferry_engine::metrics::Metrics`]) plus gauges read from the
//! store at scrape time.

pub use ferry_engine::metrics::Metrics;
