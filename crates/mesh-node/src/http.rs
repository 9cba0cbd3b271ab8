//! The HTTP API (axum): key-value reads and writes, status, health. Every `/v1` route needs
//! `Authorization: Bearer TOKEN`; errors are JSON `{"code", "message"}` with a stable code.

use crate::runtime::{CallError, DcMsg, DcStatus, WriteDone, WriteResult};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mesh_core::topology::{Acks, AcksName, Mode};
use mesh_core::StateError;
use mesh_core::{Key, Keyspace, OpKind, ReadResult, ReadValue, VersionVector};
use mesh_engine::node::{NodeWriteError, WriteOptions};
use mesh_engine::resolver::{check_write, WriteError, WriteRequest};
use mesh_engine::sync::SyncOutcome;
use ractor::ActorRef;
use serde::Deserialize;
use serde_bytes::ByteBuf;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::watch;

/// Shared by every handler.
#[derive(Clone)]
pub struct ApiState {
    /// The live DC actor.
    pub dc: watch::Receiver<Option<ActorRef<DcMsg>>>,
    /// The bearer token.
    pub token: String,
    /// The node's instruments, for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// The topology, to check batches before writing.
    pub topology: std::sync::Arc<mesh_core::Topology>,
    /// This DC.
    pub local: mesh_core::DcId,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.1, "message": self.2}))).into_response()
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/kv/{keyspace}/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/v1/counter/{keyspace}/{key}", axum::routing::post(counter_add))
        .route("/v1/set/{keyspace}/{key}", axum::routing::post(set_change))
        .route(
            "/v1/batch",
            axum::routing::post(batch).layer(axum::extract::DefaultBodyLimit::max(BATCH_BODY_BYTES_MAX)),
        )
        .route("/v1/status", get(status))
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/peers/{dc}/backlog", get(backlog))
        .route("/v1/topology", get(topology))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    // The dashboard page of one DC reads every DC's status from the browser: reads may come
    // from the pages of the mesh's DCs (they carry the bearer token, never a cookie).
    let origins: Vec<axum::http::HeaderValue> = state
        .topology
        .dcs
        .iter()
        .filter_map(|d| axum::http::HeaderValue::from_str(&format!("http://{}", d.api)).ok())
        .collect();
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(origins))
        .allow_methods([axum::http::Method::GET])
        .allow_headers([axum::http::header::AUTHORIZATION]);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(dashboard))
        .merge(v1)
        .layer(cors)
        .with_state(state)
}

/// The built-in dashboard page, no token (its data calls need one): the mesh as a graph with
/// links coloured by health and labelled with lag, and per DC rates, backlog, conflicts and a
/// lag sparkline (docs/observability.md). One self-contained HTML file, no CDN.
async fn dashboard() -> Response {
    ([("content-type", "text/html; charset=utf-8")], include_str!("dashboard.html")).into_response()
}

/// `GET /v1/topology`: this DC and every DC of the topology with its region and API address
/// (what the dashboard page polls).
async fn topology(State(state): State<ApiState>) -> Response {
    let dcs: Vec<Value> = state
        .topology
        .dcs
        .iter()
        .map(|d| json!({"id": d.id, "region": d.region, "api": d.api.to_string(), "active": d.active}))
        .collect();
    Json(json!({"dc": state.local, "dcs": dcs})).into_response()
}

/// Readiness, no token: `200 ready` once the DC serves and accepts writes; `503` with the API's
/// JSON error while it opens its store or waits for its peers (`/healthz` is liveness: the
/// process answers).
async fn readyz(State(state): State<ApiState>) -> Result<&'static str, ApiError> {
    let s = ask(&state, DcMsg::Status, Duration::from_secs(10)).await?;
    if !s.ready {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "this DC waits for its peers before it accepts writes".into(),
        ));
    }
    Ok("ready")
}

/// Prometheus text format; open like `/healthz`, so a scraper needs no token.
async fn metrics(State(state): State<ApiState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn auth(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", state.token);
    let given = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        return ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required".into())
            .into_response();
    }
    next.run(request).await
}

/// Asks the live DC actor and waits up to `timeout` for its answer.
async fn ask<T: Send + 'static>(
    state: &ApiState,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> DcMsg,
    timeout: Duration,
) -> Result<T, ApiError> {
    crate::runtime::call(&state.dc, build, timeout).await.map_err(|e| match e {
        CallError::Starting => ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting", e.to_string()),
        CallError::Unavailable(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, "restarting", e.to_string()),
    })
}

