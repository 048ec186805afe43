//! Integration tests of the block store: one binary, one module per concern.

mod catalog;
mod crash;
mod fixture;
mod props;
mod store;
mod vectors;
