//! QUIC with mutual TLS on loopback: DCs holding certificates of the mesh CA connect and learn
//! each other's DC from the certificate; a certificate of another CA, or one naming another DC
//! than the one dialed, is refused.

use mesh_core::{DcId, VersionVector};
use mesh_node::tls::{self, Material, Pem};
use mesh_node::transport::{self, LinkError};
use mesh_wire::{CodecConfig, Hello, Message, PROTOCOL_VERSION};
use std::net::SocketAddr;
use std::path::Path;

fn dc(s: &str) -> DcId {
    DcId::new(s).unwrap()
}

fn material(ca: &Pem, cert: &Pem) -> Material {
    let p = Path::new("mem");
    Material::from_pem(&ca.cert, cert, &[p, p, p]).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn hello(from: &str) -> Message {
    Message::Hello(Hello {
        dc: dc(from),
        protocol_version: PROTOCOL_VERSION,
        topology_fingerprint: 7,
        seen: VersionVector::new(),
    })
}

#[tokio::test]
async fn dcs_of_one_ca_connect_and_know_each_other_from_their_certificates() {
    let ca = tls::generate_ca().unwrap();
    let a = transport::endpoint(loopback(), &material(&ca, &tls::issue(&ca, &dc("a")).unwrap())).unwrap();
    let b = transport::endpoint(loopback(), &material(&ca, &tls::issue(&ca, &dc("b")).unwrap())).unwrap();
    let codec = CodecConfig::default();
    let b_addr = b.local_addr().unwrap();
    let candidates = [dc("a"), dc("b"), dc("c")];
    let accept = tokio::spawn({
        let b = b.clone();
        let codec = codec.clone();
        async move {
            let incoming = b.accept().await.unwrap();
            transport::accept(incoming, candidates.iter(), &codec).await
        }
    });
    let mut dialed = transport::dial(&a, b_addr, &dc("b"), &codec).await.unwrap();
    assert_eq!(dialed.peer, dc("b"));
    dialed.writer.send(&hello("a")).await.unwrap();
    let mut accepted = accept.await.unwrap().unwrap();
    assert_eq!(accepted.peer, dc("a"), "the accepting side learns the DC from the client certificate");
    assert_eq!(accepted.reader.next().await.unwrap(), Some(hello("a")));
    accepted.writer.send(&hello("b")).await.unwrap();
    assert_eq!(dialed.reader.next().await.unwrap(), Some(hello("b")));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = tls::generate_ca().unwrap();
    let rogue_ca = tls::generate_ca().unwrap();
    // The dialer's certificate is from another CA, but it trusts the mesh CA.
    let rogue = material(&ca, &tls::issue(&rogue_ca, &dc("a")).unwrap());
    let a = transport::endpoint(loopback(), &rogue).unwrap();
    let b = transport::endpoint(loopback(), &material(&ca, &tls::issue(&ca, &dc("b")).unwrap())).unwrap();
    let codec = CodecConfig::default();
    let b_addr = b.local_addr().unwrap();
    let accept = tokio::spawn({
        let b = b.clone();
        let codec = codec.clone();
        async move {
            let incoming = b.accept().await.unwrap();
            transport::accept(incoming, [dc("a"), dc("b")].iter(), &codec).await
        }
    });
    let dialed = async {
        let mut link = transport::dial(&a, b_addr, &dc("b"), &codec).await?;
        link.writer.send(&hello("a")).await?;
        link.reader.next().await
    };
    let dialed = tokio::time::timeout(std::time::Duration::from_secs(10), dialed).await.expect("no hang");
    assert!(dialed.is_err(), "the rogue client got through: {dialed:?}");
    let accepted =
        tokio::time::timeout(std::time::Duration::from_secs(10), accept).await.expect("no hang").unwrap();
    assert!(accepted.is_err(), "the server accepted a certificate of another CA");
}

#[tokio::test]
async fn a_server_whose_certificate_names_another_dc_is_refused() {
    let ca = tls::generate_ca().unwrap();
    let a = transport::endpoint(loopback(), &material(&ca, &tls::issue(&ca, &dc("a")).unwrap())).unwrap();
    // Whoever listens at this address holds c's certificate; a dials it as b.
    let c = transport::endpoint(loopback(), &material(&ca, &tls::issue(&ca, &dc("c")).unwrap())).unwrap();
    let c_addr = c.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        if let Some(incoming) = c.accept().await {
            let _ = incoming.await;
        }
    });
    let result = transport::dial(&a, c_addr, &dc("b"), &CodecConfig::default()).await;
    assert!(matches!(result, Err(LinkError::Connection(_))), "{result:?}");
}
