//! The Agent Checker: every component reports a readiness in [0, 1] from real probes, and the
//! checker turns them into one readiness and a stage.
//!
//! The total is the weighted mean of the components' readiness, capped by the lowest
//! readiness of any critical component (a node whose block store is broken is not 90% ready
//! however well the rest does). Stages: Release ≥ 99%, Production ≥ 90%, Development ≥ 60%,
//! else Unavailable. The state is saved every [`SAVE_EVERY`]th update and restored at start,
//! so a restarted node remembers its stage history.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::NodeError;

/// The state is written to disk after every this-many updates.
pub const SAVE_EVERY: u64 = 20;
/// Stage changes remembered.
const HISTORY_LEN_MAX: usize = 32;
/// Largest state file read back.
const STATE_FILE_LEN_MAX: u64 = 1 << 20;

/// How ready the node is, coarsely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Below 60%: do not rely on this node.
    Unavailable,
    /// At least 60%.
    Development,
    /// At least 90%.
    Production,
    /// At least 99%.
    Release,
}

impl Stage {
    /// The stage of a total readiness.
    pub fn of(readiness: f64) -> Stage {
        if readiness >= 0.99 {
            Stage::Release
        } else if readiness >= 0.90 {
            Stage::Production
        } else if readiness >= 0.60 {
            Stage::Development
        } else {
            Stage::Unavailable
        }
    }

    /// The stage's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Unavailable => "unavailable",
            Stage::Development => "development",
            Stage::Production => "production",
            Stage::Release => "release",
        }
    }

    /// The stage as a number for metrics: 0 unavailable … 3 release.
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// What one probe of one component found.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentReport {
    /// Component name, e.g. `block_store`.
    pub name: &'static str,
    /// Readiness in [0, 1]; values outside (or NaN) are clamped to the range (NaN to 0).
    pub readiness: f64,
    /// What the probe saw, for people.
    pub detail: String,
    /// Weight in the mean.
    pub weight: f64,
    /// Whether this component caps the total.
    pub critical: bool,
}

/// One component in the node's health.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentHealth {
    /// Component name.
    pub name: String,
    /// Readiness in [0, 1].
    pub readiness: f64,
    /// What the probe saw.
    pub detail: String,
    /// Weight in the mean.
    pub weight: f64,
    /// Whether it caps the total.
    pub critical: bool,
}

/// A change of stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageChange {
    /// Update number at which it happened.
    pub update: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub at_ms: u64,
    /// The new stage.
    pub stage: Stage,
    /// The total readiness then.
    pub readiness: f64,
}

/// The node's health as `GET /health` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The stage.
    pub stage: Stage,
    /// Total readiness in [0, 1].
    pub readiness: f64,
    /// Each component.
    pub components: Vec<ComponentHealth>,
    /// Why the node is at this stage.
    pub reason: String,
    /// Updates so far, over the node's whole life (restored across restarts).
    pub updates: u64,
    /// When the components were last probed, ms since the Unix epoch.
    pub checked_at_ms: u64,
    /// Recent stage changes, oldest first.
    pub history: Vec<StageChange>,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    health: Health,
}

/// Computes and remembers the node's health.
#[derive(Debug)]
pub struct AgentChecker {
    path: Option<PathBuf>,
    state: Mutex<Health>,
}

impl AgentChecker {
    /// A checker that saves to `path` (and restores from it if it holds a saved state), or
    /// keeps everything in memory when `path` is `None`.
    ///
    /// A damaged state file is set aside (renamed with `.bad`) rather than trusted or lost.
    pub fn open(path: Option<PathBuf>) -> AgentChecker {
        let restored = path.as_deref().and_then(restore);
        AgentChecker {
            path,
            state: Mutex::new(restored.unwrap_or_else(|| Health {
                stage: Stage::Unavailable,
                readiness: 0.0,
                components: Vec::new(),
                reason: "not probed yet".into(),
                updates: 0,
                checked_at_ms: 0,
                history: Vec::new(),
            })),
        }
    }

    /// The latest health.
    pub fn health(&self) -> Health {
        self.lock().clone()
    }

    /// Folds a round of probe reports into the health and returns it; saves the state every
    /// [`SAVE_EVERY`]th update.
    pub fn update(&self, reports: &[ComponentReport], now_ms: u64) -> Result<Health, NodeError> {
        let mut health = self.lock();
        let components: Vec<ComponentHealth> = reports
            .iter()
            .map(|r| ComponentHealth {
                name: r.name.to_owned(),
                readiness: clamp01(r.readiness),
                detail: r.detail.clone(),
                weight: if r.weight.is_finite() && r.weight > 0.0 {
                    r.weight
                } else {
                    0.0
                },
                critical: r.critical,
            })
            .collect();
        let (readiness, reason) = total(&components);
        let stage = Stage::of(readiness);
        health.updates += 1;
        let update = health.updates;
        if stage != health.stage || health.history.is_empty() {
            health.history.push(StageChange {
                update,
                at_ms: now_ms,
                stage,
                readiness,
            });
            if health.history.len() > HISTORY_LEN_MAX {
                health.history.remove(0);
            }
        }
        health.stage = stage;
        health.readiness = readiness;
        health.components = components;
        health.reason = format!("{}: {reason}", stage.as_str());
        health.checked_at_ms = now_ms;
        let out = health.clone();
        if out.updates.is_multiple_of(SAVE_EVERY) {
            drop(health);
            self.save_state(&out)?;
        }
        Ok(out)
    }

    /// Writes the state now (e.g. at shutdown).
    pub fn save(&self) -> Result<(), NodeError> {
        let health = self.health();
        self.save_state(&health)
    }

