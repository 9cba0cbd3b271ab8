//! The Hello check refuses links that would let DCs diverge or impersonate one another, and
//! flags a peer that lost acknowledged data.

use mesh_core::{builtin_resolvers, DcId, Topology, VersionVector};
use mesh_engine::hello::{check_hello, HelloAccepted, HelloRefusal};

fn dc(s: &str) -> DcId {
    DcId::new(s).unwrap()
}

fn topology(text: &str) -> Topology {
    Topology::new(toml::from_str(text).unwrap(), &builtin_resolvers()).unwrap()
}

const MESH_TOML: &str = include_str!("../../../mesh.toml");

#[test]
fn a_matching_hello_opens_the_link_and_resumes_from_the_peers_seen() {
    let t = topology(MESH_TOML);
    let seen: VersionVector = [(dc("us-east"), 9)].into_iter().collect();
    let acked: VersionVector = [(dc("us-east"), 7)].into_iter().collect();
    let got = check_hello(&t, &dc("us-east"), &dc("us-west"), &dc("us-west"), t.fingerprint(), &seen, &acked);
    assert_eq!(got, Ok(HelloAccepted { resume_from: seen, regressed: None }));
}

#[test]
fn a_peer_that_lost_acknowledged_ops_is_flagged_but_served() {
    let t = topology(MESH_TOML);
    let seen: VersionVector = [(dc("us-east"), 3)].into_iter().collect();
    let acked: VersionVector = [(dc("us-east"), 7), (dc("eu-central"), 2)].into_iter().collect();
    let got = check_hello(&t, &dc("us-east"), &dc("us-west"), &dc("us-west"), t.fingerprint(), &seen, &acked)
        .unwrap();
    assert_eq!(got.resume_from, seen);
    assert_eq!(got.regressed, Some(acked));
}

#[test]
fn impersonation_strangers_self_links_and_other_rules_are_refused() {
    let t = topology(MESH_TOML);
    let none = VersionVector::new();
    let check = |cert: &str, hello: &str, fp: u64| {
        check_hello(&t, &dc("us-east"), &dc(cert), &dc(hello), fp, &none, &none)
    };
    let fp = t.fingerprint();
    assert_eq!(
        check("us-west", "eu-central", fp),
        Err(HelloRefusal::IdentityMismatch { certificate: dc("us-west"), hello: dc("eu-central") })
    );
    assert_eq!(check("ap-south", "ap-south", fp), Err(HelloRefusal::UnknownDc(dc("ap-south"))));
    assert_eq!(check("us-east", "us-east", fp), Err(HelloRefusal::SelfConnection(dc("us-east"))));
    let other = topology(&MESH_TOML.replacen("strategy = \"lww\"", "strategy = \"priority\"", 1));
    assert_eq!(
        check("us-west", "us-west", other.fingerprint()),
        Err(HelloRefusal::FingerprintMismatch { ours: fp, theirs: other.fingerprint() })
    );
    let inactive = topology(&MESH_TOML.replacen("id = \"us-west\"", "id = \"us-west\"\nactive = false", 1));
    let got = check_hello(
        &inactive,
        &dc("us-east"),
        &dc("us-west"),
        &dc("us-west"),
        inactive.fingerprint(),
        &none,
        &none,
    );
    assert_eq!(got, Err(HelloRefusal::UnknownDc(dc("us-west"))), "an inactive DC is not dialled or served");
}
