//! The service: intake -> plan -> submit and watch (`dispatch`) -> report (`report`, with the
//! run summary in `summary`); manual runs (`manual`) and what people ask for by hand through the
//! API (`operations`: a run in full, reruns, cancelling).

pub mod commands;
pub mod concurrency;
pub mod dispatch;
pub mod intake;
pub mod manual;
pub mod matching;
pub mod mirror;
pub mod operations;
pub mod planner;
pub mod quota;
pub mod report;
pub mod summary;
mod trust;
