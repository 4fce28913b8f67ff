//! The schedule-change model and its validation (docs/contract.md §3 and §4).
//!
//! Parse, don't validate: raw message bytes become either a [`ValidChange`]
//! (with its capacity and the instants of its entries, ready to batch) or a
//! [`Rejection`] listing every error found. Nothing downstream re-checks.

mod limits;
mod model;
mod raw;
mod sweep;
mod time;
mod validate;

pub use limits::Limits;
pub use model::*;
pub use validate::{
    MAX_ERRORS, MAX_ID_CHARS, MessageMeta, is_json_content_type, parse_change, validate_import,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
