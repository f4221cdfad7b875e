//! The service: intake -> plan -> submit and watch (`dispatch`) -> report (`report`, with the
//! run summary in `summary`).

pub mod commands;
pub mod dispatch;
pub mod intake;
pub mod manual;
pub mod matching;
pub mod mirror;
pub mod planner;
pub mod report;
pub mod summary;
mod trust;
