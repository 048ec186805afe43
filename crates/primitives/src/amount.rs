//! Amounts of BLY as integer nano-BLY, with checked arithmetic and exact decimal parsing.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// Nano-BLY in one BLY.
pub const NANO_PER_BLY: u64 = 1_000_000_000;

/// An amount of BLY in nano-BLY (10⁻⁹ BLY). Never negative; every operation is checked.
/// Serialized as the integer count of nano-BLY so that JSON readers never round it.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Debug,
    Serialize,
    Deserialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[serde(transparent)]
pub struct Amount(pub u64);

impl Amount {
    /// Nothing.
    pub const ZERO: Amount = Amount(0);

    /// `n` nano-BLY.
    pub const fn from_nano(n: u64) -> Amount {
        Amount(n)
    }

    /// `n` whole BLY, or `None` when that does not fit.
    pub const fn from_bly(n: u64) -> Option<Amount> {
        match n.checked_mul(NANO_PER_BLY) {
            Some(v) => Some(Amount(v)),
            None => None,
        }
    }

    /// The count of nano-BLY.
    pub const fn nano(self) -> u64 {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` on overflow.
    pub const fn checked_add(self, other: Amount) -> Option<Amount> {
        match self.0.checked_add(other.0) {
            Some(v) => Some(Amount(v)),
            None => None,
        }
    }

    /// `self - other`, or `None` when `other` is larger.
    pub const fn checked_sub(self, other: Amount) -> Option<Amount> {
        match self.0.checked_sub(other.0) {
            Some(v) => Some(Amount(v)),
            None => None,
        }
    }

    /// `self × n`, or `None` on overflow.
    pub const fn checked_mul(self, n: u64) -> Option<Amount> {
        match self.0.checked_mul(n) {
            Some(v) => Some(Amount(v)),
            None => None,
        }
    }
}

impl fmt::Display for Amount {
    /// Decimal BLY with no trailing zeros: `12`, `0.5`, `0.000000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / NANO_PER_BLY;
        let frac = self.0 % NANO_PER_BLY;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:09}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// Why a string is not an amount of BLY.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountParseError {
    /// Not digits with at most one decimal point (signs and exponents are refused).
    #[error("an amount is a decimal number of BLY such as 12 or 0.5, got {0:?}")]
    Malformed(String),
    /// More than nine decimals: finer than one nano-BLY.
    #[error("{0:?} has more than 9 decimals; the smallest unit is 0.000000001 BLY")]
    TooPrecise(String),
    /// Larger than the largest representable amount.
    #[error("{0:?} is too large")]
    Overflow(String),
}

impl FromStr for Amount {
    type Err = AmountParseError;

    /// Parses decimal BLY exactly: `12`, `12.5`, `0.000000001`. A leading sign, an exponent,
    /// whitespace, an empty part and more than nine decimals are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let short: String = s.chars().take(64).collect();
        let malformed = || AmountParseError::Malformed(short.clone());
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (s, None),
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || frac.is_some_and(|f| !digits(f)) {
            return Err(malformed());
        }
        let frac = frac.unwrap_or("");
        if frac.len() > 9 {
            return Err(AmountParseError::TooPrecise(short));
        }
        let overflow = || AmountParseError::Overflow(short.clone());
        let whole: u64 = whole
            .trim_start_matches('0')
            .parse::<u64>()
            .or_else(|e| {
                if whole.bytes().all(|b| b == b'0') {
                    Ok(0)
                } else {
                    Err(e)
                }
            })
            .map_err(|_| overflow())?;
        let mut frac_nano: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_nano += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
        }
        whole
            .checked_mul(NANO_PER_BLY)
            .and_then(|n| n.checked_add(frac_nano))
            .map(Amount)
            .ok_or_else(overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_decimal_bly() {
        assert_eq!("12".parse(), Ok(Amount(12 * NANO_PER_BLY)));
        assert_eq!("0.5".parse(), Ok(Amount(500_000_000)));
        assert_eq!("0.000000001".parse(), Ok(Amount(1)));
        assert_eq!("007.250".parse(), Ok(Amount(7_250_000_000)));
        assert_eq!("0".parse(), Ok(Amount::ZERO));
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for s in [
            "", "-1", "+1", "1e3", ".5", "5.", "1.2.3", " 1", "1 ", "NaN", "inf", "0x10", "１",
        ] {
            assert!(
                matches!(s.parse::<Amount>(), Err(AmountParseError::Malformed(_))),
                "{s:?}"
            );
        }
        assert!(matches!(
            "0.0000000001".parse::<Amount>(),
            Err(AmountParseError::TooPrecise(_))
        ));
        assert!(matches!(
            "18446744074".parse::<Amount>(),
            Err(AmountParseError::Overflow(_))
        ));
        assert!(matches!(
            "99999999999999999999999999".parse::<Amount>(),
            Err(AmountParseError::Overflow(_))
        ));
    }

    #[test]
    fn checked_arithmetic() {
        assert_eq!(Amount(u64::MAX).checked_add(Amount(1)), None);
        assert_eq!(Amount(1).checked_sub(Amount(2)), None);
        assert_eq!(Amount(u64::MAX).checked_mul(2), None);
        assert_eq!(Amount::from_bly(u64::MAX), None);
    }

    proptest! {
        #[test]
        fn display_parses_back(n in any::<u64>()) {
            let a = Amount(n);
            prop_assert_eq!(a.to_string().parse::<Amount>(), Ok(a));
        }
    }
}
