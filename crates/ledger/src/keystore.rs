//! The node's keystore: one secp256k1 key per account, each in its own Web3 Secret Storage
//! (version 3) file, encrypted under the keystore's passphrase and readable only by the owner;
//! and API keys bound to accounts (only their SHA-256 is stored in the ledger).

use std::io::Write;
use std::path::{Path, PathBuf};

use blyan_primitives::{Address, Hash, address_of};
use k256::ecdsa::SigningKey;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::accounts::AccountKind;
use crate::journal::{account_exists, hex, now_i64, parse_hex};
use crate::keyfile;
use crate::ledger::Ledger;
use crate::sql::{self, Value};
use crate::{LedgerError, Refusal};

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "bly_";

/// Whether `token` claims to be a Blyan API key (it carries [`API_KEY_PREFIX`]); whether it
/// is a known one is [`Keystore::account_for_api_key`]'s question.
pub fn is_api_key_like(token: &str) -> bool {
    token.starts_with(API_KEY_PREFIX)
}

/// The file in the keystore that names the node's key.
const NODE_KEY_FILE: &str = "node";
/// The pool secret's file in the keystore.
const POOL_SECRET_FILE: &str = "pool-secret.json";
/// The network key's seed in the keystore.
const NETWORK_KEY_FILE: &str = "network-key.json";

/// Where account keys live (`DATA_DIR/keystore`), and the passphrase that opens them.
#[derive(Clone)]
pub struct Keystore {
    dir: PathBuf,
    passphrase: Zeroizing<String>,
    scrypt_log_n: u8,
    /// The node's key once unlocked.
    node: std::sync::Arc<std::sync::OnceLock<SigningKey>>,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("dir", &self.dir)
            .field("passphrase", &"…")
            .finish()
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> LedgerError {
    move |source| LedgerError::Io { context, source }
}

impl Keystore {
    /// The keystore in `dir` (created on first write), whose files open with `passphrase`.
    pub fn new(dir: impl Into<PathBuf>, passphrase: &str) -> Keystore {
        Keystore {
            dir: dir.into(),
            passphrase: Zeroizing::new(passphrase.to_owned()),
            scrypt_log_n: keyfile::SCRYPT_LOG_N,
            node: Default::default(),
        }
    }

