//! One run, and a batch of seeds.

use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use crate::clock::EPOCH_MS;
use crate::cluster::{follower_host, leader_host, Shared, CLIENT, LEADER};
use crate::coordinator::EtcdState;
use crate::etcd::{etcd_host, ETCD};
use crate::faults::Driver;
use crate::node::node_host;
use crate::{check, report, workload, SimConfig, SimError};

/// Simulated time after which a run is abandoned (a hang is a failure).
const MAX_SIM_TIME: Duration = Duration::from_secs(3600);

/// The result of one run.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Everything the run prints: story, summary, invariants.
    pub output: String,
    /// Failed invariants (empty when the run passed).
    pub failures: Vec<String>,
}

impl SimReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Run the simulation described by `cfg`.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimError> {
    cfg.validate()?;
    let dir = tempfile::Builder::new()
        .prefix("replidb-sim-")
        .tempdir()
        .map_err(SimError::TempDir)?;
    let shared = Shared::new(cfg);
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(MAX_SIM_TIME)
        .build();

    if cfg.faults.elected() {
        elected_hosts(&mut sim, &shared, cfg, dir.path());
    } else {
        fixed_hosts(&mut sim, &shared, cfg, dir.path());
    }
    sim.client(CLIENT, workload::client(shared.clone(), cfg.clone()));

    let mut driver = Driver::new(cfg);
    driver.apply_due(&mut sim, &shared, 0);
    loop {
        match sim.step() {
            Ok(done) => {
                let now = sim.elapsed().as_millis() as u64;
                driver.apply_due(&mut sim, &shared, now);
                if done {
                    break;
                }
            }
            Err(e) => {
                shared.violation(format!("the simulation stopped: {e}"));
                break;
            }
        }
    }
    let runtime = shared.violations();
    let checks = check::run(&shared, cfg, &runtime);
    let output = report::render(cfg, &shared, &checks);
    let failures = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    // Stop every host before the directory goes.
    drop(sim);
    drop(shared);
    drop(dir);
    Ok(SimReport {
        seed: cfg.seed,
        output,
        failures,
    })
}

/// A fixed `leader` and followers `f1`...
fn fixed_hosts(sim: &mut turmoil::Sim<'_>, shared: &Arc<Shared>, cfg: &SimConfig, dir: &Path) {
    let voters = cfg.followers + 1;
    {
        let (shared, dir) = (shared.clone(), dir.join(LEADER));
        let codec = crate::node::codec_of(cfg.seed, 0);
        sim.host(LEADER, move || {
            leader_host(shared.clone(), dir.clone(), voters, codec)
        });
    }
    for (i, name) in cfg.follower_names().into_iter().enumerate() {
        let (shared, dir, cfg) = (shared.clone(), dir.join(&name), cfg.clone());
        sim.host(name.clone().as_str(), move || {
            follower_host(
                shared.clone(),
                dir.clone(),
                name.clone(),
                cfg.clone(),
                i as u64 + 1,
            )
        });
    }
}

/// The `etcd` host and nodes `n1`.. that elect their leader through it.
fn elected_hosts(sim: &mut turmoil::Sim<'_>, shared: &Arc<Shared>, cfg: &SimConfig, dir: &Path) {
    let state = Arc::new(Mutex::new(EtcdState::new()));
    {
        let shared = shared.clone();
        sim.host(ETCD, move || etcd_host(shared.clone(), state.clone()));
    }
    for (i, name) in cfg.node_names().into_iter().enumerate() {
        let (shared, dir, cfg) = (shared.clone(), dir.join(&name), cfg.clone());
        sim.host(name.clone().as_str(), move || {
            node_host(
                shared.clone(),
                dir.clone(),
                name.clone(),
                cfg.clone(),
                i as u64 + 1,
            )
        });
    }
}

/// The outcome of a batch of seeds.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// Seeds run.
    pub runs: u64,
    /// `(seed, failures, command line)` of every failing seed.
    pub failed: Vec<(u64, Vec<String>, String)>,
}

/// Run `base` once per seed in `seeds`, calling `progress` after each run.
pub fn run_seeds(
    base: &SimConfig,
    seeds: RangeInclusive<u64>,
    progress: impl FnMut(&SimReport),
) -> Result<SoakReport, SimError> {
    soak(
        seeds,
        |seed| SimConfig {
            seed,
            ..base.clone()
        },
        run,
        SimConfig::command_line,
        progress,
    )
}

/// The soak loop every mode shares: for each seed, build its
/// configuration with `config_for`, run it, report it to `progress`, and
/// keep each failing seed with the command line (`command_line`) that
/// replays it.
pub fn soak<C>(
    seeds: RangeInclusive<u64>,
    config_for: impl Fn(u64) -> C,
    run: impl Fn(&C) -> Result<SimReport, SimError>,
    command_line: impl Fn(&C) -> String,
    mut progress: impl FnMut(&SimReport),
) -> Result<SoakReport, SimError> {
    let mut soak = SoakReport::default();
    for seed in seeds {
        let cfg = config_for(seed);
        let r = run(&cfg)?;
        soak.runs += 1;
        progress(&r);
        if !r.passed() {
            soak.failed
                .push((seed, r.failures.clone(), command_line(&cfg)));
        }
    }
    Ok(soak)
}
