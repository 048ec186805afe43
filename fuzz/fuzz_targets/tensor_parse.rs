//! Fuzz the tensor payload parser: never panic on any bytes.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run tensor_parse` (from the repository root).
#![no_main]

use blyan_tensor::TensorSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = TensorSet::parse(data) {
        let _ = set.check_finite();
        let _ = set.descs();
    }
});
