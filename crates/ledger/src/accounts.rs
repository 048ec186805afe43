//! System accounts and account names.

use std::fmt;

use blyan_primitives::Address;
use serde::Serialize;

/// The accounts the ledger itself owns, at addresses `0x00…01` to `0x00…06`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SystemAccount {
    /// Holds the genesis allocation; pays grants.
    Treasury = 1,
    /// Holds the supply not yet minted; opens at the supply cap and only ever pays mints.
    Emission = 2,
    /// Receives each captured fee and splits it in the same transaction; always ends at 0.
    FeePool = 3,
    /// Royalties of experts whose contributor has no address (the genesis experts).
    RoyaltyPool = 4,
    /// Funds validator rewards.
    ValidatorPool = 5,
    /// Destroyed supply; can never pay.
    Burn = 6,
    /// Learning rewards minted at acceptance but not yet vested: released to the
    /// contributor when the verdict replicates, burned when it does not.
    Vesting = 7,
}

impl SystemAccount {
    /// Every system account.
    pub const ALL: [SystemAccount; 7] = [
        SystemAccount::Treasury,
        SystemAccount::Emission,
        SystemAccount::FeePool,
        SystemAccount::RoyaltyPool,
        SystemAccount::ValidatorPool,
        SystemAccount::Burn,
        SystemAccount::Vesting,
    ];

    /// The account's address.
    pub const fn address(self) -> Address {
        let mut bytes = [0u8; 20];
        bytes[19] = self as u8;
        Address(bytes)
    }

    /// The name usable wherever an address is.
    pub const fn name(self) -> &'static str {
        match self {
            SystemAccount::Treasury => "treasury",
            SystemAccount::Emission => "emission",
            SystemAccount::FeePool => "fee_pool",
            SystemAccount::RoyaltyPool => "royalty_pool",
            SystemAccount::ValidatorPool => "validator_pool",
            SystemAccount::Burn => "burn",
            SystemAccount::Vesting => "vesting",
        }
    }

    /// The system account at `address`, if it is one.
    pub fn of(address: Address) -> Option<SystemAccount> {
        SystemAccount::ALL
            .into_iter()
            .find(|s| s.address() == address)
    }
}

impl fmt::Display for SystemAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of the node operator's account.
pub const OPERATOR: &str = "operator";

/// What an account is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// Owned by the ledger.
    System,
    /// The node operator.
    Operator,
    /// Created with `blyan account new`: has a key in the keystore and an API key.
    User,
    /// Opened on first payment to an address (a contributor paid royalties).
    External,
}

impl AccountKind {
    /// The name stored in SQL.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountKind::System => "system",
            AccountKind::Operator => "operator",
            AccountKind::User => "user",
            AccountKind::External => "external",
        }
    }
}
