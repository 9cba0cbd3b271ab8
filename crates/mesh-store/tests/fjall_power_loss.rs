//! Measure first, prove it the same way (issue 12): is fjall's sorted ingestion, the way a
//! checkpoint would write key states into it (docs/performance.md, "What changed on 2026-12-02
//! (fourth session)"), durable once `Ingestion::finish` returns? Each round ingests sorted runs
//! of keys into a fjall database on the power-loss filesystem (`mesh_powerloss_fs`), a second
//! thread cuts the power at a random moment, and the database reopened on what survived must
//! hold every run whose `finish` returned, each key with its own value.
//!
//! This tests fjall as mesh would use it, before mesh uses it; the store itself does not use
//! fjall yet. Seeds: `MESH_TEST_SEED` replays a run.

mod common;

use mesh_powerloss_fs::{Image, Mount};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

const ROUNDS: u64 = 12;
/// Keys per ingested run: a checkpoint's worth at the crash tests' scale.
const RUN_KEYS: usize = 500;

/// Syncs a directory's entries.
fn sync_dir(path: &std::path::Path) {
    std::fs::File::open(path).and_then(|d| d.sync_all()).expect("sync a directory");
}

/// The value stored under `key` (`mesh_store::testing::value_for`): derived from it, so a
/// reader can check what it got.
fn value_for(key: &[u8]) -> Vec<u8> {
    mesh_store::testing::value_for(std::str::from_utf8(key).expect("the keys are text"), 150)
}

/// Ingests runs of sorted keys until a call fails; returns the runs whose `finish` returned.
/// `opened` is told once the database and its keyspace are open. Every failure must come
/// from the power cut (`mount` is cut by then): an error before it is fjall's or this test's.
fn ingest_until_failure(
    dir: &std::path::Path,
    round: u64,
    rng: &mut StdRng,
    opened: std::sync::mpsc::Sender<std::time::Instant>,
    mount: &Mount,
) -> Vec<Vec<Vec<u8>>> {
    let after_cut = |what: &str, e: &dyn std::fmt::Display| {
        assert!(mount.is_cut(), "round {round}: {what} failed before the power cut: {e}");
        eprintln!("round {round}: {what} failed after the cut: {e}");
    };
    let mut finished = Vec::new();
    let db = match fjall::Database::builder(dir).open() {
        Ok(db) => db,
        Err(e) => {
            after_cut("open", &e);
            return finished;
        }
    };
    let keyspace = match db.keyspace("kv", fjall::KeyspaceCreateOptions::default) {
        Ok(keyspace) => keyspace,
        Err(e) => {
            after_cut("keyspace", &e);
            return finished;
        }
    };
    // fjall 3.1.13 creates a keyspace's directory (`keyspaces/<id>`) without syncing
    // `keyspaces/`: without this sync a power loss can drop the new keyspace and every run
    // ingested into it (found by this test; the user of fjall must sync it).
    sync_dir(&dir.join("keyspaces"));
    opened.send(std::time::Instant::now()).unwrap();
    for run in 0.. {
        let mut keys: Vec<Vec<u8>> = (0..RUN_KEYS)
            .map(|_| format!("users\0r{round}:{:010}", rng.random_range(0..1u64 << 32)).into_bytes())
            .collect();
        keys.sort();
        keys.dedup();
        let ingested = (|| -> fjall::Result<()> {
            let mut ingestion = keyspace.start_ingestion()?;
            for key in &keys {
                ingestion.write(key.as_slice(), value_for(key))?;
            }
            ingestion.finish()
        })();
        if let Err(e) = ingested {
            after_cut(&format!("run {run}, after {} finished runs,", finished.len()), &e);
            break;
        }
        finished.push(keys);
    }
    finished
}

#[test]
fn fjall_ingestion_is_durable_once_finish_returns() {
    let test = "fjall_ingestion_is_durable_once_finish_returns";
    if mesh_powerloss_fs::skip_without_fuse(test) {
        return;
    }
    let mut rng = StdRng::seed_from_u64(common::seed("fjall_power_loss", test));
    let mut image = Image::default();
    // Every run finished so far, by round: a later round's ingestions and compactions must
    // not lose them either.
    let mut all_finished: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
    for round in 0..ROUNDS {
        let mountpoint = tempfile::tempdir().unwrap();
        let mount = Arc::new(Mount::new(mountpoint.path(), &image).expect("mount"));
        let dir = mountpoint.path().join("kv");
        if round == 0 {
            // The database's directory, durable before anything is put in it, as the store
            // makes its files' entries durable.
            std::fs::create_dir(&dir).unwrap();
            sync_dir(mountpoint.path());
        }
        // The cut comes from another thread, at a random moment: inside an ingestion's table
        // writes, its syncs, the version it records, or between runs.
        // Round 0 drops every unsynced change, so that what creating the database and its
        // keyspace left unsynced is lost for sure; later rounds keep a random prefix of them,
        // or random sectors.
        let keep_sectors = round > 0 && rng.random_bool(0.5);
        let keep_none = round == 0;
        let delay = Duration::from_millis(rng.random_range(5..200));
        let cut_seed = rng.random::<u64>();
        let (opened, open) = std::sync::mpsc::channel::<std::time::Instant>();
        let cutter = {
            let mount = mount.clone();
            std::thread::spawn(move || {
                // After the database is open (or failed to: then at once).
                if let Ok(at) = open.recv() {
                    std::thread::sleep(delay.saturating_sub(at.elapsed()));
                }
                let mut rng = StdRng::seed_from_u64(cut_seed);
                if keep_sectors {
                    mount.cut_sectors(|| rng.random_bool(0.5))
                } else {
                    let unsynced = if keep_none { 0 } else { mount.unsynced_writes() };
                    mount.cut(rng.random_range(0..=unsynced))
                }
            })
        };
        let finished = ingest_until_failure(&dir, round, &mut rng, opened, &mount);
        image = cutter.join().unwrap();
        drop(mount);

        // Reboot: mount what survived and check every finished run.
        let mountpoint = tempfile::tempdir().unwrap();
        let mount = Mount::new(mountpoint.path(), &image).expect("mount");
        {
            let db = fjall::Database::builder(mountpoint.path().join("kv"))
                .open()
                .unwrap_or_else(|e| panic!("round {round}: fjall does not open after the cut: {e}"));
            let keyspace = db.keyspace("kv", fjall::KeyspaceCreateOptions::default).unwrap();
            all_finished.extend(finished.into_iter().map(|keys| (round, keys)));
            for (run, (in_round, keys)) in all_finished.iter().enumerate() {
                // This round's runs whole; earlier ones (checked whole in their own round) by
                // their first and last keys and a few between.
                let checked: Vec<&Vec<u8>> = if *in_round == round {
                    keys.iter().collect()
                } else {
                    let picks = (0..8).map(|_| rng.random_range(0..keys.len()));
                    [0, keys.len() - 1].into_iter().chain(picks).map(|i| &keys[i]).collect()
                };
                for key in checked {
                    let value = keyspace.get(key).unwrap();
                    assert_eq!(
                        value.as_deref(),
                        Some(value_for(key).as_slice()),
                        "after round {round}'s cut: run {run} (finished in round {in_round}), key {:?} lost or wrong",
                        String::from_utf8_lossy(key)
                    );
                }
            }
        }
        drop(mount);
    }
    let total = all_finished.len();
    eprintln!("{test}: {ROUNDS} power cuts, {total} finished runs, all present");
    assert!(total >= ROUNDS as usize, "too few runs finished before the cuts to prove anything");
}
