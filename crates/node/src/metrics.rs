//! Prometheus metrics of the node, rendered in the text exposition format.
//!
//! Counters that other parts keep themselves (the expert cache's, the chain's sizes) are read
//! at scrape time; request and generation metrics are recorded as they happen.

use std::sync::Mutex;

use blyan_model::CacheStats;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{Health, NodeError};

/// Latency buckets in seconds, 1 ms to 60 s.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Billing-step buckets in seconds, 25 µs to 1 s.
const BILLING_BUCKETS_S: &[f64] = &[
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];
/// Decode-rate buckets in tokens per second.
const RATE_BUCKETS: &[f64] = &[
    10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0,
];

/// The node's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_duration: HistogramVec,
    ttft: Histogram,
    decode_rate: Histogram,
    completion_tokens: IntCounter,
    prompt_tokens: IntCounter,
    generations: IntCounterVec,
    active: IntGauge,
    expert_tokens: IntCounterVec,
    expert_remote_rows: IntCounter,
    expert_missing_tokens: IntCounterVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_evictions: IntCounter,
    cache_bytes: IntGauge,
    cache_entries: IntGauge,
    cache_seen: Mutex<CacheStats>,
    chain_blocks: IntGaugeVec,
    chain_bytes: IntGaugeVec,
    readiness: Gauge,
    stage: IntGauge,
    component_readiness: GaugeVec,
    ledger_postings: IntCounterVec,
    ledger_refusals: IntCounterVec,
    logins: IntCounterVec,
    payment_events: IntCounterVec,
    pol_verdicts: IntCounterVec,
    billing_duration: HistogramVec,
    ledger_total_postings: IntGauge,
    ledger_supply: IntGaugeVec,
    ledger_unanchored: IntGauge,
    lane_restarts: IntCounter,
    lanes_alive: IntGauge,
    net_peers: IntGaugeVec,
    net_lag: IntGauge,
    net_bans: IntGauge,
    net_imported: IntGauge,
    /// The served engine (its epoch) and its restart count already added to
    /// `lane_restarts`.
    lane_restarts_seen: Mutex<(u64, u64)>,
}

fn metric_error(e: prometheus::Error) -> NodeError {
    NodeError::Internal(format!("metrics: {e}"))
}

