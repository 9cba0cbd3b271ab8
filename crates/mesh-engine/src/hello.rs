//! The Hello check: whether a link to a peer may open, and where replication to it resumes.
//!
//! After mutual TLS has proved the peer's DC identity (from its certificate), the peer's Hello
//! must name the same DC, a DC of the topology other than this one, and the same topology
//! fingerprint: every DC must resolve with the same rules, so a mismatch refuses the link (and
//! the runtime counts it) instead of letting the DCs diverge. The protocol major version is
//! checked earlier, by the frame decoder.

use mesh_core::{DcId, Topology, VersionVector};

/// Why a link was refused. Nothing is streamed on a refused link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloRefusal {
    /// The Hello names another DC than the peer's certificate.
    #[error("the certificate is for {certificate} but the Hello says {hello}")]
    IdentityMismatch {
        /// The DC the certificate proves.
        certificate: DcId,
        /// The DC the Hello claims.
        hello: DcId,
    },
    /// The DC is not in this DC's topology (or is inactive).
    #[error("{0} is not an active DC of this topology")]
    UnknownDc(DcId),
    /// The peer is this DC itself (a misrouted endpoint).
    #[error("connected to itself ({0})")]
    SelfConnection(DcId),
    /// The peer resolves conflicts with other rules.
    #[error("topology fingerprint mismatch: ours {ours:016x}, theirs {theirs:016x}")]
    FingerprintMismatch {
        /// This DC's fingerprint.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
}

/// An accepted Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAccepted {
    /// Stream to the peer every op its Hello `seen` lacks.
    pub resume_from: VersionVector,
    /// Set when the peer reports less than it had acknowledged as durable (it lost acknowledged
    /// data, for example to a disk that lied about fsync): the entries of the acked vector its
    /// Hello no longer covers. The link still opens and the ops are streamed again; the runtime
    /// raises an alarm.
    pub regressed: Option<VersionVector>,
}

/// Checks a peer's Hello. `certificate_dc` is the identity mTLS proved; `hello_dc`,
/// `fingerprint` and `peer_seen` come from the Hello; `acked` is the vector this DC persisted as
/// acknowledged by that peer.
pub fn check_hello(
    topology: &Topology,
    local: &DcId,
    certificate_dc: &DcId,
    hello_dc: &DcId,
    fingerprint: u64,
    peer_seen: &VersionVector,
    acked: &VersionVector,
) -> Result<HelloAccepted, HelloRefusal> {
    if certificate_dc != hello_dc {
        return Err(HelloRefusal::IdentityMismatch {
            certificate: certificate_dc.clone(),
            hello: hello_dc.clone(),
        });
    }
    if hello_dc == local {
        return Err(HelloRefusal::SelfConnection(hello_dc.clone()));
    }
    if !topology.dc(hello_dc).is_some_and(|d| d.active) {
        return Err(HelloRefusal::UnknownDc(hello_dc.clone()));
    }
    if fingerprint != topology.fingerprint() {
        return Err(HelloRefusal::FingerprintMismatch { ours: topology.fingerprint(), theirs: fingerprint });
    }
    let lost: VersionVector = acked
        .iter()
        .filter(|(dc, seq)| peer_seen.get(dc) < *seq)
        .map(|(dc, seq)| (dc.clone(), seq))
        .collect();
    Ok(HelloAccepted { resume_from: peer_seen.clone(), regressed: (!lost.is_empty()).then_some(lost) })
}
