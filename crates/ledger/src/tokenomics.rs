//! The economic parameters, read from `tokenomics.toml` and checked before use.

use std::path::Path;

use blyan_primitives::{Amount, NANO_PER_BLY};
use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// Milliseconds in a year of 365.25 days.
pub const YEAR_MS: u64 = 31_557_600_000;

/// Basis points in one.
pub const BPS: u64 = 10_000;

/// The economic parameters. Amounts are decimal BLY strings, read exactly.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokenomics {
    /// Most BLY that can ever exist.
    pub supply_cap: String,
    /// Minted to the treasury when the ledger is created; outside the inflation cap.
    pub genesis_allocation: String,
    /// Granted from the treasury to the node's `operator` account at `blyan init`.
    pub operator_grant: String,
    /// Most new supply per year, in basis points of the circulating supply (1000 = 10%).
    pub inflation_cap_bps: u64,
    /// Length of an emission epoch in seconds; each epoch may mint its share of the year's cap.
    pub epoch_seconds: u64,
    /// Reward per evaluated sample batch to a Proof-of-Learning validator.
    pub validation_reward: String,
    /// Reward per 1% of improvement to the contributor of an accepted expert.
    pub learning_reward_per_percent: String,
    /// Inference fee per 1,000 tokens (prompt plus completion).
    pub fee_per_1k_tokens: String,
    /// Share of each fee paid to the contributors of the experts that served it.
    pub royalty_bps: u64,
    /// Share of each fee paid to the node operator.
    pub operator_bps: u64,
    /// Share of each fee burned.
    pub burn_bps: u64,
    /// Share of each fee that pays for computing its experts, taken from the operator's share
    /// (so at most `operator_bps`): the hosts that computed some of them for the serving node
    /// get the part of it their computations make of all of them, by computations; the
    /// operator keeps the rest. A file without it pays hosts nothing.
    #[serde(default)]
    pub host_bps: u64,
    /// How long a quote can be authorized, in seconds.
    pub quote_ttl_seconds: u64,
    /// How long a hold may stay open before it is voided, in seconds.
    pub hold_ttl_seconds: u64,
}

impl Default for Tokenomics {
    fn default() -> Tokenomics {
        Tokenomics {
            supply_cap: "1000000000".into(),
            genesis_allocation: "100000000".into(),
            operator_grant: "1000000".into(),
            inflation_cap_bps: 1000,
            epoch_seconds: 86_400,
            validation_reward: "20".into(),
            learning_reward_per_percent: "20000".into(),
            fee_per_1k_tokens: "1".into(),
            royalty_bps: 5000,
            operator_bps: 3000,
            burn_bps: 2000,
            host_bps: 2000,
            quote_ttl_seconds: 300,
            hold_ttl_seconds: 900,
        }
    }
}

/// [`Tokenomics`] with every amount parsed and every rule checked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Economics {
    /// See [`Tokenomics::supply_cap`].
    pub supply_cap: Amount,
    /// See [`Tokenomics::genesis_allocation`].
    pub genesis_allocation: Amount,
    /// See [`Tokenomics::operator_grant`].
    pub operator_grant: Amount,
    /// See [`Tokenomics::inflation_cap_bps`].
    pub inflation_cap_bps: u64,
    /// Epoch length in milliseconds.
    pub epoch_ms: u64,
    /// See [`Tokenomics::validation_reward`].
    pub validation_reward: Amount,
    /// See [`Tokenomics::learning_reward_per_percent`].
    pub learning_reward_per_percent: Amount,
    /// See [`Tokenomics::fee_per_1k_tokens`].
    pub fee_per_1k_tokens: Amount,
    /// See [`Tokenomics::royalty_bps`].
    pub royalty_bps: u64,
    /// See [`Tokenomics::operator_bps`].
    pub operator_bps: u64,
    /// See [`Tokenomics::burn_bps`].
    pub burn_bps: u64,
    /// See [`Tokenomics::host_bps`].
    pub host_bps: u64,
    /// Quote time to live in milliseconds.
    pub quote_ttl_ms: u64,
    /// Hold time to live in milliseconds.
    pub hold_ttl_ms: u64,
}

impl Default for Economics {
    fn default() -> Economics {
        Tokenomics::default()
            .check()
            .expect("the default tokenomics are valid")
    }
}

