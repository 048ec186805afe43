//! Secret keys at rest in the Web3 Secret Storage format, version 3: the JSON that Ethereum
//! clients and wallets (geth, ethers, web3.js, eth-account) write and read.
//!
//! A passphrase goes through a key derivation function (scrypt, or PBKDF2-HMAC-SHA256 when
//! reading) to 32 bytes; the first 16 are the AES-128-CTR key that encrypts the secret, and
//! `mac = keccak256(derived[16..32] ‖ ciphertext)` lets a wrong passphrase be told from a
//! damaged file before anything is decrypted. Derived keys and the plaintext are zeroized.

use aes::cipher::{KeyIvInit, StreamCipher};
use blyan_primitives::{Address, SigningKey, address_of};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha3::{Digest, Keccak256};
use zeroize::Zeroizing;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// scrypt cost of the files Blyan writes: N = 2^18, r = 8, p = 1 (what geth calls standard).
pub const SCRYPT_LOG_N: u8 = 18;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

/// Largest scrypt or PBKDF2 work a file may ask for when read: a file is outside input, and
/// N = 2^22 with r = 8 is already 4 GiB of memory.
const SCRYPT_LOG_N_MAX: u8 = 20;
const SCRYPT_R_MAX: u32 = 16;
const SCRYPT_P_MAX: u32 = 16;
const PBKDF2_ROUNDS_MAX: u32 = 10_000_000;

/// Longest key file read.
pub const KEYFILE_LEN_MAX: usize = 64 * 1024;

/// Why a key file could not be opened. Each case has a stable [`code`](KeyfileError::code).
#[derive(Debug, thiserror::Error)]
pub enum KeyfileError {
    /// Not a version-3 key file (bad JSON, a missing field, bad hex, wrong lengths).
    #[error("not a Web3 Secret Storage (version 3) key file: {0}")]
    Malformed(String),
    /// A cipher, KDF or parameter this implementation does not accept.
    #[error("unsupported key file: {0}")]
    Unsupported(String),
    /// The MAC does not match: the passphrase is wrong (or the ciphertext was altered).
    #[error("wrong passphrase for this key file")]
    WrongPassphrase,
    /// It decrypts, but not to a valid secp256k1 key, or not to the address it names.
    #[error("the key file decrypts to {0}")]
    BadKey(String),
}