fn ids(keyspace: &str, key: &str) -> Result<(Keyspace, Key), ApiError> {
    let ks = Keyspace::new(keyspace)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_keyspace", e.to_string()))?;
    let k = Key::new(key).map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_key", e.to_string()))?;
    Ok((ks, k))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn options(headers: &HeaderMap) -> Result<WriteOptions, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, "bad_header", m);
    let mode = match header(headers, "x-mesh-mode") {
        None => None,
        Some("async") => Some(Mode::Async),
        Some("sync") => Some(Mode::Sync),
        Some("hybrid") => Some(Mode::Hybrid),
        Some(other) => return Err(bad(format!("x-mesh-mode: {other:?} is not async, sync or hybrid"))),
    };
    let acks = match header(headers, "x-mesh-acks") {
        None => None,
        Some("quorum") => Some(Acks::Named(AcksName::Quorum)),
        Some("all") => Some(Acks::Named(AcksName::All)),
        Some(n) => Some(Acks::Count(
            n.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("x-mesh-acks: {n:?} is not a number, quorum or all")))?,
        )),
    };
    Ok(WriteOptions { mode, acks })
}

fn context(headers: &HeaderMap) -> Result<Option<VersionVector>, ApiError> {
    let Some(text) = header(headers, "x-mesh-context") else { return Ok(None) };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_context", format!("x-mesh-context: {e}")))
}

/// The API error for a refused write: its status and stable code (the RESP front end reuses the
/// code).
pub fn write_error(e: NodeWriteError) -> ApiError {
    use StatusCode as S;
    match e {
        NodeWriteError::Starting => ApiError(S::SERVICE_UNAVAILABLE, "starting", e.to_string()),
        NodeWriteError::SyncBusy | NodeWriteError::Busy => {
            ApiError(S::SERVICE_UNAVAILABLE, "busy", e.to_string())
        }
        NodeWriteError::Write(w) => match w {
            WriteError::UnknownKeyspace(_) => ApiError(S::NOT_FOUND, "unknown_keyspace", w.to_string()),
            WriteError::TooLarge { .. } => ApiError(S::PAYLOAD_TOO_LARGE, "too_large", w.to_string()),
            WriteError::Exists => ApiError(S::CONFLICT, "exists", w.to_string()),
            WriteError::UnissuedDot(_) => ApiError(S::CONFLICT, "unissued_dot", w.to_string()),
            WriteError::State(StateError::TooManySiblings { .. }) => {
                ApiError(S::CONFLICT, "too_many_siblings", w.to_string())
            }
            WriteError::State(_) => ApiError(S::BAD_REQUEST, "wrong_type", w.to_string()),
            WriteError::ClockSkewed { .. } => ApiError(S::SERVICE_UNAVAILABLE, "clock_skewed", w.to_string()),
            WriteError::IdempotencyKeyReused(_) => {
                ApiError(S::CONFLICT, "idempotency_key_reused", w.to_string())
            }
            WriteError::Read(_) => ApiError(S::INTERNAL_SERVER_ERROR, "storage", w.to_string()),
        },
    }
}

/// A dot as the API writes it: `origin:seq`.
pub fn dot_text(dot: &mesh_core::Dot) -> String {
    format!("{}:{}", dot.origin, dot.seq)
}

async fn write(
    state: &ApiState,
    headers: &HeaderMap,
    keyspace: Keyspace,
    key: Key,
    kind: OpKind,
) -> Result<Response, ApiError> {
    let request = WriteRequest {
        request: mesh_engine::sync::RequestId::default(),
        keyspace,
        key,
        kind,
        context: context(headers)?,
        idempotency_key: header(headers, "idempotency-key").map(str::to_owned),
    };
    let options = options(headers)?;
    let traceparent = header(headers, "traceparent").map(str::to_owned);
    let result: WriteResult = ask(
        state,
        |reply| DcMsg::Write { write: request, options, traceparent, reply },
        Duration::from_secs(60),
    )
    .await?;
    let done = result.map_err(write_error)?;
    let (dot, outcome) = (dot_text(&done.dot), done.outcome);
    Ok(match outcome {
        SyncOutcome::Done { confirmed, .. } => (StatusCode::OK, Json(json!({"dot": dot, "confirmed": confirmed}))).into_response(),
        SyncOutcome::TimedOut { confirmed, required, .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({
                "code": "sync_timeout",
                "message": format!("committed here, but only {} of the {required} DCs required confirmed in time; the write still replicates", confirmed.len()),
                "dot": dot,
                "committed_locally": true,
                "confirmed": confirmed,
                "required": required,
            })),
        )
            .into_response(),
    })
}

