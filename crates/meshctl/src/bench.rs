//! `meshctl bench`: drives writes at one DC through the batch API and measures, at the other
//! DCs, how fast they replicate and how far behind they run.
//!
//! Writers post batches of puts (`--batch` ops of `--value-bytes` bytes) at the chosen DC, paced
//! to `--rate` ops/s in total (0: as fast as the answers come), for `--seconds`. Each answer
//! names the ops' dots, so the origin's seq is known. Lag is what each other DC measured itself,
//! per op, from the op's durable commit at the origin to its durable apply there (the
//! `replication_lag` histogram of `/v1/status`, read before and after the run and subtracted).
//! Observers poll every other DC's `/v1/status` every 20 ms for its durable `seen` of the
//! origin, to time when it caught up (replicated ops/s, to within the poll period). Wire bytes
//! per op come from the origin's `/metrics` (`mesh_bytes_sent_total{kind="wire"}`).

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to run.
pub struct Bench {
    /// The origin DC's id.
    pub origin: String,
    /// Its API base URL.
    pub origin_api: String,
    /// The other DCs: id and API base URL.
    pub others: Vec<(String, String)>,
    /// The bearer token.
    pub token: String,
    /// The keyspace written.
    pub keyspace: String,
    /// How long to write.
    pub seconds: u64,
    /// Ops per second in total (0: unpaced).
    pub rate: u64,
    /// Ops per batch request.
    pub batch: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Concurrent writers.
    pub writers: usize,
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str, token: &str) -> Result<String, String> {
    let mut response = agent
        .get(url)
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    response.body_mut().as_reader().read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// The DC's durable seen entry for `origin`, from /v1/status.
fn seen(agent: &ureq::Agent, api: &str, token: &str, origin: &str) -> Option<u64> {
    let body = get(agent, &format!("{api}/v1/status"), token).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["seen"]["dots"][origin].as_u64().unwrap_or(0))
}

/// The DC's histogram of lag of `origin`'s ops (µs), from /v1/status; empty before any.
fn lag_histogram(
    agent: &ureq::Agent,
    api: &str,
    token: &str,
    origin: &str,
) -> Result<Histogram<u64>, String> {
    use base64::Engine;
    let body = get(agent, &format!("{api}/v1/status"), token)?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let peers = v["peers"].as_array().ok_or("no peers in /v1/status")?;
    let encoded = peers.iter().find(|p| p["dc"] == origin).and_then(|p| p["replication_lag"]["hdr"].as_str());
    let Some(encoded) = encoded else { return Histogram::new(3).map_err(|e| e.to_string()) };
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| e.to_string())?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("the lag histogram of {api}: {e:?}"))
}

