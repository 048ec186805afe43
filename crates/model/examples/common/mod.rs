//! Setup shared by the model's examples.

#![allow(clippy::unwrap_used, dead_code)]

use std::{path::Path, sync::Arc};

use blyan_chain::{Store, genesis};
use blyan_model::Model;
use blyan_primitives::ExpertId;

/// The store in `dir`, given the default genesis network first if it holds no model.
pub(crate) fn genesis_store(dir: &Path) -> Arc<Store> {
    let store = Arc::new(Store::open(dir).unwrap());
    if store.meta().unwrap().is_none() {
        genesis::init(
            &store,
            genesis::random_genesis(
                genesis::GENESIS_SEED,
                &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
            )
            .unwrap(),
        )
        .unwrap();
    }
    store
}

/// Loads every expert, so that timings measure decoding and not loading.
pub(crate) fn warm_experts(model: &Model) {
    for l in 0..model.config().layers {
        for e in 0..model.config().experts {
            model
                .load_expert(ExpertId::new(l as u16, e as u16))
                .unwrap();
        }
    }
}