async fn put_kv(
    State(state): State<ApiState>,
    Path((keyspace, key)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let (ks, k) = ids(&keyspace, &key)?;
    write(&state, &headers, ks, k, OpKind::Put(body.to_vec())).await
}

async fn delete_kv(
    State(state): State<ApiState>,
    Path((keyspace, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (ks, k) = ids(&keyspace, &key)?;
    write(&state, &headers, ks, k, OpKind::Delete).await
}

/// Value bytes in a JSON answer: as text, or as base64 when asked (`?encoding=base64`) or when
/// any of them is not UTF-8 (so text is never altered). The answer's `encoding` says which.
fn text_or_base64<'a>(
    values: impl Iterator<Item = &'a [u8]> + Clone,
    base64: bool,
) -> (&'static str, Vec<String>) {
    use base64::Engine;
    let base64 = base64 || values.clone().any(|v| std::str::from_utf8(v).is_err());
    if base64 {
        ("base64", values.map(|v| base64::engine::general_purpose::STANDARD.encode(v)).collect())
    } else {
        ("utf8", values.map(|v| String::from_utf8_lossy(v).into_owned()).collect())
    }
}

fn render(read: &ReadResult, base64: bool) -> (bool, Value) {
    let context = serde_json::to_value(&read.context).unwrap_or(Value::Null);
    match &read.value {
        ReadValue::Register(versions) => {
            let bytes = versions.iter().map(|v| v.value.as_ref().map_or(&[][..], |b| b.as_slice()));
            let (encoding, texts) = text_or_base64(bytes, base64);
            let values: Vec<Value> = versions
                .iter()
                .zip(texts)
                .map(|(v, text)| json!({"value": text, "dc": v.dot.origin, "seq": v.dot.seq}))
                .collect();
            (!values.is_empty(), json!({"values": values, "encoding": encoding, "context": context}))
        }
        ReadValue::Counter(n) => (true, json!({"value": n, "context": context})),
        ReadValue::Set(members) => {
            let (encoding, members) = text_or_base64(members.iter().map(|m| m.as_slice()), base64);
            (true, json!({"members": members, "encoding": encoding, "context": context}))
        }
    }
}

/// `GET /v1/kv/...` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    /// `base64` returns every value base64-encoded.
    #[serde(default)]
    encoding: Option<String>,
}

async fn get_kv(
    State(state): State<ApiState>,
    Path((keyspace, key)): Path<(String, String)>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (ks, k) = ids(&keyspace, &key)?;
    let query = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let base64 = match query.encoding.as_deref() {
        None | Some("utf8") => false,
        Some("base64") => true,
        Some(other) => {
            let m = format!("encoding {other:?}: use utf8 or base64");
            return Err(ApiError(StatusCode::BAD_REQUEST, "bad_query", m));
        }
    };
    let keys = vec![(ks.clone(), k)];
    let mut reads = ask(&state, |reply| DcMsg::Read { keys, reply }, Duration::from_secs(10)).await?;
    let read = reads.pop().expect("one answer per key");
    let read = read.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "storage", e))?;
    let Some(read) = read else {
        return Err(ApiError(StatusCode::NOT_FOUND, "unknown_keyspace", format!("unknown keyspace {ks}")));
    };
    let (found, body) = render(&read, base64);
    let context = serde_json::to_string(&read.context).unwrap_or_default();
    let status = if found { StatusCode::OK } else { StatusCode::NOT_FOUND };
    Ok((status, [("x-mesh-context", context)], Json(body)).into_response())
}

