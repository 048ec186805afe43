//! Expert identifiers: which expert of which decoder layer.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One expert of one decoder layer, written `L.E` (layer, then expert; both from zero).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, BorshSerialize, BorshDeserialize,
)]
pub struct ExpertId {
    /// Decoder layer index.
    pub layer: u16,
    /// Expert index within the layer.
    pub expert: u16,
}

impl ExpertId {
    /// The expert `expert` of layer `layer`.
    pub const fn new(layer: u16, expert: u16) -> ExpertId {
        ExpertId { layer, expert }
    }
}

impl fmt::Display for ExpertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.layer, self.expert)
    }
}

/// Why a string is not an `L.E` expert id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an expert id is LAYER.EXPERT with two integers below 65536, got {0:?}")]
pub struct ExpertIdParseError(pub String);

impl FromStr for ExpertId {
    type Err = ExpertIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ExpertIdParseError(s.to_owned());
        let (l, e) = s.split_once('.').ok_or_else(err)?;
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(l) || !digits(e) {
            return Err(err());
        }
        Ok(ExpertId {
            layer: l.parse().map_err(|_| err())?,
            expert: e.parse().map_err(|_| err())?,
        })
    }
}

impl Serialize for ExpertId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExpertId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as Deserialize<'de>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!("3.7".parse::<ExpertId>(), Ok(ExpertId::new(3, 7)));
        assert_eq!(ExpertId::new(0, 12).to_string(), "0.12");
        for bad in [
            "", "1", "1.", ".1", "1.2.3", "-1.2", "+1.2", "a.b", "70000.1", " 1.2",
        ] {
            assert!(bad.parse::<ExpertId>().is_err(), "{bad:?} parsed");
        }
    }
}