impl Metrics {
    /// A registry with every metric of the node, and the process collector (CPU seconds and
    /// resident memory) where the platform has one.
    pub fn new() -> Result<Metrics, NodeError> {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        };
        let m = Metrics {
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "blyan_http_request_duration_seconds",
                    "Time from request to response headers, by route and status.",
                )
                .buckets(LATENCY_BUCKETS_S.to_vec()),
                &["method", "route", "status"],
            )
            .map_err(metric_error)?,
            ttft: hist(
                "blyan_time_to_first_token_seconds",
                "Time from submission to the first generated token.",
                LATENCY_BUCKETS_S,
            )
            .map_err(metric_error)?,
            decode_rate: hist(
                "blyan_decode_tokens_per_second",
                "Per-request decode speed after the first token.",
                RATE_BUCKETS,
            )
            .map_err(metric_error)?,
            completion_tokens: IntCounter::new(
                "blyan_tokens_generated_total",
                "Tokens generated for requests.",
            )
            .map_err(metric_error)?,
            prompt_tokens: IntCounter::new(
                "blyan_prompt_tokens_total",
                "Prompt tokens processed, BOS included.",
            )
            .map_err(metric_error)?,
            generations: IntCounterVec::new(
                Opts::new(
                    "blyan_generations_total",
                    "Finished generations by outcome.",
                ),
                &["finish_reason"],
            )
            .map_err(metric_error)?,
            active: IntGauge::new(
                "blyan_generations_active",
                "Generations decoding or queued now.",
            )
            .map_err(metric_error)?,
            expert_tokens: IntCounterVec::new(
                Opts::new(
                    "blyan_expert_tokens_total",
                    "Tokens routed to each expert (prompt and generated).",
                ),
                &["expert"],
            )
            .map_err(metric_error)?,
            expert_remote_rows: IntCounter::new(
                "blyan_expert_remote_rows_total",
                "Token-expert computations whose outputs came from other nodes.",
            )
            .map_err(metric_error)?,
            expert_missing_tokens: IntCounterVec::new(
                Opts::new(
                    "blyan_expert_missing_tokens_total",
                    "Tokens that went without an expert no node could compute (router renormalised).",
                ),
                &["expert"],
            )
            .map_err(metric_error)?,
            cache_hits: IntCounter::new("blyan_expert_cache_hits_total", "Expert cache hits.")
                .map_err(metric_error)?,
            cache_misses: IntCounter::new(
                "blyan_expert_cache_misses_total",
                "Expert cache misses (each one a block load).",
            )
            .map_err(metric_error)?,
            cache_evictions: IntCounter::new(
                "blyan_expert_cache_evictions_total",
                "Experts evicted from the cache.",
            )
            .map_err(metric_error)?,
            cache_bytes: IntGauge::new(
                "blyan_expert_cache_bytes",
                "Bytes of decoded experts held.",
            )
            .map_err(metric_error)?,
            cache_entries: IntGauge::new("blyan_expert_cache_entries", "Decoded experts held.")
                .map_err(metric_error)?,
            cache_seen: Mutex::new(CacheStats::default()),
            chain_blocks: IntGaugeVec::new(
                Opts::new("blyan_chain_blocks", "Blocks stored, by chain."),
                &["chain"],
            )
            .map_err(metric_error)?,
            chain_bytes: IntGaugeVec::new(
                Opts::new(
                    "blyan_chain_payload_bytes",
                    "Payload bytes stored, by chain.",
                ),
                &["chain"],
            )
            .map_err(metric_error)?,
            readiness: Gauge::new("blyan_readiness", "Agent Checker readiness in [0, 1].")
                .map_err(metric_error)?,
            stage: IntGauge::new(
                "blyan_stage",
                "Agent Checker stage: 0 unavailable, 1 development, 2 production, 3 release.",
            )
            .map_err(metric_error)?,
            component_readiness: GaugeVec::new(
                Opts::new("blyan_component_readiness", "Readiness of each component."),
                &["component"],
            )
            .map_err(metric_error)?,
            ledger_postings: IntCounterVec::new(
                Opts::new(
                    "blyan_ledger_postings_total",
                    "Ledger postings this node made, by kind.",
                ),
                &["kind"],
            )
            .map_err(metric_error)?,
            ledger_refusals: IntCounterVec::new(
                Opts::new(
                    "blyan_ledger_refusals_total",
                    "Ledger operations refused, by stable code.",
                ),
                &["code"],
            )
            .map_err(metric_error)?,
            logins: IntCounterVec::new(
                Opts::new(
                    "blyan_wallet_logins_total",
                    "Wallet logins, by outcome: `ok` or the refusal's stable code.",
                ),
                &["outcome"],
            )
            .map_err(metric_error)?,
            payment_events: IntCounterVec::new(
                Opts::new(
                    "blyan_payment_events_total",
                    "Payment webhook deliveries, by outcome.",
                ),
                &["outcome"],
            )
            .map_err(metric_error)?,
            pol_verdicts: IntCounterVec::new(
                Opts::new(
                    "blyan_pol_verdicts_total",
                    "Proof-of-Learning verdicts this node made, by reason code.",
                ),
                &["reason"],
            )
            .map_err(metric_error)?,
            billing_duration: HistogramVec::new(
                HistogramOpts::new(
                    "blyan_billing_duration_seconds",
                    "Time spent in the ledger per billed request, by step (hold, capture, void).",
                )
                .buckets(BILLING_BUCKETS_S.to_vec()),
                &["step"],
            )
            .map_err(metric_error)?,
            ledger_total_postings: IntGauge::new(
                "blyan_ledger_postings",
                "Postings in the ledger (all writers).",
            )
            .map_err(metric_error)?,
            ledger_supply: IntGaugeVec::new(
                Opts::new(
                    "blyan_ledger_supply_nano",
                    "BLY supply in nano-BLY: circulating, unminted and burned.",
                ),
                &["part"],
            )
            .map_err(metric_error)?,
            lane_restarts: IntCounter::new(
                "blyan_engine_lane_restarts_total",
                "Engine lanes whose thread died (a panic) and was started again.",
            )
            .map_err(metric_error)?,
            lanes_alive: IntGauge::new(
                "blyan_engine_lanes_alive",
                "Engine lanes whose thread is running.",
            )
            .map_err(metric_error)?,
            lane_restarts_seen: Mutex::new((0, 0)),
            ledger_unanchored: IntGauge::new(
                "blyan_ledger_unanchored_postings",
                "Postings not yet anchored on the ledger chain.",
            )
            .map_err(metric_error)?,
            net_peers: IntGaugeVec::new(
                Opts::new(
                    "blyan_net_peers",
                    "Peers followed: configured (expected) and answering (present).",
                ),
                &["state"],
            )
            .map_err(metric_error)?,
            net_lag: IntGauge::new(
                "blyan_net_sync_lag_blocks",
                "Blocks the present peers hold beyond this node's heads, summed over chains.",
            )
            .map_err(metric_error)?,
            net_bans: IntGauge::new(
                "blyan_net_bans",
                "Peers banned for serving invalid data since start.",
            )
            .map_err(metric_error)?,
            net_imported: IntGauge::new(
                "blyan_net_blocks_imported",
                "Blocks stored from peers since start.",
            )
            .map_err(metric_error)?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.ledger_postings.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.ledger_refusals.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.logins.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.payment_events.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.pol_verdicts.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.billing_duration.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.ledger_total_postings.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.ledger_supply.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.lane_restarts.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.lanes_alive.clone()))
            .map_err(metric_error)?;
        for g in [&m.net_lag, &m.net_bans, &m.net_imported] {
            r.register(Box::new(g.clone())).map_err(metric_error)?;
        }
        r.register(Box::new(m.net_peers.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.ledger_unanchored.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.http_duration.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.ttft.clone())).map_err(metric_error)?;
        r.register(Box::new(m.decode_rate.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.completion_tokens.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.prompt_tokens.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.generations.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.active.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.expert_tokens.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.expert_remote_rows.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.expert_missing_tokens.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.cache_hits.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.cache_misses.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.cache_evictions.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.cache_bytes.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.cache_entries.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.chain_blocks.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.chain_bytes.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.readiness.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.stage.clone()))
            .map_err(metric_error)?;
        r.register(Box::new(m.component_readiness.clone()))
            .map_err(metric_error)?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(metric_error)?;
        Ok(m)
    }

    /// Counts postings of `kind`.
    pub(crate) fn ledger_posted(&self, kind: &str, n: u64) {
        self.ledger_postings.with_label_values(&[kind]).inc_by(n);
    }

    /// Counts a refusal by its stable code.
    pub(crate) fn ledger_refused(&self, code: &str) {
        self.ledger_refusals.with_label_values(&[code]).inc();
    }

    /// Counts a wallet login by its outcome.
    pub(crate) fn login(&self, outcome: &str) {
        self.logins.with_label_values(&[outcome]).inc();
    }

    /// Counts a payment webhook delivery by its outcome.
    pub(crate) fn payment_event(&self, outcome: &str) {
        self.payment_events.with_label_values(&[outcome]).inc();
    }

    /// Counts a Proof-of-Learning verdict by its reason code.
    pub(crate) fn record_pol_verdict(&self, reason: &str) {
        self.pol_verdicts.with_label_values(&[reason]).inc();
    }

    /// Records the time one billing step took.
    pub(crate) fn observe_billing(&self, step: &str, seconds: f64) {
        self.billing_duration
            .with_label_values(&[step])
            .observe(seconds);
    }

    /// Records the ledger's size and supply.
    pub(crate) fn observe_network(&self, v: &crate::NetworkView) {
        self.net_peers
            .with_label_values(&["expected"])
            .set(i64::from(v.expected));
        self.net_peers
            .with_label_values(&["present"])
            .set(i64::from(v.present));
        self.net_lag.set(v.lag_blocks as i64);
        self.net_bans.set(v.bans as i64);
        self.net_imported.set(v.imported as i64);
    }

    pub(crate) fn observe_ledger(&self, supply: &blyan_ledger::Supply, unanchored: u64) {
        self.ledger_total_postings.set(clamp_i64(supply.postings));
        for (part, v) in [
            ("circulating", supply.circulating),
            ("unminted", supply.unminted),
            ("burned", supply.burned),
        ] {
            self.ledger_supply
                .with_label_values(&[part])
                .set(clamp_i64(v.nano()));
        }
        self.ledger_unanchored.set(clamp_i64(unanchored));
    }

    /// Records one HTTP request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_duration
            .with_label_values(&[method, route, &status.to_string()])
            .observe(seconds);
    }

    pub(crate) fn generation_started(&self) {
        self.active.inc();
    }

    pub(crate) fn generation_ended(&self) {
        self.active.dec();
    }

    pub(crate) fn observe_generation(&self, summary: &blyan_model::Summary) {
        let finish = match summary.finish_reason {
            blyan_model::FinishReason::Stop => "stop",
            blyan_model::FinishReason::Length => "length",
            blyan_model::FinishReason::Cancelled => "cancelled",
        };
        self.generations.with_label_values(&[finish]).inc();
        self.prompt_tokens.inc_by(summary.prompt_tokens as u64);
        self.completion_tokens
            .inc_by(summary.completion_tokens as u64);
        if summary.completion_tokens > 0 {
            self.ttft.observe(summary.time_to_first_token.as_secs_f64());
        }
        let rate = summary.decode_tokens_per_s();
        if rate > 0.0 {
            self.decode_rate.observe(rate);
        }
        for (expert, n) in &summary.experts_used {
            self.expert_tokens
                .with_label_values(&[&expert.to_string()])
                .inc_by(*n);
        }
        self.expert_remote_rows.inc_by(summary.remote_rows);
        for (expert, n) in &summary.missing_experts {
            self.expert_missing_tokens
                .with_label_values(&[&expert.to_string()])
                .inc_by(*n);
        }
    }

    pub(crate) fn generation_failed(&self) {
        self.generations.with_label_values(&["error"]).inc();
    }

    /// Adds the cache's counters since the last call. `reset` says the model (and its cache)
    /// was replaced, so the counters start from zero again.
    pub(crate) fn observe_cache(&self, stats: CacheStats, reset: bool) {
        let mut seen = self.cache_seen.lock().unwrap_or_else(|p| p.into_inner());
        if reset {
            *seen = CacheStats::default();
        }
        self.cache_hits.inc_by(stats.hits.saturating_sub(seen.hits));
        self.cache_misses
            .inc_by(stats.misses.saturating_sub(seen.misses));
        self.cache_evictions
            .inc_by(stats.evictions.saturating_sub(seen.evictions));
        self.cache_bytes.set(clamp_i64(stats.bytes));
        self.cache_entries.set(clamp_i64(stats.entries));
        *seen = stats;
    }

    /// Adds the lane restarts of the engine serving epoch `epoch` since the last call (a
    /// new epoch is a new engine, whose count starts from zero) and records the lanes alive.
    pub(crate) fn observe_lanes(&self, epoch: u64, restarts: u64, alive: usize) {
        let mut seen = self
            .lane_restarts_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.0 != epoch {
            *seen = (epoch, 0);
        }
        self.lane_restarts.inc_by(restarts.saturating_sub(seen.1));
        seen.1 = restarts.max(seen.1);
        self.lanes_alive.set(clamp_i64(alive as u64));
    }

    pub(crate) fn observe_chain(&self, chain: &str, blocks: u64, bytes: u64) {
        self.chain_blocks
            .with_label_values(&[chain])
            .set(clamp_i64(blocks));
        self.chain_bytes
            .with_label_values(&[chain])
            .set(clamp_i64(bytes));
    }

    pub(crate) fn observe_health(&self, health: &Health) {
        self.readiness.set(health.readiness);
        self.stage.set(i64::from(health.stage.level()));
        for c in &health.components {
            self.component_readiness
                .with_label_values(&[&c.name])
                .set(c.readiness);
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> Result<String, NodeError> {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(metric_error)
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
