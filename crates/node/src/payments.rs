//! Card top-ups through Stripe: a Checkout Session for one of the configured price tiers,
//! and the webhook that credits the tier's BLY once the session is paid (and takes it back,
//! as far as it is unspent, when the charge is refunded).
//!
//! The webhook trusts nothing it has not verified: `Stripe-Signature` must carry a `v1`
//! HMAC-SHA256 (with the endpoint's secret) of `t.body` for a timestamp `t` within the
//! tolerance, compared in constant time. Each event changes the ledger at most once: the
//! ledger records the event id in the transaction that posts, so Stripe's retries, or a
//! replay of a captured delivery, post nothing more. Secrets never reach a log or an error.

use std::time::Duration;

use blyan_ledger::{Credited, LedgerError, Refusal, TopUp};
use blyan_primitives::{Address, Amount};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

use crate::{Node, NodeError, PriceTier};

/// Longest `Stripe-Signature` header read.
const SIGNATURE_HEADER_LEN_MAX: usize = 4096;
/// Most `v1` signatures looked at in one header (Stripe sends one per active secret).
const SIGNATURES_MAX: usize = 8;
/// How long a call to Stripe's API may take.
const STRIPE_TIMEOUT: Duration = Duration::from_secs(15);

fn payment_error(code: &'static str, status: u16, message: impl Into<String>) -> NodeError {
    NodeError::Payment {
        code,
        status,
        message: message.into(),
    }
}

