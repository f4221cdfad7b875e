//! GitHub: payload structs and their normalisation into ferry's event.

pub mod webhook;
