//! A node's network identity: an ed25519 key that authenticates it to peers, bound to its
//! account address (secp256k1) by the account key's EIP-191 signature of
//! `"blyan-net-key-v1" ‖ network public key`. Whoever holds the binding can check that the
//! network key speaks for the address, and nobody can bind another's key to their address
//! without that address's key.

use std::fmt;
use std::str::FromStr;

use blyan_primitives::{Address, Signature, SigningKey};
use commonware_codec::{DecodeExt, Encode};
use commonware_cryptography::{Signer, ed25519};

use crate::engine::PeerKey;

/// The 32 bytes of network key `key`, as the admission registry names it.
pub fn key_bytes(key: &PeerKey) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(key.encode().as_ref());
    out
}

/// The message an account key signs to bind network key `key` to its address.
fn binding_message(key: &PeerKey) -> Vec<u8> {
    blyan_chain::admission::key_binding_message(&key_bytes(key))
}

/// A node's network key and its binding to the node's account address.
#[derive(Clone)]
pub struct Identity {
    key: ed25519::PrivateKey,
    address: Address,
    binding: Signature,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("key", &self.public_key().to_string())
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity with network key seed `seed` (from the keystore), bound to `account`.
    pub fn new(seed: &[u8; 32], account: &SigningKey) -> Identity {
        let key =
            ed25519::PrivateKey::decode(seed.to_vec()).expect("any 32 bytes are an ed25519 seed");
        let binding = Signature::sign(account, &binding_message(&key.public_key()));
        Identity {
            key,
            address: blyan_primitives::address_of(account),
            binding,
        }
    }

    /// The private network key, for the transport's handshake.
    pub fn private_key(&self) -> &ed25519::PrivateKey {
        &self.key
    }

    /// The public network key.
    pub fn public_key(&self) -> PeerKey {
        self.key.public_key()
    }

    /// The account address the key is bound to.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The account key's signature binding the network key to the address.
    pub fn binding(&self) -> &Signature {
        &self.binding
    }
}

/// Checks that `binding` is `address`'s signature binding network key `key`.
pub fn check_binding(key: &PeerKey, address: &Address, binding: &Signature) -> bool {
    binding.verify(&binding_message(key), address).is_ok()
}

/// A network key in hex, as `net id` prints it and `--bootstrap` takes it.
pub fn parse_key(hex_key: &str) -> Result<PeerKey, String> {
    let bytes = hex::decode(hex_key.trim_start_matches("0x"))
        .map_err(|e| format!("network key {hex_key:?} is not hex: {e}"))?;
    PeerKey::decode(bytes).map_err(|e| format!("{hex_key:?} is not an ed25519 key: {e}"))
}

/// The network key of the 32 bytes `key`, if they are one.
pub fn key_of_bytes(key: &[u8; 32]) -> Option<PeerKey> {
    PeerKey::decode(key.to_vec()).ok()
}

/// A peer to sync from, as given to `--bootstrap`: `KEY@HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    /// The peer's network key.
    pub key: PeerKey,
    /// Where it listens.
    pub addr: String,
}

impl FromStr for Bootstrap {
    type Err = String;

    fn from_str(s: &str) -> Result<Bootstrap, String> {
        let (key, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?} is not KEY@HOST:PORT"))?;
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("{addr:?} is not HOST:PORT"));
        }
        Ok(Bootstrap {
            key: parse_key(key)?,
            addr: addr.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_holds_only_for_its_key_and_address() {
        let account = SigningKey::from_slice(&[7; 32]).expect("valid scalar");
        let other = SigningKey::from_slice(&[8; 32]).expect("valid scalar");
        let id = Identity::new(&[1; 32], &account);
        let again = Identity::new(&[1; 32], &account);
        assert_eq!(id.public_key(), again.public_key());
        assert!(check_binding(&id.public_key(), &id.address(), id.binding()));
        let other_key = Identity::new(&[2; 32], &account).public_key();
        assert!(!check_binding(&other_key, &id.address(), id.binding()));
        let other_addr = blyan_primitives::address_of(&other);
        assert!(!check_binding(&id.public_key(), &other_addr, id.binding()));
    }

    #[test]
    fn bootstrap_strings_parse_strictly() {
        let id = Identity::new(&[3; 32], &SigningKey::from_slice(&[7; 32]).expect("scalar"));
        let key = id.public_key().to_string();
        let b: Bootstrap = format!("{key}@127.0.0.1:7001").parse().expect("parses");
        assert_eq!(b.key, id.public_key());
        assert_eq!(b.addr, "127.0.0.1:7001");
        for bad in [
            key.clone(),
            format!("{key}@127.0.0.1"),
            format!("{key}@:80"),
            format!("{key}@host:99999"),
            "abc@127.0.0.1:1".to_string(),
            format!("{}@127.0.0.1:1", &key[2..]),
        ] {
            assert!(bad.parse::<Bootstrap>().is_err(), "{bad}");
        }
    }
}
