//! Fuzz the block header decoder: never panic, and whatever decodes re-encodes to the same
//! bytes. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run header_decode` (from the repository root).
#![no_main]

use blyan_chain::BlockHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = BlockHeader::decode(data) {
        assert_eq!(header.encode(), data, "a decoded header must re-encode to its input");
        let _ = header.hash();
    }
});
