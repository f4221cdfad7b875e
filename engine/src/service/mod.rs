//! The service: intake -> plan (and, in later issues, submit -> watch -> report).

pub mod dispatch;
pub mod intake;
pub mod manual;
pub mod matching;
pub mod mirror;
pub mod planner;
