//! Clusters (`roost_conformance::cluster`) against the `roost-smol` binary:
//! real nats-server processes and roost nodes on loopback; routing at QoS
//! 0/1/2 with escaped topics, takeover, retained messages, wills, shared
//! subscriptions, ACLs on forwarded messages, a NATS server killed.

roost_conformance::cluster_tests!(env!("CARGO_BIN_EXE_roost-smol"));
