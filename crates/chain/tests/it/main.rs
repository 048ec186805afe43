//! Integration tests of the block store: one binary, one module per concern.

// Tests fail loudly: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod admission;
mod catalog;
mod crash;
mod fixture;
mod props;
mod store;
mod vectors;