/// Checks a `Stripe-Signature` header over `body` with the endpoint's `secret` at `now_s`
/// (Unix seconds): a `t=` timestamp within `tolerance_s`, and one of its `v1=` signatures
/// equal, in constant time, to HMAC-SHA256(secret, `t` + "." + body).
pub fn verify_stripe_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: u64,
) -> Result<(), NodeError> {
    let bad = |m: &str| payment_error("bad_webhook_signature", 400, m);
    if header.len() > SIGNATURE_HEADER_LEN_MAX {
        return Err(bad("the Stripe-Signature header is too long"));
    }
    let mut timestamp: Option<i64> = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((k, v)) = item.trim().split_once('=') else {
            return Err(bad("the Stripe-Signature header is not `t=…,v1=…`"));
        };
        match k {
            "t" if timestamp.is_none() => {
                timestamp = Some(
                    v.parse()
                        .map_err(|_| bad("its timestamp is not a number"))?,
                );
            }
            "t" => return Err(bad("the Stripe-Signature header has two timestamps")),
            "v1" if signatures.len() < SIGNATURES_MAX => {
                // A v1 that is not 32 bytes of hex can match nothing: skip it.
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(v, &mut sig).is_ok() {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or_else(|| bad("the Stripe-Signature header has no timestamp"))?;
    if signatures.is_empty() {
        return Err(bad("the Stripe-Signature header has no v1 signature"));
    }
    if now_s.abs_diff(t) > tolerance_s {
        return Err(payment_error(
            "stale_webhook",
            400,
            format!(
                "the webhook was signed {} s from this node's clock; at most {tolerance_s} s are accepted",
                now_s.abs_diff(t)
            ),
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| payment_error("payments_disabled", 503, "the webhook secret is unusable"))?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // Every candidate is compared, in constant time, whichever matches.
    let mut matched = false;
    for sig in &signatures {
        matched |= mac.clone().verify_slice(sig).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(bad("no v1 signature matches the body"))
    }
}

/// A Checkout Session made for a wallet.
#[derive(Clone, Debug, Serialize)]
pub struct Checkout {
    /// Stripe's session id.
    pub id: String,
    /// Where to send the buyer.
    pub url: String,
    /// The tier bought.
    pub tier: String,
    /// BLY it credits once paid.
    pub bly: Amount,
    /// Its price, minor unit.
    pub amount_minor: u64,
    /// Its currency.
    pub currency: String,
}

/// What a webhook delivery did.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookReply {
    /// Always true: the event was received and verified.
    pub received: bool,
    /// The event.
    pub event: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `credited`, `already_credited`, `reversed`, `flagged`, `replayed`, `unpaid` or
    /// `ignored`.
    pub outcome: &'static str,
    /// The wallet concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// BLY credited or taken back by this delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// BLY owed back but already spent (flagged), by this delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flagged: Option<Amount>,
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Node {
    fn tier_named(&self, name: &str) -> Result<&PriceTier, NodeError> {
        self.config.wallet.tier(name).ok_or_else(|| {
            let known: Vec<&str> = self
                .config
                .wallet
                .price_tiers
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            payment_error(
                "unknown_tier",
                400,
                format!("no price tier {name:?}; this node sells {known:?}"),
            )
        })
    }

    /// The configured price tiers.
    pub fn price_tiers(&self) -> &[PriceTier] {
        &self.config.wallet.price_tiers
    }

    /// Creates a Stripe Checkout Session in which `wallet` buys `tier` (the first tier when
    /// none is named). Blocks on Stripe's API for up to 15 s.
    pub fn checkout(&self, wallet: Address, tier: Option<&str>) -> Result<Checkout, NodeError> {
        let w = &self.config.wallet;
        if w.stripe_api_key.is_empty() {
            return Err(payment_error(
                "payments_disabled",
                503,
                "this node sells no BLY by card: stripe_api_key is not set",
            ));
        }
        let tier = match tier {
            Some(name) => self.tier_named(name)?,
            None => w
                .price_tiers
                .first()
                .ok_or_else(|| payment_error("unknown_tier", 400, "no price tiers are set"))?,
        };
        let bly = tier.amount()?;
        let origin = self.login_policy().uri;
        let address = wallet.to_string();
        let amount = tier.amount_minor.to_string();
        let product = format!("{} BLY", tier.bly);
        let success = format!("{origin}/?topup=done");
        let cancel = format!("{origin}/?topup=cancelled");
        let form = [
            ("mode", "payment"),
            ("success_url", success.as_str()),
            ("cancel_url", cancel.as_str()),
            ("client_reference_id", address.as_str()),
            ("line_items[0][quantity]", "1"),
            (
                "line_items[0][price_data][currency]",
                tier.currency.as_str(),
            ),
            ("line_items[0][price_data][unit_amount]", amount.as_str()),
            (
                "line_items[0][price_data][product_data][name]",
                product.as_str(),
            ),
            ("metadata[address]", address.as_str()),
            ("metadata[tier]", tier.name.as_str()),
            ("payment_intent_data[metadata][address]", address.as_str()),
            ("payment_intent_data[metadata][tier]", tier.name.as_str()),
        ];
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let url = format!("{}/v1/checkout/sessions", w.stripe_api_base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(STRIPE_TIMEOUT))
            .build()
            .into();
        let unreachable = |e: ureq::Error| {
            // The error names the host at most; the key is only ever in a header.
            payment_error(
                "stripe_unavailable",
                502,
                format!("Stripe did not answer: {e}"),
            )
        };
        let mut response = agent
            .post(&url)
            .header(
                "Authorization",
                &format!("Bearer {}", w.stripe_api_key.expose()),
            )
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let reply: Value = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_json()
            .map_err(|e| {
                payment_error(
                    "stripe_unavailable",
                    502,
                    format!("Stripe's answer is not JSON: {e}"),
                )
            })?;
        if !(200..300).contains(&status) {
            let message = reply
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(payment_error(
                "stripe_refused",
                502,
                format!("Stripe refused the checkout ({status}): {message}"),
            ));
        }
        let (Some(id), Some(url)) = (text(&reply, "id"), text(&reply, "url")) else {
            return Err(payment_error(
                "stripe_unavailable",
                502,
                "Stripe's answer has no session id or URL",
            ));
        };
        Ok(Checkout {
            id: id.to_owned(),
            url: url.to_owned(),
            tier: tier.name.clone(),
            bly,
            amount_minor: tier.amount_minor,
            currency: tier.currency.clone(),
        })
    }

    /// Handles a webhook delivery: verifies `signature` over `body`, then applies the event
    /// once. Unknown event types are acknowledged and change nothing.
    pub fn stripe_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<WebhookReply, NodeError> {
        let outcome = self.stripe_webhook_inner(signature, body, now_ms);
        match &outcome {
            Ok(r) => self.metrics.payment_event(r.outcome),
            Err(e) => self.metrics.payment_event(e.code()),
        }
        outcome
    }

    fn stripe_webhook_inner(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<WebhookReply, NodeError> {
        let w = &self.config.wallet;
        if w.stripe_webhook_secret.is_empty() {
            return Err(payment_error(
                "payments_disabled",
                503,
                "this node takes no Stripe webhooks: stripe_webhook_secret is not set",
            ));
        }
        let signature = signature.ok_or_else(|| {
            payment_error(
                "bad_webhook_signature",
                400,
                "the delivery has no Stripe-Signature header",
            )
        })?;
        verify_stripe_signature(
            w.stripe_webhook_secret.expose().as_bytes(),
            signature,
            body,
            i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
            w.stripe_tolerance_s,
        )?;
        let invalid = |m: String| payment_error("invalid_event", 400, m);
        let event: Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the event is not JSON: {e}")))?;
        let id = text(&event, "id")
            .ok_or_else(|| invalid("the event has no id".into()))?
            .to_owned();
        let kind = text(&event, "type")
            .ok_or_else(|| invalid("the event has no type".into()))?
            .to_owned();
        let object = event
            .pointer("/data/object")
            .ok_or_else(|| invalid("the event has no data.object".into()))?;
        let mut reply = WebhookReply {
            received: true,
            event: id.clone(),
            kind: kind.clone(),
            outcome: "ignored",
            address: None,
            amount: None,
            flagged: None,
        };
        let refused = |e: LedgerError| match e.refusal() {
            Some(Refusal::InvalidReference) => invalid(format!("{e}")),
            _ => self.refused(e),
        };
        match kind.as_str() {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                if text(object, "payment_status") != Some("paid") {
                    // Paid later (a bank debit): `async_payment_succeeded` follows.
                    reply.outcome = "unpaid";
                    return Ok(reply);
                }
                let (topup, tier) = self.topup_of(&id, object)?;
                reply.address = Some(topup.address);
                match self.ledger.credit_topup(&topup, now_ms).map_err(refused)? {
                    Credited::Credited { .. } => {
                        tracing::info!(event = %id, tier = %tier, address = %topup.address, "card top-up credited");
                        reply.outcome = "credited";
                        reply.amount = Some(topup.amount);
                    }
                    Credited::AlreadyCredited => reply.outcome = "already_credited",
                }
            }
            "charge.refunded" => {
                let payment = text(object, "payment_intent")
                    .ok_or_else(|| invalid("the charge names no payment_intent".into()))?;
                let refunded = object
                    .get("amount_refunded")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| invalid("the charge has no amount_refunded".into()))?;
                match self.ledger.reverse_topup(&id, payment, refunded, now_ms) {
                    Ok(r) => {
                        reply.address = Some(r.address);
                        reply.outcome = if r.replayed {
                            "replayed"
                        } else if r.flagged.is_zero() {
                            "reversed"
                        } else {
                            tracing::warn!(event = %id, address = %r.address, flagged_nano = r.flagged.nano(), "a refunded top-up was partly spent: flagged");
                            "flagged"
                        };
                        reply.amount = Some(r.reversed);
                        reply.flagged = Some(r.flagged);
                    }
                    Err(e) if e.refusal() == Some(Refusal::UnknownPayment) => {
                        self.ledger
                            .note_payment_event(&id, &kind, now_ms)
                            .map_err(refused)?;
                    }
                    Err(e) => return Err(refused(e)),
                }
            }
            _ => {
                if !self
                    .ledger
                    .note_payment_event(&id, &kind, now_ms)
                    .map_err(refused)?
                {
                    reply.outcome = "replayed";
                }
            }
        }
        Ok(reply)
    }

    /// The top-up a paid Checkout Session stands for: the wallet from `metadata.address`,
    /// the tier from `metadata.tier` (whose price must be what was paid) or else from the
    /// amount and currency paid.
    fn topup_of(&self, event: &str, session: &Value) -> Result<(TopUp, String), NodeError> {
        let invalid = |m: String| payment_error("invalid_event", 400, m);
        let address: Address = session
            .pointer("/metadata/address")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the session has no metadata.address".into()))?
            .parse()
            .map_err(|e| invalid(format!("metadata.address: {e}")))?;
        let paid = session
            .get("amount_total")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("the session has no amount_total".into()))?;
        let currency = text(session, "currency")
            .ok_or_else(|| invalid("the session has no currency".into()))?
            .to_ascii_lowercase();
        let tier = match session.pointer("/metadata/tier").and_then(Value::as_str) {
            Some(name) => {
                let tier = self.tier_named(name)?;
                if tier.amount_minor != paid || tier.currency != currency {
                    return Err(payment_error(
                        "amount_mismatch",
                        400,
                        format!(
                            "tier {name:?} costs {} {}, the session paid {paid} {currency}",
                            tier.amount_minor, tier.currency
                        ),
                    ));
                }
                tier
            }
            None => self
                .config
                .wallet
                .price_tiers
                .iter()
                .find(|t| t.amount_minor == paid && t.currency == currency)
                .ok_or_else(|| {
                    payment_error(
                        "unknown_tier",
                        400,
                        format!("no price tier costs {paid} {currency}"),
                    )
                })?,
        };
        let session_id =
            text(session, "id").ok_or_else(|| invalid("the session has no id".into()))?;
        let payment = text(session, "payment_intent").unwrap_or(session_id);
        Ok((
            TopUp {
                event: event.to_owned(),
                payment: payment.to_owned(),
                address,
                amount: tier.amount()?,
                paid_minor: paid,
                currency,
            },
            tier.name.clone(),
        ))
    }
}
