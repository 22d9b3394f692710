//! The scenarios, in the order they run.

mod network;
mod races;
mod redis_faults;
mod sigterm;
mod users_killed;

use std::time::Duration;

use crate::Scenario;

pub const ALL: &[Scenario] = &[
    ("store_checker", races::checker_finds_damage),
    ("race_one_email", races::one_email),
    ("race_swaps_deletes", races::swaps_and_deletes),
    ("redis_sigkill_aof", redis_faults::sigkill),
    ("redis_sigstop", redis_faults::sigstop),
    ("users_sigkill", users_killed::behind_gateway),
    ("sigterm_users", sigterm::users),
    ("sigterm_gateway", sigterm::gateway),
    ("sigterm_auth", sigterm::auth),
    ("sigterm_all", sigterm::all),
    ("net_slow_gw_users", network::slow_gateway_users),
    ("net_lossy_gw_users", network::lossy_gateway_users),
    ("net_slow_users_redis", network::slow_users_redis),
    ("net_lossy_users_redis", network::lossy_users_redis),
];

/// Two workers per role: the machine has two cores.
pub const ENVS: &[(&str, &str)] = &[("WORKERS", "2")];

/// A client's patience: longer than any timeout the suite configures, so a hang shows as one.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A small deterministic generator (xorshift64*): the load's choices, no crate needed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// `{"name":…,"email":…}`
pub fn user_body(name: &str, email: &str) -> String {
    serde_json::json!({"name": name, "email": email}).to_string()
}

/// Counts of each status (or failure), printed as `201×3 409×61`.
#[derive(Default, Clone)]
pub struct Statuses(std::collections::BTreeMap<String, usize>);

impl Statuses {
    pub fn add(&mut self, what: impl ToString) {
        *self.0.entry(what.to_string()).or_default() += 1;
    }

    pub fn get(&self, what: &str) -> usize {
        self.0.get(what).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &Statuses) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }

    /// How many are none of `allowed`.
    pub fn other_than(&self, allowed: &[&str]) -> usize {
        self.0
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Statuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        write!(f, "[{}]", parts.join(" "))
    }
}