fn status_json(s: &DcStatus) -> Value {
    let peers: Vec<Value> = s
        .peers
        .iter()
        .map(|p| {
            let status = p.status.as_ref();
            let lag_ms = status.and_then(|p| p.lag).map(|l| l.ms);
            json!({
                "dc": p.dc,
                "connected": p.connected,
                "health": status.map(|p| format!("{:?}", p.health).to_lowercase()),
                "phi": status.map(|p| if p.phi.is_finite() { p.phi } else { -1.0 }),
                "clock_offset_ms": status.and_then(|p| p.clock_offset_ms),
                "clock_offset_error_ms": status.and_then(|p| p.clock_offset_error_ms),
                "lag_ops": status.and_then(|p| p.lag).map(|l| l.ops),
                "lag_ms": lag_ms,
                "lag_alert": lag_ms.is_some_and(|ms| ms > s.lag_alert_ms),
                "queued_ops": p.queued_ops,
                "regressed": p.regressed,
                "apply_failures": p.apply_failures.as_ref().map_or(0, |f| f.0),
                "last_apply_error": p.apply_failures.as_ref().map(|f| &f.1),
                "replicated_ops": p.link.ops,
                "batches": p.link.batches,
                "relayed_ops": p.link.relayed_ops,
                "retransmits": p.link.retransmits,
                "dials_failed": p.dials_failed,
                "links_lost": p.links_lost,
                "bytes_raw": p.raw_bytes,
                "bytes_wire": p.wire_bytes,
                "last_sent_ms_ago": p.last_sent_ms_ago,
                "last_sent_unix_ms": p.last_sent_unix_ms,
                "replication_lag": p.lag_histogram.as_ref().map(lag_json),
            })
        })
        .collect();
    json!({
        "dc": s.dc,
        "ready": s.ready,
        "seen": s.seen,
        "max_replication_lag_ms": s.lag_alert_ms,
        "peers": peers,
        "links_refused": s.stats.links_refused,
        "gaps": s.stats.gaps,
        "state_transfers_sent": s.stats.transfers_sent,
        "state_transfers_received": s.stats.transfers_received,
        "conflicts": s.conflicts,
    })
}

/// A lag histogram in status: percentiles in ms, and the whole histogram (HdrHistogram V2,
/// base64) so a client can subtract two readings and get the percentiles of the time between.
fn lag_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    use base64::Engine;
    use hdrhistogram::serialization::Serializer;
    let ms = |us: u64| us as f64 / 1000.0;
    let mut bytes = Vec::new();
    let hdr = hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut bytes)
        .map(|_| base64::engine::general_purpose::STANDARD.encode(&bytes))
        .ok();
    json!({
        "ops": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "hdr": hdr,
    })
}

async fn status(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let s = ask(&state, DcMsg::Status, Duration::from_secs(10)).await?;
    Ok(Json(status_json(&s)).into_response())
}

/// `GET /v1/peers/{dc}/backlog` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BacklogQuery {
    /// Most ops read from the log to break the backlog down (default 10,000, at most 100,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/peers/{dc}/backlog?limit=`: what this DC still has to get to peer `dc`: ops per
/// origin (exact), and, from the first `limit` of them read from the log, ops and bytes per
/// keyspace and the first keys.
async fn backlog(
    State(state): State<ApiState>,
    Path(dc): Path<String>,
    query: Result<Query<BacklogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let scan_ops = query.limit.unwrap_or(10_000);
    if scan_ops == 0 || scan_ops > 100_000 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("limit {scan_ops}: give 1 to 100000"),
        ));
    }
    let unknown =
        || ApiError(StatusCode::NOT_FOUND, "unknown_dc", format!("{dc:?} is not a peer of this DC"));
    let peer = mesh_core::DcId::new(dc.clone()).map_err(|_| unknown())?;
    let answer =
        ask(&state, |reply| DcMsg::Backlog { peer, scan_ops, reply }, Duration::from_secs(30)).await?;
    let b =
        answer.ok_or_else(unknown)?.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "storage", e))?;
    let origins: Vec<Value> = b
        .origins
        .iter()
        .map(|(o, held, upto)| json!({"origin": o, "peer_holds": held, "up_to": upto, "ops": upto - held}))
        .collect();
    let keyspaces: serde_json::Map<String, Value> = b
        .keyspaces
        .iter()
        .map(|(k, (ops, bytes))| (k.to_string(), json!({"ops": ops, "bytes": bytes})))
        .collect();
    let first_keys: Vec<Value> =
        b.first_keys.iter().map(|(k, key)| json!({"keyspace": k, "key": key})).collect();
    let unreadable: Vec<Value> =
        b.unreadable.iter().map(|(o, why)| json!({"origin": o, "error": why})).collect();
    Ok(Json(json!({
        "peer": dc,
        "ops": b.origins.iter().map(|(_, held, upto)| upto - held).sum::<u64>(),
        "origins": origins,
        "scanned_ops": b.scanned_ops,
        "keyspaces": keyspaces,
        "first_keys": first_keys,
        "unreadable": unreadable,
    }))
    .into_response())
}