fn wire_bytes(agent: &ureq::Agent, api: &str) -> u64 {
    let Ok(body) = get(agent, &format!("{api}/metrics"), "") else { return 0 };
    body.lines()
        .filter(|l| l.starts_with("mesh_bytes_sent_total{") && l.contains("kind=\"wire\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// Runs the benchmark and prints its table.
pub fn run(b: Bench) -> Result<(), String> {
    let agent = new_agent();
    let start_seq =
        seen(&agent, &b.origin_api, &b.token, &b.origin).ok_or("the origin DC's status is unreadable")?;
    let bytes_before = wire_bytes(&agent, &b.origin_api);
    let lag_before: Vec<Histogram<u64>> = b
        .others
        .iter()
        .map(|(_, api)| lag_histogram(&agent, api, &b.token, &b.origin))
        .collect::<Result<_, _>>()?;
    let acks: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let written = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_observers = Arc::new(AtomicBool::new(false));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    // Values: windows of a random alphanumeric text (about as compressible as random base64),
    // a different window per op, so neither compression nor the store sees repeated values.
    let text: Arc<str> = {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..(1usize << 20) + b.value_bytes)
            .map(|_| {
                // xorshift64*: enough randomness for bench values.
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                alphabet[(x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 58) as usize % alphabet.len()] as char
            })
            .collect::<String>()
            .into()
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(b.seconds);
    // Observers: one per other DC, polling its seen vector.
    let observers: Vec<_> = b
        .others
        .iter()
        .map(|(dc, api)| {
            let (dc, api, token, origin) = (dc.clone(), api.clone(), b.token.clone(), b.origin.clone());
            let (stop, target) = (stop_observers.clone(), target.clone());
            std::thread::spawn(move || {
                let agent = new_agent();
                let mut seen_at: Vec<(Instant, u64)> = Vec::new();
                let mut last = 0;
                loop {
                    if let Some(s) = seen(&agent, &api, &token, &origin) {
                        if s > last {
                            last = s;
                            seen_at.push((Instant::now(), s));
                        }
                    }
                    let done = stop.load(Ordering::Relaxed) && last >= target.load(Ordering::Relaxed);
                    if done || started.elapsed() > Duration::from_secs(600) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (dc, seen_at)
            })
        })
        .collect();
    let progress = ProgressBar::new(b.seconds);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
            .map_err(|e| e.to_string())?,
    );
    let writers: Vec<_> = (0..b.writers)
        .map(|w| {
            let (api, token, keyspace, text) = (b.origin_api.clone(), b.token.clone(), b.keyspace.clone(), text.clone());
            let value_bytes = b.value_bytes;
            let (acks, written, errors) = (acks.clone(), written.clone(), errors.clone());
            let (batch, rate, writers) = (b.batch, b.rate, b.writers);
            std::thread::spawn(move || {
                let agent = new_agent();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if rate > 0 {
                        // Paced: this writer's share of the rate.
                        let due = started + Duration::from_secs_f64((n * writers as u64) as f64 / rate as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let ops: Vec<String> = (0..batch)
                        .map(|i| {
                            let id = n + i as u64;
                            let at = (id as usize * 7_919 + w * 104_729) % (text.len() - value_bytes);
                            let value = &text[at..at + value_bytes];
                            format!(r#"{{"op":"put","keyspace":"{keyspace}","key":"bench-{w}-{id}","value":"{value}"}}"#)
                        })
                        .collect();
                    let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
                    let answer = agent
                        .post(format!("{api}/v1/batch"))
                        .header("authorization", &format!("Bearer {token}"))
                        .send(body.as_bytes());
                    let now = Instant::now();
                    match answer {
                        Ok(mut r) if r.status().as_u16() == 200 => {
                            let mut text = String::new();
                            let _ = r.body_mut().as_reader().read_to_string(&mut text);
                            let max_seq = text
                                .split("\"dot\":\"")
                                .skip(1)
                                .filter_map(|s| s.split('"').next()?.rsplit(':').next()?.parse::<u64>().ok())
                                .max();
                            if let Some(seq) = max_seq {
                                acks.lock().expect("no panics while held").push((now, seq));
                            }
                            written.fetch_add(batch as u64, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += batch as u64;
                }
            })
        })
        .collect();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        progress.set_position(started.elapsed().as_secs().min(b.seconds));
        progress.set_message(format!("{:.0} ops/s acked", written.load(Ordering::Relaxed) as f64 / secs));
    }
    for w in writers {
        w.join().map_err(|_| "a writer panicked")?;
    }
    progress.finish();
    let write_secs = started.elapsed().as_secs_f64();
    let acks = std::mem::take(&mut *acks.lock().expect("no panics while held"));
    let final_seq = acks.iter().map(|(_, s)| *s).max().unwrap_or(start_seq);
    target.store(final_seq, Ordering::Relaxed);
    stop_observers.store(true, Ordering::Relaxed);
    let total = written.load(Ordering::Relaxed);
    println!(
        "\n{} ops acknowledged at {} in {:.1} s: {:.0} ops/s ({} batch errors)",
        total,
        b.origin,
        write_secs,
        total as f64 / write_secs,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "{:<14} {:>14} {:>10} {:>10} {:>10} {:>10}",
        "DC", "replicated/s", "lag p50", "lag p99", "lag max", "caught up"
    );
    for ((observer, (_, api)), before) in observers.into_iter().zip(&b.others).zip(lag_before) {
        let (dc, seen_at) = observer.join().map_err(|_| "an observer panicked")?;
        let mut lag = lag_histogram(&agent, api, &b.token, &b.origin)?;
        lag.subtract(&before).map_err(|e| format!("{dc}'s lag histogram went back: {e:?}"))?;
        let caught_up = seen_at.last().map(|(t, s)| (*t, *s)).filter(|(_, s)| *s >= final_seq);
        let rate =
            caught_up.map_or(0.0, |(t, s)| (s - start_seq) as f64 / t.duration_since(started).as_secs_f64());
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1_000.0);
        println!(
            "{:<14} {:>14.0} {:>10} {:>10} {:>10} {:>10}",
            dc,
            rate,
            ms(lag.value_at_quantile(0.5)),
            ms(lag.value_at_quantile(0.99)),
            ms(lag.max()),
            if caught_up.is_some() { "yes" } else { "no" }
        );
    }
    let bytes = wire_bytes(&agent, &b.origin_api).saturating_sub(bytes_before);
    if total > 0 {
        println!(
            "wire bytes per op sent by {}: {:.1} (to {} peers)",
            b.origin,
            bytes as f64 / total as f64,
            b.others.len()
        );
    }
    Ok(())
}
