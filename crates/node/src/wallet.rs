//! Wallet login on the node: Sign-In with Ethereum against this node's public URL and chain,
//! session tokens signed by the node's network key, the wallet's account (opened at its
//! first login) and the API keys a wallet manages itself.
//!
//! The session key is the node's Ed25519 network key (the one `GET /net/id` names), so a
//! token's issuer is the node's public identity. It is unlocked on the first login, not at
//! start: opening it costs a scrypt run, which nodes that never see a wallet need not pay.
//! Revoked tokens are stored in the ledger's database and restored then, so a logout
//! survives a restart.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use blyan_auth::{Nonces, Policy, Sessions};
use blyan_ledger::{ApiKeyInfo, Keystore};
use blyan_primitives::{Address, Amount};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ConfigLayer, Node, NodeError, SecretText};

/// Nonces remembered at once; the oldest are forgotten first.
const NONCES_MAX: usize = 100_000;
/// How long a nonce may wait for its login.
const NONCE_TTL: Duration = Duration::from_secs(600);
/// Stripe's API.
const STRIPE_API_DEFAULT: &str = "https://api.stripe.com";

/// What a card payment buys: `amount_minor` of `currency` (cents of dollars) for `bly` BLY.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTier {
    /// The tier's name, as a checkout names it (`metadata.tier`).
    pub name: String,
    /// The price in the currency's minor unit.
    pub amount_minor: u64,
    /// ISO 4217 code, lower case.
    pub currency: String,
    /// BLY credited, decimal.
    pub bly: String,
}

impl PriceTier {
    /// The BLY credited.
    pub fn amount(&self) -> Result<Amount, NodeError> {
        blyan_ledger::parse_amount(&self.bly)
            .map_err(|e| NodeError::Config(format!("price tier {:?}: bly: {e}", self.name)))
    }
}

/// The default tiers: 5, 20 and 50 US dollars for 5,000, 20,000 and 50,000 BLY.
fn default_tiers() -> Vec<PriceTier> {
    [
        ("starter", 500, "5000"),
        ("plus", 2000, "20000"),
        ("pro", 5000, "50000"),
    ]
    .into_iter()
    .map(|(name, cents, bly)| PriceTier {
        name: name.into(),
        amount_minor: cents,
        currency: "usd".into(),
        bly: bly.into(),
    })
    .collect()
}

/// Wallet login and card top-up settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WalletSettings {
    /// The URL people open this node's web UI at (`scheme://host[:port]`). A wallet login
    /// must name its `host[:port]` as domain and it, or a path under it, as URI
    /// [default: `http://` and the listen address].
    pub public_url: Option<String>,
    /// The EIP-155 chain id a login must name [default: 1].
    pub siwe_chain_id: u64,
    /// Seconds a session token lasts before it must be refreshed [default: 900].
    pub session_ttl_s: u64,
    /// Stripe's secret API key; none: checkout is off. Never serialized.
    #[serde(skip)]
    pub stripe_api_key: SecretText,
    /// The webhook endpoint's signing secret; none: the webhook is off. Never serialized.
    #[serde(skip)]
    pub stripe_webhook_secret: SecretText,
    /// Stripe's API base URL [default: `https://api.stripe.com`].
    pub stripe_api_base: String,
    /// How far a webhook's signed timestamp may be from this node's clock, seconds
    /// [default: 300].
    pub stripe_tolerance_s: u64,
    /// What a card payment buys.
    pub price_tiers: Vec<PriceTier>,
}

impl Default for WalletSettings {
    fn default() -> WalletSettings {
        WalletSettings {
            public_url: None,
            siwe_chain_id: 1,
            session_ttl_s: 900,
            stripe_api_key: SecretText::default(),
            stripe_webhook_secret: SecretText::default(),
            stripe_api_base: STRIPE_API_DEFAULT.into(),
            stripe_tolerance_s: 300,
            price_tiers: default_tiers(),
        }
    }
}

impl WalletSettings {
    pub(crate) fn apply(&mut self, layer: &ConfigLayer) {
        if let Some(v) = &layer.public_url {
            self.public_url = Some(v.trim_end_matches('/').to_owned());
        }
        if let Some(v) = layer.siwe_chain_id {
            self.siwe_chain_id = v;
        }
        if let Some(v) = layer.session_ttl_s {
            self.session_ttl_s = v;
        }
        if let Some(v) = &layer.stripe_api_key {
            self.stripe_api_key = SecretText::new(v.clone());
        }
        if let Some(v) = &layer.stripe_webhook_secret {
            self.stripe_webhook_secret = SecretText::new(v.clone());
        }
        if let Some(v) = &layer.stripe_api_base {
            self.stripe_api_base = v.trim_end_matches('/').to_owned();
        }
        if let Some(v) = layer.stripe_tolerance_s {
            self.stripe_tolerance_s = v;
        }
        if let Some(v) = &layer.price_tiers {
            self.price_tiers = v.clone();
        }
    }

