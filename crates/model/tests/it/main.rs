//! Integration tests of the model crate: a naive f64 reference, generation, the batching
//! engine, the expert cache and hostile inputs, all on tiny networks in temporary stores.

#![allow(clippy::unwrap_used)]

mod engine;
mod errors;
mod fixture;
mod forward;
mod generate;
mod reference;