impl KeyfileError {
    /// A stable identifier for clients and logs.
    pub fn code(&self) -> &'static str {
        match self {
            KeyfileError::Malformed(_) => "malformed_keyfile",
            KeyfileError::Unsupported(_) => "unsupported_keyfile",
            KeyfileError::WrongPassphrase => "wrong_passphrase",
            KeyfileError::BadKey(_) => "bad_keyfile_key",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFileJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    crypto: CryptoJson,
    id: String,
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct CryptoJson {
    cipher: String,
    cipherparams: CipherParams,
    ciphertext: String,
    kdf: String,
    kdfparams: serde_json::Value,
    mac: String,
}

#[derive(Serialize, Deserialize)]
struct CipherParams {
    iv: String,
}

#[derive(Deserialize)]
struct ScryptParams {
    dklen: u32,
    n: u64,
    r: u32,
    p: u32,
    salt: String,
}

#[derive(Deserialize)]
struct Pbkdf2Params {
    c: u32,
    dklen: u32,
    prf: String,
    salt: String,
}

fn unhex(field: &str, s: &str) -> Result<Vec<u8>, KeyfileError> {
    hex::decode(s.strip_prefix("0x").unwrap_or(s))
        .map_err(|e| KeyfileError::Malformed(format!("{field}: {e}")))
}

fn mac_of(derived: &[u8; 32], ciphertext: &[u8]) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(&derived[16..32]);
    h.update(ciphertext);
    h.finalize().into()
}

fn scrypt_derive(
    passphrase: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, KeyfileError> {
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|e| KeyfileError::Unsupported(format!("scrypt parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, salt, &params, out.as_mut())
        .map_err(|e| KeyfileError::Unsupported(format!("scrypt: {e}")))?;
    Ok(out)
}

/// Encrypts `key` under `passphrase` with scrypt (N = 2^`log_n`, r = 8, p = 1), a fresh salt
/// and IV. Returns the file's JSON text.
pub fn encrypt(key: &SigningKey, passphrase: &[u8], log_n: u8) -> Result<String, KeyfileError> {
    let secret = Zeroizing::new(<[u8; 32]>::from(key.to_bytes()));
    encrypt_secret(&secret, Some(address_of(key)), passphrase, log_n)
}

/// Encrypts any 32-byte secret as [`encrypt`] does a key; `address` is the file's address
/// field (none for a secret that is not an account's key, such as the pool secret).
pub fn encrypt_secret(
    secret: &[u8; 32],
    address: Option<Address>,
    passphrase: &[u8],
    log_n: u8,
) -> Result<String, KeyfileError> {
    let mut rng = rand::rng();
    let mut salt = [0u8; 32];
    let mut iv = [0u8; 16];
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut iv);
    rng.fill_bytes(&mut id);
    // A random (version 4) UUID.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let derived = scrypt_derive(passphrase, &salt, log_n, SCRYPT_R, SCRYPT_P)?;
    let mut ciphertext = Zeroizing::new(secret.to_vec());
    let mut cipher = Aes128Ctr::new(derived[..16].into(), &iv.into());
    cipher.apply_keystream(&mut ciphertext);
    let mac = mac_of(&derived, &ciphertext);
    let h = hex::encode(id);
    let file = KeyFileJson {
        address: address.map(|a| hex::encode(a.0)),
        crypto: CryptoJson {
            cipher: "aes-128-ctr".into(),
            cipherparams: CipherParams {
                iv: hex::encode(iv),
            },
            ciphertext: hex::encode(&ciphertext[..]),
            kdf: "scrypt".into(),
            kdfparams: serde_json::json!({
                "dklen": 32, "n": 1u64 << log_n, "r": SCRYPT_R, "p": SCRYPT_P,
                "salt": hex::encode(salt),
            }),
            mac: hex::encode(mac),
        },
        id: format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        ),
        version: 3,
    };
    serde_json::to_string_pretty(&file).map_err(|e| KeyfileError::Malformed(e.to_string()))
}

/// Decrypts a version-3 key file with `passphrase`. When the file names an address, the key
/// must be that address's.
pub fn decrypt(text: &[u8], passphrase: &[u8]) -> Result<SigningKey, KeyfileError> {
    let (secret, named) = decrypt_secret(text, passphrase)?;
    let key = SigningKey::from_slice(secret.as_ref())
        .map_err(|_| KeyfileError::BadKey("no valid secp256k1 secret".into()))?;
    if let Some(named) = named
        && named != address_of(&key)
    {
        return Err(KeyfileError::BadKey(format!(
            "the key of {}, but the file names {named}",
            address_of(&key)
        )));
    }
    Ok(key)
}

/// Decrypts a version-3 file's 32-byte secret with `passphrase`; also returns the address
/// the file names, if any.
pub fn decrypt_secret(
    text: &[u8],
    passphrase: &[u8],
) -> Result<(Zeroizing<[u8; 32]>, Option<Address>), KeyfileError> {
    if text.len() > KEYFILE_LEN_MAX {
        return Err(KeyfileError::Malformed(format!(
            "{} bytes; a key file is at most {KEYFILE_LEN_MAX}",
            text.len()
        )));
    }
    let file: KeyFileJson =
        serde_json::from_slice(text).map_err(|e| KeyfileError::Malformed(e.to_string()))?;
    if file.version != 3 {
        return Err(KeyfileError::Unsupported(format!(
            "version {}, not 3",
            file.version
        )));
    }
    let c = &file.crypto;
    if c.cipher != "aes-128-ctr" {
        return Err(KeyfileError::Unsupported(format!("cipher {}", c.cipher)));
    }
    let iv = unhex("iv", &c.cipherparams.iv)?;
    let ciphertext = unhex("ciphertext", &c.ciphertext)?;
    let mac = unhex("mac", &c.mac)?;
    if iv.len() != 16 || ciphertext.len() != 32 || mac.len() != 32 {
        return Err(KeyfileError::Malformed(
            "iv is 16 bytes, ciphertext 32 and mac 32".into(),
        ));
    }
    let derived = match c.kdf.as_str() {
        "scrypt" => {
            let p: ScryptParams = serde_json::from_value(c.kdfparams.clone())
                .map_err(|e| KeyfileError::Malformed(format!("kdfparams: {e}")))?;
            if p.dklen != 32 {
                return Err(KeyfileError::Unsupported(format!("dklen {}", p.dklen)));
            }
            if !p.n.is_power_of_two() || p.n < 2 {
                return Err(KeyfileError::Malformed(format!(
                    "scrypt n {} is not a power of two",
                    p.n
                )));
            }
            let log_n = p.n.trailing_zeros() as u8;
            if log_n > SCRYPT_LOG_N_MAX || p.r > SCRYPT_R_MAX || p.p > SCRYPT_P_MAX {
                return Err(KeyfileError::Unsupported(format!(
                    "scrypt n {} r {} p {}: at most n 2^{SCRYPT_LOG_N_MAX}, r {SCRYPT_R_MAX}, \
                     p {SCRYPT_P_MAX}",
                    p.n, p.r, p.p
                )));
            }
            scrypt_derive(passphrase, &unhex("salt", &p.salt)?, log_n, p.r, p.p)?
        }
        "pbkdf2" => {
            let p: Pbkdf2Params = serde_json::from_value(c.kdfparams.clone())
                .map_err(|e| KeyfileError::Malformed(format!("kdfparams: {e}")))?;
            if p.dklen != 32 || p.prf != "hmac-sha256" {
                return Err(KeyfileError::Unsupported(format!(
                    "pbkdf2 with {} and dklen {}",
                    p.prf, p.dklen
                )));
            }
            if p.c == 0 || p.c > PBKDF2_ROUNDS_MAX {
                return Err(KeyfileError::Unsupported(format!("pbkdf2 c {}", p.c)));
            }
            let mut out = Zeroizing::new([0u8; 32]);
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                passphrase,
                &unhex("salt", &p.salt)?,
                p.c,
                out.as_mut(),
            );
            out
        }
        other => return Err(KeyfileError::Unsupported(format!("kdf {other}"))),
    };
    if mac_of(&derived, &ciphertext)[..] != mac[..] {
        return Err(KeyfileError::WrongPassphrase);
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&ciphertext);
    let mut cipher = Aes128Ctr::new(derived[..16].into(), iv[..].into());
    cipher.apply_keystream(secret.as_mut());
    let named = match &file.address {
        Some(named) => Some(
            format!("0x{}", named.trim_start_matches("0x"))
                .parse::<Address>()
                .map_err(|e| KeyfileError::Malformed(format!("address: {e}")))?,
        ),
        None => None,
    };
    Ok((secret, named))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two test vectors of the Web3 Secret Storage Definition (password `testpassword`);
    /// both open with Python's eth-account (`Account.decrypt`). The scrypt one uses r = 1 with
    /// N = 2^18, which RFC 7914 forbids (N must be below 2^(16·r)) and RustCrypto's scrypt
    /// refuses; no Ethereum client writes such files (geth and eth-account use r = 8).
    const SPEC_SCRYPT: &str = r#"{"crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"83dbcc02d8ccb40e466191a123791e0e"},"ciphertext":"d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c","kdf":"scrypt","kdfparams":{"dklen":32,"n":262144,"p":8,"r":1,"salt":"ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"},"mac":"2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097"},"id":"3198bc9c-6672-5ab3-d995-4942343ae5b6","version":3}"#;
    const SPEC_PBKDF2: &str = r#"{"crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"6087dab2f9fdbbfaddc31a909735c1e6"},"ciphertext":"5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46","kdf":"pbkdf2","kdfparams":{"c":262144,"dklen":32,"prf":"hmac-sha256","salt":"ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},"mac":"517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"},"id":"3198bc9c-6672-5ab3-d995-4942343ae5b6","version":3}"#;
    const SPEC_SECRET: &str = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";

    /// Written by Python's eth-account 0.13 (`Account.encrypt("0x11…11", "blyan test
    /// passphrase")`, its defaults: scrypt N = 2^18, r = 8, p = 1).
    const ETH_ACCOUNT_FILE: &str = r#"{"address":"19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A","crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"04709a8db297d8c62ece8b8e2adb6dee"},"ciphertext":"bb9c46b01f273569df9fa7cbec8221d4e42caf621c7467b0a471560ceff6b36f","kdf":"scrypt","kdfparams":{"dklen":32,"n":262144,"r":8,"p":1,"salt":"6b1a07deb80c838ae4b3af57a1d95110"},"mac":"4a5a8788fd9edcdb8ea7b444f0ad5195322a307022a5564615e00c8644057b74"},"id":"5795fd47-1e3d-4ab8-8c15-10eabd4f4a67","version":3}"#;

    #[test]
    fn the_specification_vector_opens() {
        let key = decrypt(SPEC_PBKDF2.as_bytes(), b"testpassword").unwrap();
        assert_eq!(hex::encode(key.to_bytes()), SPEC_SECRET);
        let wrong = decrypt(SPEC_PBKDF2.as_bytes(), b"testpassworD").unwrap_err();
        assert_eq!(wrong.code(), "wrong_passphrase");
        let refused = decrypt(SPEC_SCRYPT.as_bytes(), b"testpassword").unwrap_err();
        assert_eq!(refused.code(), "unsupported_keyfile", "{refused}");
    }

    #[test]
    fn a_file_written_by_eth_account_opens() {
        let key = decrypt(ETH_ACCOUNT_FILE.as_bytes(), b"blyan test passphrase").unwrap();
        assert_eq!(key.to_bytes().as_slice(), &[0x11; 32]);
        assert_eq!(
            address_of(&key).to_string().to_lowercase(),
            "0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a"
        );
    }

    #[test]
    fn what_blyan_writes_opens_again_and_names_its_address() {
        let key = SigningKey::from_slice(&[5; 32]).unwrap();
        // A cheap N keeps the test fast; the format is the same at any N.
        let text = encrypt(&key, b"correct horse", 10).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 3);
        assert_eq!(json["crypto"]["kdf"], "scrypt");
        assert_eq!(json["crypto"]["kdfparams"]["n"], 1024);
        assert_eq!(
            json["address"].as_str().unwrap(),
            hex::encode(address_of(&key).0)
        );
        let back = decrypt(text.as_bytes(), b"correct horse").unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        assert_eq!(
            decrypt(text.as_bytes(), b"").unwrap_err().code(),
            "wrong_passphrase"
        );
    }