    pub(crate) fn check(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Config(m));
        if let Some(url) = &self.public_url
            && origin_parts(url).is_none()
        {
            return bad(format!(
                "public_url {url:?} must be http(s)://host[:port], with no path"
            ));
        }
        if !(60..=86_400).contains(&self.session_ttl_s) {
            return bad(format!(
                "session_ttl_s = {} is outside 60..=86400",
                self.session_ttl_s
            ));
        }
        if !(1..=3600).contains(&self.stripe_tolerance_s) {
            return bad(format!(
                "stripe_tolerance_s = {} is outside 1..=3600",
                self.stripe_tolerance_s
            ));
        }
        if !(self.stripe_api_base.starts_with("https://")
            || self.stripe_api_base.starts_with("http://"))
        {
            return bad("stripe_api_base must be an http(s) URL".into());
        }
        if self.price_tiers.len() > 32 {
            return bad("at most 32 price tiers".into());
        }
        for (i, t) in self.price_tiers.iter().enumerate() {
            let named = |what: &str| format!("price tier {:?}: {what}", t.name);
            if t.name.is_empty()
                || t.name.len() > 32
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad(named("a name is 1 to 32 letters, digits, `_` or `-`"));
            }
            if t.amount_minor == 0 || t.amount_minor > 100_000_000 {
                return bad(named("amount_minor is 1 to 100000000"));
            }
            if t.currency.len() != 3 || !t.currency.bytes().all(|b| b.is_ascii_lowercase()) {
                return bad(named("currency is a lower-case ISO 4217 code (usd)"));
            }
            if t.amount()?.is_zero() {
                return bad(named("bly must be above zero"));
            }
            let clash = self.price_tiers[..i].iter().any(|o| {
                o.name == t.name || (o.amount_minor == t.amount_minor && o.currency == t.currency)
            });
            if clash {
                return bad(named(
                    "names, and prices in one currency, must differ between tiers",
                ));
            }
        }
        Ok(())
    }

    /// The tier named `name`.
    pub fn tier(&self, name: &str) -> Option<&PriceTier> {
        self.price_tiers.iter().find(|t| t.name == name)
    }
}

/// `(scheme, host[:port])` of an origin URL with no path.
fn origin_parts(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let ok = matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest.len() <= 253
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    ok.then_some((scheme, rest))
}

/// The wallet-login state of a node.
pub(crate) struct WalletAuth {
    /// The configured public URL, if any; else the address the API listens on names the node.
    public_url: Option<String>,
    chain_id: u64,
    nonces: Nonces,
    ttl: Duration,
    pub(crate) keystore: Keystore,
    sessions: OnceLock<Sessions>,
    opening: Mutex<()>,
}

impl std::fmt::Debug for WalletAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletAuth")
            .field("public_url", &self.public_url)
            .field("chain_id", &self.chain_id)
            .finish_non_exhaustive()
    }
}

impl WalletAuth {
    pub(crate) fn new(config: &crate::NodeConfig, keystore: Keystore) -> WalletAuth {
        let w = &config.wallet;
        WalletAuth {
            public_url: w.public_url.clone(),
            chain_id: w.siwe_chain_id,
            nonces: Nonces::new(NONCE_TTL, NONCES_MAX),
            ttl: Duration::from_secs(w.session_ttl_s),
            keystore,
            sessions: OnceLock::new(),
            opening: Mutex::new(()),
        }
    }
}

