//! The HTTP API (axum): key-value reads and writes, status, health. Every `/v1` route needs
//! `Authorization: Bearer TOKEN`; errors are JSON `{"code", "message"}` with a stable code.

use crate::runtime::{DcMsg, DcStatus, WriteResult};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mesh_core::topology::{Acks, AcksName, Mode};
use mesh_core::StateError;
use mesh_core::{DcId, Key, Keyspace, OpKind, ReadResult, ReadValue, VersionVector};
use mesh_engine::node::{NodeWriteError, WriteOptions};
use mesh_engine::resolver::{WriteError, WriteRequest};
use mesh_engine::sync::SyncOutcome;
use ractor::ActorRef;
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
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.1, "message": self.2}))).into_response()
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/kv/{keyspace}/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/v1/status", get(status))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(state)
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

fn actor(state: &ApiState) -> Result<ActorRef<DcMsg>, ApiError> {
    state.dc.borrow().clone().ok_or(ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "restarting",
        "the DC is restarting".into(),
    ))
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

fn write_error(e: NodeWriteError) -> ApiError {
    use StatusCode as S;
    match e {
        NodeWriteError::Starting => ApiError(S::SERVICE_UNAVAILABLE, "starting", e.to_string()),
        NodeWriteError::SyncBusy | NodeWriteError::Busy => {
            ApiError(S::SERVICE_UNAVAILABLE, "busy", e.to_string())
        }
        NodeWriteError::Write(w) => match w {
            WriteError::UnknownKeyspace(_) => ApiError(S::NOT_FOUND, "unknown_keyspace", w.to_string()),
            WriteError::TooLarge { .. } => ApiError(S::PAYLOAD_TOO_LARGE, "too_large", w.to_string()),
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

async fn write(
    state: &ApiState,
    headers: &HeaderMap,
    keyspace: Keyspace,
    key: Key,
    kind: OpKind,
) -> Result<Response, ApiError> {
    let actor = actor(state)?;
    let request = WriteRequest {
        request: 0,
        keyspace,
        key,
        kind,
        context: context(headers)?,
        idempotency_key: header(headers, "idempotency-key").map(str::to_owned),
    };
    let options = options(headers)?;
    let answer = actor
        .call(|reply| DcMsg::Write { write: request, options, reply }, Some(Duration::from_secs(60)))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "restarting", e.to_string()))?;
    let result: WriteResult = match answer {
        ractor::rpc::CallResult::Success(r) => r,
        _ => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "restarting",
                "the DC did not answer".into(),
            ))
        }
    };
    let (dot, outcome) = result.map_err(write_error)?;
    let dot = format!("{}:{}", dot.origin, dot.seq);
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
    body: axum::body::Bytes,
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

fn render(read: &ReadResult) -> (bool, Value) {
    let context = serde_json::to_value(&read.context).unwrap_or(Value::Null);
    match &read.value {
        ReadValue::Register(versions) => {
            let values: Vec<Value> = versions
                .iter()
                .map(|v| {
                    json!({
                        "value": String::from_utf8_lossy(v.value.as_ref().map_or(&[][..], |b| b.as_slice())),
                        "dc": v.dot.origin,
                        "seq": v.dot.seq,
                    })
                })
                .collect();
            (!values.is_empty(), json!({"values": values, "context": context}))
        }
        ReadValue::Counter(n) => (true, json!({"value": n, "context": context})),
        ReadValue::Set(members) => {
            let members: Vec<String> =
                members.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
            (true, json!({"members": members, "context": context}))
        }
    }
}

async fn get_kv(
    State(state): State<ApiState>,
    Path((keyspace, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (ks, k) = ids(&keyspace, &key)?;
    let actor = actor(&state)?;
    let answer = actor
        .call(|reply| DcMsg::Read { keyspace: ks.clone(), key: k, reply }, Some(Duration::from_secs(10)))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "restarting", e.to_string()))?;
    let ractor::rpc::CallResult::Success(read) = answer else {
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "restarting", "the DC did not answer".into()));
    };
    let read = read.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "storage", e))?;
    let Some(read) = read else {
        return Err(ApiError(StatusCode::NOT_FOUND, "unknown_keyspace", format!("unknown keyspace {ks}")));
    };
    let (found, body) = render(&read);
    let context = serde_json::to_string(&read.context).unwrap_or_default();
    let status = if found { StatusCode::OK } else { StatusCode::NOT_FOUND };
    Ok((status, [("x-mesh-context", context)], Json(body)).into_response())
}

fn status_json(s: &DcStatus) -> Value {
    let peers: Vec<Value> = s
        .peers
        .iter()
        .map(|(dc, status, link, connected): &(DcId, _, _, bool)| {
            json!({
                "dc": dc,
                "connected": connected,
                "health": status.as_ref().map(|p| format!("{:?}", p.health).to_lowercase()),
                "phi": status.as_ref().map(|p| if p.phi.is_finite() { p.phi } else { -1.0 }),
                "clock_offset_ms": status.as_ref().and_then(|p| p.clock_offset_ms),
                "lag_ops": status.as_ref().and_then(|p| p.lag).map(|l| l.ops),
                "lag_ms": status.as_ref().and_then(|p| p.lag).map(|l| l.ms),
                "replicated_ops": link.ops,
                "batches": link.batches,
                "relayed_ops": link.relayed_ops,
                "retransmits": link.retransmits,
            })
        })
        .collect();
    json!({
        "dc": s.dc,
        "ready": s.ready,
        "seen": s.seen,
        "peers": peers,
        "links_refused": s.stats.links_refused,
        "state_transfers_sent": s.stats.transfers_sent,
        "state_transfers_received": s.stats.transfers_received,
        "conflicts": s.conflicts,
    })
}

async fn status(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let actor = actor(&state)?;
    let answer = actor
        .call(DcMsg::Status, Some(Duration::from_secs(10)))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "restarting", e.to_string()))?;
    let ractor::rpc::CallResult::Success(s) = answer else {
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "restarting", "the DC did not answer".into()));
    };
    Ok(Json(status_json(&s)).into_response())
}
