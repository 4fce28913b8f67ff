//! The schedule-change model and its validation (CONTRACT section 3).
//!
//! Parse, don't validate: raw message bytes become either a [`ValidChange`]
//! (with its capacity and the instants of its entries, ready to batch) or a
//! [`Rejection`] listing every error found. Nothing downstream re-checks.

mod model;
mod validate;

pub use model::*;
pub use validate::{MessageMeta, parse_change, validate_import};