impl Tokenomics {
    /// Parses TOML text (at most 64 KiB), refusing unknown keys.
    pub fn from_toml(text: &str) -> Result<Tokenomics, LedgerError> {
        if text.len() > 64 << 10 {
            return Err(LedgerError::Tokenomics("file larger than 64 KiB".into()));
        }
        toml::from_str(text).map_err(|e| LedgerError::Tokenomics(e.to_string()))
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Economics, LedgerError> {
        let text = std::fs::read_to_string(path).map_err(|source| LedgerError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        Tokenomics::from_toml(&text)
            .and_then(|t| t.check())
            .map_err(|e| LedgerError::Tokenomics(format!("{}: {e}", path.display())))
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# BLY tokenomics of this node's ledger. Amounts are decimal BLY; *_bps are basis\n\
             # points (10000 = 100%). The supply cap is fixed when the ledger is created.\n{body}"
        )
    }

    /// Parses every amount and checks every rule.
    pub fn check(&self) -> Result<Economics, LedgerError> {
        let amount = |name: &str, s: &str| -> Result<Amount, LedgerError> {
            s.parse::<Amount>()
                .map_err(|e| LedgerError::Tokenomics(format!("{name}: {e}")))
        };
        let bad = |m: String| Err(LedgerError::Tokenomics(m));
        let e = Economics {
            supply_cap: amount("supply_cap", &self.supply_cap)?,
            genesis_allocation: amount("genesis_allocation", &self.genesis_allocation)?,
            operator_grant: amount("operator_grant", &self.operator_grant)?,
            inflation_cap_bps: self.inflation_cap_bps,
            epoch_ms: self.epoch_seconds.saturating_mul(1000),
            validation_reward: amount("validation_reward", &self.validation_reward)?,
            learning_reward_per_percent: amount(
                "learning_reward_per_percent",
                &self.learning_reward_per_percent,
            )?,
            fee_per_1k_tokens: amount("fee_per_1k_tokens", &self.fee_per_1k_tokens)?,
            royalty_bps: self.royalty_bps,
            operator_bps: self.operator_bps,
            burn_bps: self.burn_bps,
            host_bps: self.host_bps,
            quote_ttl_ms: self.quote_ttl_seconds.saturating_mul(1000),
            hold_ttl_ms: self.hold_ttl_seconds.saturating_mul(1000),
        };
        // Every balance is a SQL BIGINT, so the whole supply must fit an i64.
        if e.supply_cap.is_zero() || e.supply_cap.nano() > i64::MAX as u64 {
            return bad(format!(
                "supply_cap must be above 0 and at most {} BLY",
                i64::MAX as u64 / NANO_PER_BLY
            ));
        }
        if e.genesis_allocation > e.supply_cap {
            return bad("genesis_allocation exceeds supply_cap".into());
        }
        if e.operator_grant > e.genesis_allocation {
            return bad("operator_grant exceeds genesis_allocation".into());
        }
        if e.inflation_cap_bps > BPS {
            return bad("inflation_cap_bps is above 10000 (100% a year)".into());
        }
        if self.epoch_seconds == 0 || e.epoch_ms > YEAR_MS {
            return bad("epoch_seconds must be between 1 and a year".into());
        }
        if e.royalty_bps
            .checked_add(e.operator_bps)
            .and_then(|s| s.checked_add(e.burn_bps))
            != Some(BPS)
        {
            return bad("royalty_bps + operator_bps + burn_bps must be exactly 10000".into());
        }
        if e.host_bps > e.operator_bps {
            return bad("host_bps is taken from the operator's share: at most operator_bps".into());
        }
        if self.quote_ttl_seconds == 0 || self.hold_ttl_seconds == 0 {
            return bad("quote_ttl_seconds and hold_ttl_seconds must be above 0".into());
        }
        Ok(e)
    }
}

impl Economics {
    /// The fee for `tokens` tokens, rounded up to the nano-BLY; `None` on overflow.
    pub fn fee(&self, tokens: u64) -> Option<Amount> {
        let nano = (u128::from(tokens) * u128::from(self.fee_per_1k_tokens.nano())).div_ceil(1000);
        u64::try_from(nano).ok().map(Amount::from_nano)
    }

    /// The learning reward for an improvement of `improvement_bps` basis points of loss
    /// (100 = 1%), rounded down; `None` on overflow.
    pub fn learning_reward(&self, improvement_bps: u64) -> Option<Amount> {
        let nano =
            u128::from(self.learning_reward_per_percent.nano()) * u128::from(improvement_bps) / 100;
        u64::try_from(nano).ok().map(Amount::from_nano)
    }

    /// Most that may be minted in one epoch when `base` is in circulation at its start.
    pub fn epoch_budget(&self, base: Amount) -> Amount {
        let nano = u128::from(base.nano())
            * u128::from(self.inflation_cap_bps)
            * u128::from(self.epoch_ms)
            / (u128::from(BPS) * u128::from(YEAR_MS));
        Amount::from_nano(u64::try_from(nano).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_check() {
        let t = Tokenomics::default();
        let back = Tokenomics::from_toml(&t.to_toml()).expect("parses");
        assert_eq!(back, t);
        let e = t.check().expect("valid");
        assert_eq!(e.supply_cap, Amount::from_bly(1_000_000_000).expect("fits"));
        // 1 BLY per 1000 tokens: 1000 tokens cost exactly 1 BLY; one token 0.001 BLY.
        assert_eq!(e.fee(1000), Amount::from_bly(1));
        assert_eq!(e.fee(1), Some(Amount::from_nano(1_000_000)));
        // 20,000 BLY per 1%: a 2.5% gain earns 50,000 BLY.
        assert_eq!(e.learning_reward(250), Amount::from_bly(50_000));
        // 10%/year of 100M over one day.
        let day = e.epoch_budget(Amount::from_bly(100_000_000).expect("fits"));
        assert_eq!(
            u128::from(day.nano()),
            u128::from(100_000_000 * NANO_PER_BLY / 10) * 86_400_000 / u128::from(YEAR_MS)
        );
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Tokenomics::from_toml("supply_cap = \"1\"\nunknown = 1").is_err());
        for edit in [
            |t: &mut Tokenomics| t.burn_bps = 2001,
            |t: &mut Tokenomics| t.supply_cap = "-1".into(),
            |t: &mut Tokenomics| t.supply_cap = "10000000000".into(),
            |t: &mut Tokenomics| t.genesis_allocation = "1000000001".into(),
            |t: &mut Tokenomics| t.epoch_seconds = 0,
            |t: &mut Tokenomics| t.inflation_cap_bps = 10_001,
            |t: &mut Tokenomics| t.fee_per_1k_tokens = "1e3".into(),
        ] {
            let mut t = Tokenomics::default();
            edit(&mut t);
            assert!(t.check().is_err(), "{t:?}");
        }
    }
}
