//! CLI subcommands that are not the worker itself.

pub mod demo;
pub mod publish;
pub mod validate;
