//! Clusters (`roost_conformance::cluster`) against the `roost` binary:
//! real nats-server processes and roost nodes on loopback; routing at QoS
//! 0/1/2 with escaped topics, takeover, retained messages, wills, shared
//! subscriptions, ACLs on forwarded messages, a NATS server killed.

roost_conformance::cluster_tests!(env!("CARGO_BIN_EXE_roost"));

/// The cluster CI runs whole (three NATS servers, three nodes, every
/// feature in one run), on this runtime only: the checks above cover the
/// others.
#[test]
fn ci_topology() {
    roost_conformance::cluster::ci_topology(&roost_conformance::attacks::Binary::new(env!(
        "CARGO_BIN_EXE_roost"
    )));
}