    /// Writes new files with scrypt N = 2^`log_n` instead of 2^18: cheaper to open, for
    /// tests. Reading accepts any N up to 2^20.
    pub fn with_scrypt_log_n(mut self, log_n: u8) -> Keystore {
        self.scrypt_log_n = log_n;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes a new key and stores it in `<address>.json` with mode 0600 (the directory
    /// 0700). The file is written, synced and only then renamed into place.
    pub fn generate(&self) -> Result<Address, LedgerError> {
        self.store(&new_key())
    }

    /// Stores `key` (encrypted under this keystore's passphrase); refuses to replace a key
    /// already there.
    pub fn store(&self, key: &SigningKey) -> Result<Address, LedgerError> {
        let address = address_of(key);
        let path = self.path(&address);
        if path.exists() {
            return Err(LedgerError::Store(format!(
                "{} already holds the key of {address}",
                path.display()
            )));
        }
        let text = keyfile::encrypt(key, self.passphrase.as_bytes(), self.scrypt_log_n)
            .map_err(|e| LedgerError::Store(format!("encrypting a key file: {e}")))?;
        self.write_new(&path, &text)?;
        Ok(address)
    }

    /// Writes a new file with mode 0600 in the keystore (the directory 0700): written,
    /// synced and only then renamed into place.
    fn write_new(&self, path: &Path, text: &str) -> Result<(), LedgerError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        set_mode(&self.dir, 0o700)?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(&tmp)
                .map_err(io(format!("creating {}", tmp.display())))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io(format!("writing {}", tmp.display())))?;
        }
        std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))
    }

    /// The secret that keys this node's hidden pool (which documents are hidden, each item's
    /// salt), if one was made: `pool-secret.json`, encrypted like a key file (no address).
    pub fn pool_secret(&self) -> Result<Option<Zeroizing<[u8; 32]>>, LedgerError> {
        self.secret(POOL_SECRET_FILE)
    }

    /// The pool secret, made (32 random bytes) and stored on first use.
    pub fn pool_secret_or_new(&self) -> Result<Zeroizing<[u8; 32]>, LedgerError> {
        self.secret_or_new(POOL_SECRET_FILE, "the pool secret")
    }

    /// The seed of this node's network key (an ed25519 key that authenticates it to peers),
    /// made and stored on first use: `network-key.json`, encrypted like a key file.
    pub fn network_secret_or_new(&self) -> Result<Zeroizing<[u8; 32]>, LedgerError> {
        self.secret_or_new(NETWORK_KEY_FILE, "the network key")
    }

    fn secret(&self, file: &str) -> Result<Option<Zeroizing<[u8; 32]>>, LedgerError> {
        let path = self.dir.join(file);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LedgerError::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                });
            }
        };
        let (secret, _) = keyfile::decrypt_secret(&text, self.passphrase.as_bytes())
            .map_err(|e| LedgerError::Store(format!("{}: {e} ({})", path.display(), e.code())))?;
        Ok(Some(secret))
    }

    fn secret_or_new(&self, file: &str, what: &str) -> Result<Zeroizing<[u8; 32]>, LedgerError> {
        if let Some(secret) = self.secret(file)? {
            return Ok(secret);
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(secret.as_mut());
        let text =
            keyfile::encrypt_secret(&secret, None, self.passphrase.as_bytes(), self.scrypt_log_n)
                .map_err(|e| LedgerError::Store(format!("encrypting {what}: {e}")))?;
        self.write_new(&self.dir.join(file), &text)?;
        Ok(secret)
    }

    /// The node's own key: it signs the blocks this node makes (genesis, pool commitments,
    /// verdicts, versions it places, ledger anchors) and is the operator account's key.
    /// Made on first use; `node` in the keystore names it by address.
    /// Unlocked once per keystore value (and its clones): opening a file costs a scrypt run
    /// (~0.75 s), so later calls reuse the key.
    pub fn node_key(&self) -> Result<SigningKey, LedgerError> {
        if let Some(key) = self.node.get() {
            return Ok(key.clone());
        }
        let marker = self.dir.join(NODE_KEY_FILE);
        let key = match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let address: Address = text.trim().parse().map_err(|e| {
                    LedgerError::Store(format!("{}: not an address: {e}", marker.display()))
                })?;
                self.load(&address)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = new_key();
                let address = self.store(&key)?;
                let tmp = marker.with_extension("tmp");
                std::fs::write(&tmp, format!("{address}\n"))
                    .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, &marker))
                    .map_err(io(format!("writing {}", marker.display())))?;
                key
            }
            Err(e) => {
                return Err(LedgerError::Io {
                    context: format!("reading {}", marker.display()),
                    source: e,
                });
            }
        };
        Ok(self.node.get_or_init(|| key).clone())
    }

    /// Makes `key` the node's key (stored encrypted, and named by the `node` file), for a
    /// data directory whose network that key created. Refused when the keystore already
    /// names another node key.
    pub fn set_node_key(&self, key: &SigningKey) -> Result<Address, LedgerError> {
        let address = blyan_primitives::address_of(key);
        let marker = self.dir.join(NODE_KEY_FILE);
        if let Ok(text) = std::fs::read_to_string(&marker) {
            return match text.trim().parse::<Address>() {
                Ok(existing) if existing == address => Ok(address),
                _ => Err(LedgerError::Store(format!(
                    "{} already names node key {}",
                    marker.display(),
                    text.trim()
                ))),
            };
        }
        if !self.path(&address).exists() {
            self.store(key)?;
        }
        let tmp = marker.with_extension("tmp");
        std::fs::write(&tmp, format!("{address}\n"))
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &marker))
            .map_err(io(format!("writing {}", marker.display())))?;
        Ok(address)
    }

    /// The key file of `address`.
    pub fn path(&self, address: &Address) -> PathBuf {
        self.dir.join(format!("{}.json", address.to_hex_lower()))
    }

    /// Loads `address`'s key: decrypts its file with the keystore's passphrase and checks
    /// the key is that address's.
    pub fn load(&self, address: &Address) -> Result<SigningKey, LedgerError> {
        let path = self.path(address);
        let text = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        let key = keyfile::decrypt(&text, self.passphrase.as_bytes()).map_err(|e| {
            LedgerError::Store(format!(
                "{}: {e} ({}){}",
                path.display(),
                e.code(),
                if matches!(e, keyfile::KeyfileError::WrongPassphrase) {
                    "; the keystore's passphrase comes from BLYAN_KEY_PASSPHRASE, \
                     --key-passphrase-file or the prompt"
                } else {
                    ""
                }
            ))
        })?;
        if address_of(&key) != *address {
            return Err(LedgerError::Store(format!(
                "{} does not hold the key of {address}",
                path.display()
            )));
        }
        Ok(key)
    }
}

