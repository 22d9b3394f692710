//! `make chaos` (issue 17): each fault against real processes — the `platform` binary, a real
//! `redis-server`, links shaped in network namespaces — under a bounded load. One line of
//! figures per scenario; a broken promise fails the run (exit 1).
//!
//! `cargo test --test chaos [-- NAME…]` runs every scenario (or those whose name contains a
//! NAME), one after the other: the machine is small and timings must not disturb each other.
//! Not part of `cargo test` (`test = false` in Cargo.toml): it takes minutes and needs root for
//! the network namespaces.

mod harness;
mod http;
mod load;
mod netns;
mod resp;
mod scenarios;
mod store;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

/// What a scenario measured and which of its promises broke.
#[derive(Default)]
pub struct Report {
    figures: Vec<String>,
    broken: Vec<String>,
}

impl Report {
    pub fn figure(&mut self, name: &str, value: impl std::fmt::Display) {
        self.figures.push(format!("{name} {value}"));
    }

    /// Records `what` as broken unless `kept`.
    pub fn promise(&mut self, kept: bool, what: impl Into<String>) {
        if !kept {
            self.broken.push(what.into());
        }
    }
}

pub type Scenario = (&'static str, fn(&mut Report));

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    netns::remove_stale();
    // A panic's message goes in the scenario's line; the default hook would print it mid-table.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut rows = Vec::new();
    for (name, run) in scenarios::ALL {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        let mut report = Report::default();
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut report))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".to_owned());
            report.broken.push(format!("aborted: {msg}"));
        }
        let ok = report.broken.is_empty();
        let line = format!(
            "{name:<24} {:<4} {:>5.1}s  {}",
            if ok { "ok" } else { "FAIL" },
            start.elapsed().as_secs_f64(),
            report.figures.join(", ")
        );
        println!("{line}");
        for b in &report.broken {
            println!("    broken: {b}");
        }
        rows.push((line, report.broken));
    }
    let failed = rows.iter().filter(|(_, b)| !b.is_empty()).count();
    println!(
        "\nchaos: {} scenarios, {failed} failed, {:.0} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    for (line, _) in &rows {
        println!("{line}");
    }
    if rows.is_empty() {
        println!("no scenario matches {filters:?}");
        std::process::exit(2);
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
