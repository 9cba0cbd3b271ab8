//! meshsim: runs simulation scenarios over many seeds and replays one seed with its trace.

use clap::{Parser, Subcommand};
use mesh_engine::PlantedBug;
use mesh_sim::{run_seed, RunOptions, Scenario, Summary};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "meshsim", about = "Deterministic partition simulator for mesh", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs scenarios over a range of seeds; prints failures with their replay command and a
    /// summary per scenario. Exits 1 if any seed fails.
    Run {
        /// Scenario files (simulations/*.toml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Seeds: `N` or `A..B` (inclusive).
        #[arg(long, default_value = "1..100", value_parser = parse_seeds)]
        seeds: (u64, u64),
        /// Plants a known bug in every DC (test only), to show the checkers catch it.
        #[arg(long, value_parser = parse_bug)]
        bug: Option<PlantedBug>,
        /// Stop a scenario at its first failing seed.
        #[arg(long)]
        fail_fast: bool,
    },
    /// Replays one seed and prints its event trace, its violations and its trace hash.
    Replay {
        /// The scenario file.
        file: PathBuf,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// The planted bug the failing run had, if any.
        #[arg(long, value_parser = parse_bug)]
        bug: Option<PlantedBug>,
    },
}

fn parse_seeds(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: u64 = a.trim().parse().map_err(|_| format!("{s:?}: expected N or A..B"))?;
    let b: u64 =
        b.trim().trim_start_matches('=').parse().map_err(|_| format!("{s:?}: expected N or A..B"))?;
    if a > b {
        return Err(format!("{s:?}: the range is empty"));
    }
    Ok((a, b))
}

fn parse_bug(s: &str) -> Result<PlantedBug, String> {
    PlantedBug::parse(s).ok_or_else(|| {
        let names: Vec<&str> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown bug {s:?}; one of: {}", names.join(", "))
    })
}

fn replay_command(file: &std::path::Path, seed: u64, bug: Option<PlantedBug>) -> String {
    let bug = bug.map(|b| format!(" --bug {}", b.name())).unwrap_or_default();
    format!("meshsim replay {} --seed {seed}{bug}", file.display())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { files, seeds, bug, fail_fast } => {
            let mut failed = false;
            for file in files {
                let scenario = match Scenario::load(&file) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                println!(
                    "scenario {} ({}): seeds {}..{}",
                    scenario.file.name,
                    file.display(),
                    seeds.0,
                    seeds.1
                );
                let started = Instant::now();
                let mut summary = Summary::default();
                let total = seeds.1 - seeds.0 + 1;
                let mut last_progress = Instant::now();
                for seed in seeds.0..=seeds.1 {
                    let result = run_seed(&scenario, RunOptions { seed, planted: bug, trace: false });
                    summary.add(&result);
                    if !result.passed() {
                        failed = true;
                        println!("  FAIL seed {seed}:");
                        for v in result.violations.iter().take(5) {
                            println!("    [{}] at {} ms: {}", v.checker, v.at_ms, v.detail);
                        }
                        println!("    replay: {}", replay_command(&file, seed, bug));
                        if fail_fast {
                            break;
                        }
                    }
                    if last_progress.elapsed().as_secs() >= 5 {
                        last_progress = Instant::now();
                        eprintln!("  … {} of {total} seeds, {} failed", summary.seeds, summary.failed.len());
                    }
                }
                summary.elapsed_s = started.elapsed().as_secs_f64();
                let verdict = if summary.failed.is_empty() { "PASS" } else { "FAIL" };
                println!("{verdict} {}", scenario.file.name);
                println!("{summary}");
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Replay { file, seed, bug } => {
            let scenario = match Scenario::load(&file) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = run_seed(&scenario, RunOptions { seed, planted: bug, trace: true });
            for line in &result.trace {
                println!("{line}");
            }
            for v in &result.violations {
                println!("VIOLATION [{}] at {} ms: {}", v.checker, v.at_ms, v.detail);
            }
            println!(
                "{} seed {seed}: trace hash {:016x}, {} events, {} writes",
                if result.passed() { "PASS" } else { "FAIL" },
                result.trace_hash,
                result.stats.events,
                result.stats.writes
            );
            if result.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
