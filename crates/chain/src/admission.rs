//! The admission registry on the meta chain (A): which network keys may host experts or
//! validate. Each change is one `admission` block, signed by the network's operator (the
//! author of the spec block, whose hash names the network), that admits or removes one key in
//! one role; the registry is the meta chain's admission blocks applied in order. Stake
//! replaces the operator's signature once the chain has finality.
//!
//! A key's account address is not part of the registry: the node that holds the key presents
//! the account's binding signature (see [`key_binding_message`]), which anyone can check.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use blyan_primitives::{Address, Hash, Signature, codec};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::Serialize;

use crate::{BlockError, BlockKind, ChainError, ChainId, Store};

/// Domain of the account signature that binds a network key to an account address.
const KEY_BINDING_DOMAIN: &[u8] = b"blyan-net-key-v1";

/// The message an account key signs (EIP-191 `personal_sign`) to bind the ed25519 network
/// key `key` to its address: `"blyan-net-key-v1" ‖ key`.
pub fn key_binding_message(key: &[u8; 32]) -> Vec<u8> {
    let mut m = KEY_BINDING_DOMAIN.to_vec();
    m.extend_from_slice(key);
    m
}

/// Whether `binding` is `address`'s signature binding network key `key`.
pub fn check_key_binding(key: &[u8; 32], address: &Address, binding: &Signature) -> bool {
    binding.verify(&key_binding_message(key), address).is_ok()
}

/// What an admitted key may do.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Serialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Role {
    /// Serves experts to other nodes.
    Host = 0,
    /// Evaluates candidates and signs verdicts.
    Validator = 1,
}

impl Role {
    /// Lowercase name used on the command line and in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Validator => "validator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "host" => Ok(Role::Host),
            "validator" => Ok(Role::Validator),
            _ => Err(format!("unknown role {s:?} (host or validator)")),
        }
    }
}

/// Payload of an `admission` block: key `key` gains role `role` (`admitted`) or loses it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct Admission {
    /// The ed25519 network key (`blyan net id`), 32 bytes.
    #[serde(serialize_with = "hex_key")]
    pub key: [u8; 32],
    /// The role granted or withdrawn.
    pub role: Role,
    /// True to admit, false to remove.
    pub admitted: bool,
}

fn hex_key<S: serde::Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(key))
}

impl Admission {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes an admission payload (exactly 34 bytes).
    pub fn decode(bytes: &[u8]) -> Result<Admission, BlockError> {
        codec::decode(bytes, 64).map_err(|e| BlockError::MalformedPayload {
            reason: e.to_string(),
        })
    }
}

/// One admitted key: its roles and the meta-chain height of the block that last changed it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Member {
    /// The network key, hex.
    pub key: String,
    /// Roles held.
    pub roles: BTreeSet<Role>,
    /// The admission block that last changed this key's roles.
    pub block: Hash,
}

/// The registry: every key that holds at least one role, by key bytes.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize)]
pub struct Registry {
    /// Members by key.
    pub members: BTreeMap<[u8; 32], Member>,
}

impl Registry {
    /// The registry of `store`: its meta chain's admission blocks applied in order.
    pub fn of(store: &Store) -> Result<Registry, ChainError> {
        let mut registry = Registry::default();
        let Some((head, _)) = store.head(ChainId::Meta)? else {
            return Ok(registry);
        };
        for height in 1..=head {
            let hash = store
                .at_height(ChainId::Meta, height)?
                .ok_or(ChainError::Corrupt {
                    block: Hash::ZERO,
                    detail: format!("meta chain has no block at height {height}"),
                })?;
            let header = store.header(&hash)?.ok_or(ChainError::NotFound(hash))?;
            if header.kind != BlockKind::Admission {
                continue;
            }
            let payload = store.payload(&hash)?;
            let a = Admission::decode(&payload).map_err(|e| ChainError::Corrupt {
                block: hash,
                detail: e.to_string(),
            })?;
            registry.apply(hash, &a);
        }
        Ok(registry)
    }

    /// Applies admission `a`, stored as block `block`.
    pub fn apply(&mut self, block: Hash, a: &Admission) {
        let member = self.members.entry(a.key).or_insert_with(|| Member {
            key: hex::encode(a.key),
            roles: BTreeSet::new(),
            block,
        });
        member.block = block;
        if a.admitted {
            member.roles.insert(a.role);
        } else {
            member.roles.remove(&a.role);
        }
        if member.roles.is_empty() {
            self.members.remove(&a.key);
        }
    }

    /// Whether `key` holds `role`.
    pub fn has(&self, key: &[u8; 32], role: Role) -> bool {
        self.members
            .get(key)
            .is_some_and(|m| m.roles.contains(&role))
    }
}
