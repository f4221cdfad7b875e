//! Ferry's engine: everything between a pipeline file and an Argo Workflow, with no HTTP
//! framework and no environment reads.
//!
//! The flow through this crate: [`pipeline`] parses and validates `.ferry/*.yaml` against a
//! [`profile::Profile`] into a [`pipeline::Pipeline`]; [`render`] turns a pipeline plus a run's
//! context into a self-checked Argo Workflow.

pub mod config;
pub mod event;
pub mod executor;
pub mod forge;
pub mod metrics;
pub mod pipeline;
pub mod problem;
pub mod profile;
pub mod quantity;
pub mod render;
pub mod service;
pub mod store;
pub mod yaml;