/// A fresh random secret key.
fn new_key() -> SigningKey {
    let mut rng = rand::rng();
    loop {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        // A uniformly random 32 bytes is a valid scalar except with probability ~2^-128.
        if let Ok(key) = SigningKey::from_slice(secret.as_ref()) {
            return key;
        }
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), LedgerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), LedgerError> {
    Ok(())
}

/// A fresh API key: the prefix and 32 random bytes, hex.
pub(crate) fn new_api_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{API_KEY_PREFIX}{}", hex::encode(bytes))
}

/// Stores an API key's hash for `address`'s account, which must exist.
pub(crate) fn insert_api_key(
    tx: &mut dyn crate::Tx,
    address: Address,
    hash: &str,
    now_ms: u64,
) -> Result<(), LedgerError> {
    if !account_exists(tx, &address)? {
        return Err(LedgerError::refused(
            Refusal::UnknownAccount,
            format!("no account {address}"),
        ));
    }
    tx.exec(
        "INSERT INTO api_keys (key_hash, address, created_ms) VALUES ($1, $2, $3)",
        &[Value::Text(hash.to_owned()), hex(&address), now_i64(now_ms)],
    )?;
    Ok(())
}

pub(crate) fn key_hash(api_key: &str) -> String {
    Hash::of(api_key.as_bytes()).to_string()
}

impl Ledger {
    /// Makes a key in `keystore`, opens its account and issues an API key bound to it.
    /// Returns the address and the API key, which is shown once and stored only hashed.
    pub fn new_user(
        &self,
        keystore: &Keystore,
        now_ms: u64,
    ) -> Result<(Address, String), LedgerError> {
        let address = keystore.generate()?;
        self.create_account(address, AccountKind::User, now_ms)?;
        let api_key = self.issue_api_key(address, now_ms)?;
        Ok((address, api_key))
    }

    /// Issues a new API key for `address`'s account.
    pub fn issue_api_key(&self, address: Address, now_ms: u64) -> Result<String, LedgerError> {
        let api_key = new_api_key();
        let hash = key_hash(&api_key);
        sql::write(&*self.store, |tx| {
            insert_api_key(tx, address, &hash, now_ms)
        })?;
        Ok(api_key)
    }

    /// The account an API key bills.
    pub fn account_for_api_key(&self, api_key: &str) -> Result<Address, LedgerError> {
        let unknown = || {
            LedgerError::refused(
                Refusal::UnknownApiKey,
                "the API key is not known to this node",
            )
        };
        if !api_key.starts_with(API_KEY_PREFIX) || api_key.len() > 128 {
            return Err(unknown());
        }
        let hash = key_hash(api_key);
        let found = sql::read(&*self.store, |tx| {
            tx.query_opt(
                "SELECT address FROM api_keys WHERE key_hash = $1",
                &[Value::Text(hash.clone())],
            )?
            .map(|r| parse_hex(r.text(0)?))
            .transpose()
        })?;
        found.ok_or_else(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_private_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keystore::new(dir.path().join("keystore"), "pw").with_scrypt_log_n(10);
        let a = ks.generate().expect("generate");
        let key = ks.load(&a).expect("load");
        assert_eq!(address_of(&key), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ks.path(&a))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = ks.generate().expect("generate");
        assert_ne!(a, b);
    }

    #[test]
    fn the_node_key_is_made_once_and_found_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keystore::new(dir.path().join("keystore"), "pw").with_scrypt_log_n(10);
        let first = address_of(&ks.node_key().expect("node key"));
        let again = address_of(&ks.node_key().expect("node key"));
        assert_eq!(first, again);
        let other = Keystore::new(
            tempfile::tempdir().expect("tempdir").path().join("ks"),
            "pw",
        )
        .with_scrypt_log_n(10);
        assert_ne!(address_of(&other.node_key().expect("node key")), first);
    }

    #[test]
    fn the_pool_secret_is_made_once_encrypted_and_needs_the_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ks = Keystore::new(dir.path().join("keystore"), "pw").with_scrypt_log_n(10);
        assert!(ks.pool_secret().expect("read").is_none());
        let made = ks.pool_secret_or_new().expect("made");
        assert_eq!(*ks.pool_secret_or_new().expect("again"), *made);
        let text = std::fs::read_to_string(dir.path().join("keystore").join(POOL_SECRET_FILE))
            .expect("file");
        assert!(!text.contains(&hex::encode(*made)), "stored encrypted");
        let wrong = Keystore::new(dir.path().join("keystore"), "other");
        let e = wrong.pool_secret().expect_err("wrong passphrase");
        assert!(e.to_string().contains("wrong_passphrase"), "{e}");
    }
}