/// `GET /v1/conflicts` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictsQuery {
    /// Only this keyspace's records.
    #[serde(default)]
    keyspace: Option<String>,
    /// At most this many (default 100, at most [`crate::runtime::CONFLICTS_KEPT`]).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/conflicts?keyspace=&limit=`: the newest conflict records this DC resolved, newest
/// first: keyspace, key, strategy, every competing version (origin, seq, HLC, value) and the
/// winner (null for siblings, which keep every version).
async fn conflicts(
    State(state): State<ApiState>,
    query: Result<Query<ConflictsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let max = crate::runtime::CONFLICTS_KEPT;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        let m = format!("limit {limit}: give 1 to {max}");
        return Err(ApiError(StatusCode::BAD_REQUEST, "bad_query", m));
    }
    let keyspace = match query.keyspace {
        Some(k) => Some(
            Keyspace::new(k).map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_keyspace", e.to_string()))?,
        ),
        None => None,
    };
    if let Some(ks) = keyspace.as_ref().filter(|ks| state.topology.keyspace(ks).is_none()) {
        return Err(ApiError(StatusCode::NOT_FOUND, "unknown_keyspace", format!("unknown keyspace {ks}")));
    }
    let records =
        ask(&state, |reply| DcMsg::Conflicts { keyspace, limit, reply }, Duration::from_secs(10)).await?;
    let records: Vec<Value> = records
        .iter()
        .map(|(at, c)| {
            let bytes = c.versions.iter().map(|v| v.value.as_ref().map_or(&[][..], |b| b.as_slice()));
            let (encoding, texts) = text_or_base64(bytes, false);
            let versions: Vec<Value> = c
                .versions
                .iter()
                .zip(texts)
                .map(|(v, text)| {
                    json!({
                        "dc": v.dot.origin, "seq": v.dot.seq,
                        "hlc": {"physical_ms": v.hlc.physical_ms, "logical": v.hlc.logical},
                        "value": v.value.as_ref().map(|_| text), "tombstone": v.value.is_none(),
                    })
                })
                .collect();
            json!({
                "at_unix_ms": at, "keyspace": c.keyspace, "key": c.key, "strategy": c.strategy,
                "winner": c.winner.as_ref().map(dot_text), "encoding": encoding, "versions": versions,
            })
        })
        .collect();
    Ok(Json(json!({"conflicts": records})).into_response())
}

/// `POST /v1/counter/{keyspace}/{key}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterBody {
    /// The amount to add (negative to subtract).
    by: i64,
}

async fn counter_add(
    State(state): State<ApiState>,
    Path((keyspace, key)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let (ks, k) = ids(&keyspace, &key)?;
    let body: CounterBody = json_body(&body)?;
    write(&state, &headers, ks, k, OpKind::CounterAdd(body.by)).await
}

/// `POST /v1/set/{keyspace}/{key}` body: exactly one of `add` or `remove`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

fn set_kind(add: Vec<Vec<u8>>, remove: Vec<Vec<u8>>) -> Result<OpKind, ApiError> {
    let members = |v: Vec<Vec<u8>>| v.into_iter().map(ByteBuf::from).collect();
    match (add.is_empty(), remove.is_empty()) {
        (false, true) => Ok(OpKind::SetAdd(members(add))),
        (true, false) => Ok(OpKind::SetRemove(members(remove))),
        _ => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "give exactly one of add or remove, not empty".into(),
        )),
    }
}

async fn set_change(
    State(state): State<ApiState>,
    Path((keyspace, key)): Path<(String, String)>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let (ks, k) = ids(&keyspace, &key)?;
    let body: SetBody = json_body(&body)?;
    let bytes = |v: Vec<String>| v.into_iter().map(String::into_bytes).collect();
    write(&state, &headers, ks, k, set_kind(bytes(body.add), bytes(body.remove))?).await
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_body", e.to_string()))
}

/// Most ops in one `POST /v1/batch`.
pub const BATCH_OPS_MAX: usize = 10_000;

/// Most bytes in one `POST /v1/batch` body (other routes keep axum's 2 MB, room for a value of
/// [`mesh_core::VALUE_BYTES_MAX`]).
pub const BATCH_BODY_BYTES_MAX: usize = 64 << 20;

/// A request body, read under the route's body limit; a body over it (or one that fails to
/// arrive) is answered with the API's JSON error, not axum's plain text.
struct Body(axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over this route's limit ({e})"),
            )),
            Err(e) => Err(ApiError(e.status(), "bad_body", e.body_text())),
        }
    }
}

