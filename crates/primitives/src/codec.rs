//! The canonical binary encoding: Borsh, decoded strictly.
//!
//! Borsh has exactly one encoding per value (little-endian integers, `u32` length prefixes,
//! one-byte enum and option tags), so "the bytes of a value" is well defined and hashes of
//! encodings are stable. Decoding here additionally bounds the input length before reading
//! and rejects trailing bytes, so two different byte strings never decode to the same value.

use borsh::{BorshDeserialize, BorshSerialize};

/// Why bytes are not the canonical encoding of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes than the caller allows for this type.
    #[error("encoding is {len} bytes, at most {max} allowed")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// Truncated, trailing bytes, a bad tag, bad UTF-8 or a similar structural fault.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}

/// The canonical bytes of `value`.
pub fn encode<T: BorshSerialize>(value: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail; borsh's only failures are I/O errors of the writer.
    borsh::to_vec(value).expect("encoding into memory is infallible")
}

/// Decodes `bytes` as a `T`, refusing more than `len_max` bytes or any trailing byte.
pub fn decode<T: BorshDeserialize>(bytes: &[u8], len_max: usize) -> Result<T, DecodeError> {
    if bytes.len() > len_max {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: len_max,
        });
    }
    borsh::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(BorshSerialize, BorshDeserialize, Debug, PartialEq)]
    struct Sample {
        a: u32,
        b: Option<String>,
        c: Vec<u16>,
    }

    #[test]
    fn layout_is_fixed() {
        let v = Sample {
            a: 1,
            b: Some("hi".into()),
            c: vec![7],
        };
        let bytes = encode(&v);
        assert_eq!(
            hex::encode(&bytes),
            "01000000".to_owned() + "01" + "02000000" + "6869" + "01000000" + "0700"
        );
        assert_eq!(decode::<Sample>(&bytes, 64), Ok(v));
    }

    #[test]
    fn rejects_trailing_truncated_and_oversized() {
        let bytes = encode(&Sample {
            a: 1,
            b: None,
            c: vec![],
        });
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<Sample>(&longer, 64),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Sample>(&bytes[..3], 64),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Sample>(&bytes, 2),
            Err(DecodeError::TooLong { .. })
        ));
        // An option tag other than 0 or 1 is not canonical.
        let mut bad_tag = bytes.clone();
        bad_tag[4] = 2;
        assert!(decode::<Sample>(&bad_tag, 64).is_err());
    }
}