    #[test]
    fn hostile_files_are_refused_with_their_codes() {
        let key = SigningKey::from_slice(&[5; 32]).unwrap();
        let text = encrypt(&key, b"pw", 4).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|j| j["version"] = 1.into()), "unsupported_keyfile"),
            (
                Box::new(|j| j["crypto"]["cipher"] = "aes-128-cbc".into()),
                "unsupported_keyfile",
            ),
            (
                Box::new(|j| j["crypto"]["kdfparams"]["n"] = (1u64 << 30).into()),
                "unsupported_keyfile",
            ),
            (
                Box::new(|j| j["crypto"]["kdfparams"]["n"] = 1000.into()),
                "malformed_keyfile",
            ),
            (
                Box::new(|j| j["crypto"]["ciphertext"] = "00".into()),
                "malformed_keyfile",
            ),
            (
                Box::new(|j| j["crypto"]["mac"] = "zz".into()),
                "malformed_keyfile",
            ),
            (
                Box::new(|j| j["crypto"]["kdf"] = "argon2".into()),
                "unsupported_keyfile",
            ),
            (
                Box::new(|j| j["address"] = "0000000000000000000000000000000000000001".into()),
                "bad_keyfile_key",
            ),
        ];
        for (change, code) in cases {
            let mut j = json.clone();
            change(&mut j);
            let err = decrypt(j.to_string().as_bytes(), b"pw").unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        // A flipped ciphertext byte fails the MAC, as a wrong passphrase does.
        let ct = json["crypto"]["ciphertext"].as_str().unwrap().to_owned();
        let flipped = format!("{}{}", if &ct[..1] == "0" { "1" } else { "0" }, &ct[1..]);
        json["crypto"]["ciphertext"] = flipped.into();
        assert_eq!(
            decrypt(json.to_string().as_bytes(), b"pw")
                .unwrap_err()
                .code(),
            "wrong_passphrase"
        );
        assert_eq!(
            decrypt(&vec![b' '; KEYFILE_LEN_MAX + 1], b"pw")
                .unwrap_err()
                .code(),
            "malformed_keyfile"
        );
        assert_eq!(
            decrypt(b"{not json", b"pw").unwrap_err().code(),
            "malformed_keyfile"
        );
    }

    /// `cargo test --release -p blyan-ledger --lib -- --ignored --nocapture unlock_timing`
    #[test]
    #[ignore = "a timing run; its results are in docs/BENCHMARKS.md"]
    fn unlock_timing() {
        let key = SigningKey::from_slice(&[5; 32]).unwrap();
        let text = encrypt(&key, b"a passphrase", SCRYPT_LOG_N).unwrap();
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            decrypt(text.as_bytes(), b"a passphrase").unwrap();
            times.push(started.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "unlock (scrypt N = 2^{SCRYPT_LOG_N}, r = 8, p = 1): median {:.3} s, min {:.3} s, max {:.3} s",
            times[2], times[0], times[4]
        );
    }
}