/// One op of a batch.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum BatchOp {
    Put {
        keyspace: String,
        key: String,
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        value_base64: Option<String>,
    },
    Delete {
        keyspace: String,
        key: String,
    },
    Incr {
        keyspace: String,
        key: String,
        by: i64,
    },
    Add {
        keyspace: String,
        key: String,
        #[serde(default)]
        members: Vec<String>,
        #[serde(default)]
        members_base64: Vec<String>,
    },
    Remove {
        keyspace: String,
        key: String,
        #[serde(default)]
        members: Vec<String>,
        #[serde(default)]
        members_base64: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    ops: Vec<BatchOp>,
}

/// Bytes given as base64 in the batch field `field`.
fn from_base64(field: &str, b64: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_batch", format!("{field}: {e}")))
}

/// A batch set op's members: those given as text, then those given as base64.
fn member_bytes(members: Vec<String>, members_base64: Vec<String>) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut bytes: Vec<Vec<u8>> = members.into_iter().map(String::into_bytes).collect();
    for m in &members_base64 {
        bytes.push(from_base64("members_base64", m)?);
    }
    Ok(bytes)
}

/// A batch put's value: exactly one of `value` (text) or `value_base64`.
fn put_value(value: Option<String>, value_base64: Option<String>) -> Result<Vec<u8>, ApiError> {
    match (value, value_base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b64)) => from_base64("value_base64", &b64),
        _ => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "bad_batch",
            "give exactly one of value or value_base64".into(),
        )),
    }
}

/// `POST /v1/batch`: many writes in one request, applied in order. The whole batch is checked
/// first (names, sizes, value types), so bad input writes nothing; each op's answer comes back
/// in order (`ok` with its dot, or its error).
async fn batch(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let body: BatchBody = json_body(&body)?;
    if body.ops.is_empty() || body.ops.len() > BATCH_OPS_MAX {
        let m = format!("a batch holds 1 to {BATCH_OPS_MAX} ops, not {}", body.ops.len());
        return Err(ApiError(StatusCode::BAD_REQUEST, "bad_batch", m));
    }
    let options = options(&headers)?;
    let mut writes = Vec::with_capacity(body.ops.len());
    for (i, op) in body.ops.into_iter().enumerate() {
        let at = |e: ApiError| ApiError(e.0, e.1, format!("ops[{i}]: {}", e.2));
        let (keyspace, key, kind) = match op {
            BatchOp::Put { keyspace, key, value, value_base64 } => {
                (keyspace, key, OpKind::Put(put_value(value, value_base64).map_err(at)?))
            }
            BatchOp::Delete { keyspace, key } => (keyspace, key, OpKind::Delete),
            BatchOp::Incr { keyspace, key, by } => (keyspace, key, OpKind::CounterAdd(by)),
            BatchOp::Add { keyspace, key, members, members_base64 } => {
                let members = member_bytes(members, members_base64).map_err(at)?;
                (keyspace, key, set_kind(members, vec![]).map_err(at)?)
            }
            BatchOp::Remove { keyspace, key, members, members_base64 } => {
                let members = member_bytes(members, members_base64).map_err(at)?;
                (keyspace, key, set_kind(vec![], members).map_err(at)?)
            }
        };
        let (ks, k) = ids(&keyspace, &key).map_err(at)?;
        check_write(&state.topology, &ks, &kind).map_err(|e| at(write_error(e.into())))?;
        let request = WriteRequest {
            request: mesh_engine::sync::RequestId::default(),
            keyspace: ks,
            key: k,
            kind,
            context: None,
            idempotency_key: None,
        };
        writes.push((request, options));
    }
    let results = ask(&state, |reply| DcMsg::WriteBatch { writes, reply }, Duration::from_secs(120)).await?;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(WriteDone { dot, outcome: SyncOutcome::Done { .. }, .. }) => {
                json!({"ok": true, "dot": dot_text(&dot)})
            }
            Ok(WriteDone { dot, outcome: SyncOutcome::TimedOut { confirmed, required, .. }, .. }) => json!({
                "ok": false, "code": "sync_timeout", "dot": dot_text(&dot),
                "committed_locally": true, "confirmed": confirmed, "required": required,
            }),
            Err(e) => {
                let e = write_error(e);
                json!({"ok": false, "code": e.1, "message": e.2})
            }
        })
        .collect();
    Ok(Json(json!({"results": results})).into_response())
}