/// A nonce for a login, with what the message must say.
#[derive(Clone, Debug, Serialize)]
pub struct LoginNonce {
    /// The nonce.
    pub nonce: String,
    /// When it stops being accepted (RFC 3339).
    pub expires_at: String,
    /// The domain the message must name.
    pub domain: String,
    /// The URI the message must name (or a path under it).
    pub uri: String,
    /// The chain id the message must name.
    pub chain_id: u64,
    /// The wallet asked about, EIP-55.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

/// A session handed to a wallet.
#[derive(Clone, Debug, Serialize)]
pub struct WalletSession {
    /// The bearer token (a JWT).
    pub token: String,
    /// The wallet, EIP-55.
    pub address: Address,
    /// When the token stops being accepted (RFC 3339): refresh before then.
    pub expires_at: String,
    /// Whether this login opened the wallet's account.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub new_account: bool,
}

fn at(now_ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl Node {
    /// What a login message must name: this node's domain, URI and chain. The domain and
    /// URI are the configured public URL's; without one, the address the API listens on
    /// (as bound, so a node told to listen on port 0 names the port it got).
    pub fn login_policy(&self) -> Policy {
        let origin = match &self.wallet.public_url {
            Some(url) => url.clone(),
            None => {
                let bound = *self.listening.lock().unwrap_or_else(|p| p.into_inner());
                format!("http://{}", bound.unwrap_or(self.config.listen))
            }
        };
        let domain = origin_parts(&origin)
            .map(|(_, host)| host.to_owned())
            .unwrap_or_else(|| self.config.listen.to_string());
        Policy::new(domain, origin, self.wallet.chain_id)
    }

    /// A fresh single-use nonce for a login, with what the message must say. With `wallet`,
    /// the answer also spells it as the message must (EIP-55): wallets hand out addresses
    /// in lower case.
    pub fn login_nonce(&self, now_ms: u64, wallet: Option<Address>) -> LoginNonce {
        let (nonce, expires) = self.wallet.nonces.issue(at(now_ms));
        let p = self.login_policy();
        LoginNonce {
            nonce,
            expires_at: rfc3339(expires),
            domain: p.domain,
            uri: p.uri,
            chain_id: p.chain_id,
            address: wallet,
        }
    }

    /// The session signer, unlocked (and the stored revocations restored) on first use.
    fn sessions(&self, now_ms: u64) -> Result<&Sessions, NodeError> {
        if let Some(s) = self.wallet.sessions.get() {
            return Ok(s);
        }
        let _one = self
            .wallet
            .opening
            .lock()
            .map_err(|_| NodeError::Internal("session key lock poisoned".into()))?;
        if let Some(s) = self.wallet.sessions.get() {
            return Ok(s);
        }
        let seed = self.wallet.keystore.network_secret_or_new()?;
        let sessions = Sessions::new(&seed, self.wallet.ttl);
        let now = at(now_ms);
        for (jti, expires_ms) in self.ledger.revoked_sessions(now_ms)? {
            sessions.mark_revoked(jti, (expires_ms / 1000) as i64, now);
        }
        Ok(self.wallet.sessions.get_or_init(|| sessions))
    }

    /// Checks a Sign-In with Ethereum message and its signature; on success opens the
    /// wallet's account if it has none and returns a session.
    pub fn login(
        &self,
        message: &str,
        signature: &str,
        now_ms: u64,
    ) -> Result<WalletSession, NodeError> {
        let now = at(now_ms);
        let login = blyan_auth::verify(
            &self.login_policy(),
            &self.wallet.nonces,
            message,
            signature,
            now,
        )
        .inspect_err(|e| self.metrics.login(e.code()))
        .map_err(NodeError::Login)?;
        let new_account = self.ledger.open_wallet(login.address, now_ms)?;
        let session = self
            .sessions(now_ms)?
            .issue(login.address, now, login.expires_at);
        self.metrics.login("ok");
        Ok(WalletSession {
            token: session.token,
            address: session.address,
            expires_at: rfc3339(session.expires_at),
            new_account,
        })
    }

    /// The wallet a session token belongs to, if the token is good at `now_ms`.
    pub fn session_wallet(&self, token: &str, now_ms: u64) -> Result<Address, NodeError> {
        let claims = self
            .sessions(now_ms)?
            .check(token, at(now_ms))
            .map_err(NodeError::Session)?;
        claims
            .sub
            .parse()
            .map_err(|_| NodeError::Session(blyan_auth::SessionError::Invalid))
    }

    /// A new token for the holder of `token`, which is revoked.
    pub fn refresh_session(&self, token: &str, now_ms: u64) -> Result<WalletSession, NodeError> {
        let (session, old) = self
            .sessions(now_ms)?
            .refresh(token, at(now_ms))
            .map_err(NodeError::Session)?;
        self.store_revocation(&old)?;
        Ok(WalletSession {
            token: session.token,
            address: session.address,
            expires_at: rfc3339(session.expires_at),
            new_account: false,
        })
    }

    /// Revokes `token` (a logout), here and in the ledger's database.
    pub fn logout(&self, token: &str, now_ms: u64) -> Result<(), NodeError> {
        let claims = self
            .sessions(now_ms)?
            .revoke(token, at(now_ms))
            .map_err(NodeError::Session)?;
        self.store_revocation(&claims)
    }

    fn store_revocation(&self, claims: &blyan_auth::Claims) -> Result<(), NodeError> {
        let expires_ms = u64::try_from(claims.exp).unwrap_or(0).saturating_mul(1000);
        self.ledger
            .revoke_session(&claims.jti, expires_ms, crate::unix_ms())
            .map_err(NodeError::from)
    }

    /// The API keys of `wallet`'s account.
    pub fn wallet_api_keys(&self, wallet: Address) -> Result<Vec<ApiKeyInfo>, NodeError> {
        Ok(self.ledger.api_keys(wallet)?)
    }

    /// A new API key for `wallet`'s account: the key (shown once) and its id.
    pub fn new_wallet_api_key(
        &self,
        wallet: Address,
        now_ms: u64,
    ) -> Result<(String, ApiKeyInfo), NodeError> {
        self.ledger
            .issue_own_api_key(wallet, now_ms)
            .map_err(|e| self.refused(e))
    }

    /// Revokes `wallet`'s API key `id`.
    pub fn revoke_wallet_api_key(&self, wallet: Address, id: &str) -> Result<(), NodeError> {
        self.ledger
            .revoke_api_key(wallet, id)
            .map_err(|e| self.refused(e))
    }
}
