//! GitHub: payload structs and their normalisation into ferry's event (`webhook`); statuses and
//! notes sent back (`client`).

pub mod client;
pub mod webhook;