    fn save_state(&self, health: &Health) -> Result<(), NodeError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&State {
            health: health.clone(),
        })
        .map_err(|e| NodeError::Internal(format!("encoding checker state: {e}")))?;
        write_atomic(path, &bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        // The state is plain data, whole after every statement: a panic elsewhere while
        // holding the lock cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn clamp01(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// The weighted mean capped by critical components, and a sentence saying why.
fn total(components: &[ComponentHealth]) -> (f64, String) {
    let weight: f64 = components.iter().map(|c| c.weight).sum();
    if components.is_empty() || weight <= 0.0 {
        return (0.0, "no component reported".into());
    }
    let mean = components
        .iter()
        .map(|c| c.weight * c.readiness)
        .sum::<f64>()
        / weight;
    let cap = components
        .iter()
        .filter(|c| c.critical)
        .min_by(|a, b| a.readiness.total_cmp(&b.readiness));
    let mut below: Vec<&ComponentHealth> =
        components.iter().filter(|c| c.readiness < 1.0).collect();
    below.sort_by(|a, b| a.readiness.total_cmp(&b.readiness));
    match cap {
        Some(c) if c.readiness < mean => (
            c.readiness,
            format!(
                "capped at {:.1}% by critical component {} ({})",
                100.0 * c.readiness,
                c.name,
                c.detail
            ),
        ),
        _ if below.is_empty() => (
            mean,
            format!("all {} components fully ready", components.len()),
        ),
        _ => {
            let parts: Vec<String> = below
                .iter()
                .map(|c| format!("{} at {:.1}% ({})", c.name, 100.0 * c.readiness, c.detail))
                .collect();
            (
                mean,
                format!(
                    "weighted readiness {:.1}%; {}",
                    100.0 * mean,
                    parts.join("; ")
                ),
            )
        }
    }
}

fn restore(path: &Path) -> Option<Health> {
    let len = fs::metadata(path).ok()?.len();
    let parsed = if len <= STATE_FILE_LEN_MAX {
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<State>(&b).ok())
    } else {
        None
    };
    match parsed {
        Some(state) => Some(state.health),
        None => {
            // Keep the damaged file for inspection; start from a clean state.
            let _ = fs::rename(path, path.with_extension("json.bad"));
            None
        }
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(NodeError::io(format!("creating {}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    let mut file =
        fs::File::create(&tmp).map_err(NodeError::io(format!("creating {}", tmp.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(NodeError::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(NodeError::io(format!("renaming to {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &'static str, readiness: f64, weight: f64, critical: bool) -> ComponentReport {
        ComponentReport {
            name,
            readiness,
            detail: format!("{name} probe"),
            weight,
            critical,
        }
    }

    #[test]
    fn stages_follow_thresholds() {
        assert_eq!(Stage::of(1.0), Stage::Release);
        assert_eq!(Stage::of(0.99), Stage::Release);
        assert_eq!(Stage::of(0.989), Stage::Production);
        assert_eq!(Stage::of(0.90), Stage::Production);
        assert_eq!(Stage::of(0.6), Stage::Development);
        assert_eq!(Stage::of(0.59), Stage::Unavailable);
        assert_eq!(Stage::of(f64::NAN), Stage::Unavailable);
    }

    #[test]
    fn weighted_mean_and_critical_cap() {
        let checker = AgentChecker::open(None);
        let h = checker
            .update(
                &[report("a", 1.0, 3.0, true), report("b", 0.6, 1.0, false)],
                1,
            )
            .expect("update");
        assert!((h.readiness - 0.9).abs() < 1e-12, "{}", h.readiness);
        assert_eq!(h.stage, Stage::Production);
        assert!(h.reason.contains("b at 60.0%"), "{}", h.reason);

        // A broken critical component caps everything else.
        let h = checker
            .update(
                &[report("a", 0.0, 3.0, true), report("b", 1.0, 100.0, false)],
                2,
            )
            .expect("update");
        assert_eq!(h.readiness, 0.0);
        assert_eq!(h.stage, Stage::Unavailable);
        assert!(h.reason.contains("critical component a"), "{}", h.reason);

        // NaN and out-of-range readings are clamped, not propagated.
        let h = checker
            .update(
                &[
                    report("a", f64::NAN, 1.0, false),
                    report("b", 7.0, 1.0, false),
                ],
                3,
            )
            .expect("update");
        assert_eq!(h.readiness, 0.5);
        // Still unavailable: no new stage change is recorded.
        assert_eq!(h.history.len(), 2, "{:?}", h.history);
    }

    #[test]
    fn state_is_saved_every_twentieth_update_and_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("checker.json");
        let checker = AgentChecker::open(Some(path.clone()));
        let ok = [report("store", 1.0, 1.0, true)];
        for i in 1..SAVE_EVERY {
            checker.update(&ok, i).expect("update");
        }
        assert!(!path.exists(), "saved before the 20th update");
        checker.update(&ok, SAVE_EVERY).expect("update");
        assert!(path.exists(), "not saved at the 20th update");

        let restored = AgentChecker::open(Some(path.clone())).health();
        assert_eq!(restored.updates, SAVE_EVERY);
        assert_eq!(restored.stage, Stage::Release);
        assert_eq!(restored.components[0].name, "store");

        // A damaged file is set aside and the checker starts clean.
        fs::write(&path, b"{not json").expect("write");
        let fresh = AgentChecker::open(Some(path.clone())).health();
        assert_eq!(fresh.updates, 0);
        assert!(path.with_extension("json.bad").exists());
    }
}
