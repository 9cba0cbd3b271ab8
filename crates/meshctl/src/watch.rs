//! `meshctl watch`: a live terminal view of every DC's status (ratatui), refreshed each second.
//!
//! It asks the chosen DC for the topology (`GET /v1/topology`), then every DC for its
//! `/v1/status`, and draws one block per DC: readiness, its durable `seen`, and per peer the
//! link, health, phi, lag, queue and the replication-lag p99. `q` or Esc quits.

use ratatui::crossterm::event::{self, Event, KeyCode};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Cell, Row, Table};
use std::time::{Duration, Instant};

fn get_json(agent: &ureq::Agent, url: &str, token: &str) -> Option<serde_json::Value> {
    let mut response = agent.get(url).header("authorization", &format!("Bearer {token}")).call().ok()?;
    if response.status().as_u16() != 200 {
        return None;
    }
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

/// Every DC of the topology (id, API base URL) as the DC at `base` lists them.
fn dcs(agent: &ureq::Agent, base: &str, token: &str) -> Result<Vec<(String, String)>, String> {
    let topology = get_json(agent, &format!("{base}/v1/topology"), token)
        .ok_or(format!("{base}: no answer to /v1/topology"))?;
    Ok(topology["dcs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["id"].as_str().unwrap_or("?").to_owned(),
                format!("http://{}", d["api"].as_str().unwrap_or("")),
            )
        })
        .collect())
}

fn health_color(health: &str) -> Color {
    match health {
        "healthy" => Color::Green,
        "suspect" => Color::Yellow,
        _ => Color::Red,
    }
}

/// Runs the view until `q` or Esc.
pub fn run(base: &str, token: &str) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(800)))
        .build()
        .into();
    let dcs = dcs(&agent, base, token)?;
    ratatui::run(|terminal| -> Result<(), String> {
        loop {
            let started = Instant::now();
            let statuses: Vec<(String, Option<serde_json::Value>)> = dcs
                .iter()
                .map(|(id, api)| (id.clone(), get_json(&agent, &format!("{api}/v1/status"), token)))
                .collect();
            terminal
                .draw(|frame| {
                    let areas =
                        Layout::vertical(vec![Constraint::Min(3); statuses.len()]).split(frame.area());
                    for ((id, status), area) in statuses.iter().zip(areas.iter()) {
                        let title = match status {
                            Some(s) => {
                                format!(" {id}  ready {}  seen {}  (q quits) ", s["ready"], s["seen"]["dots"])
                            }
                            None => format!(" {id}  unreachable "),
                        };
                        let header = Row::new([
                            "peer",
                            "link",
                            "health",
                            "phi",
                            "lag ops",
                            "lag ms",
                            "queued",
                            "lag p99 ms",
                        ])
                        .style(Style::default().fg(Color::Cyan));
                        let rows: Vec<Row> = status
                            .iter()
                            .flat_map(|s| s["peers"].as_array().cloned().unwrap_or_default())
                            .map(|p| {
                                let health = p["health"].as_str().unwrap_or("unknown").to_owned();
                                Row::new(vec![
                                    Cell::from(p["dc"].as_str().unwrap_or("?").to_owned()),
                                    Cell::from(if p["connected"] == true { "up" } else { "down" }),
                                    Cell::from(health.clone())
                                        .style(Style::default().fg(health_color(&health))),
                                    Cell::from(format!("{:.2}", p["phi"].as_f64().unwrap_or(-1.0))),
                                    Cell::from(shown(&p["lag_ops"])),
                                    Cell::from(shown(&p["lag_ms"])),
                                    Cell::from(shown(&p["queued_ops"])),
                                    Cell::from(shown(&p["replication_lag"]["p99_ms"])),
                                ])
                            })
                            .collect();
                        let widths = [Constraint::Length(14), Constraint::Length(6), Constraint::Length(9)]
                            .into_iter()
                            .chain(std::iter::repeat_n(Constraint::Length(11), 5));
                        let table =
                            Table::new(rows, widths).header(header).block(Block::bordered().title(title));
                        frame.render_widget(table, *area);
                    }
                })
                .map_err(|e| e.to_string())?;
            let wait = Duration::from_secs(1).saturating_sub(started.elapsed());
            if event::poll(wait).map_err(|e| e.to_string())? {
                if let Event::Key(key) = event::read().map_err(|e| e.to_string())? {
                    if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
            }
        }
    })
}

/// A status number as shown: `-` where there is none yet (no samples, no link).
fn shown(v: &serde_json::Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}
