//! The black-box conformance suite (`roost-conformance`) against roost-smol.

mod common;

#[test]
fn conformance_suite_passes() {
    let server = roost_smol::start(common::paho_config(), roost_smol::Hooks::default())
        .expect("broker starts");
    let addr = server.local_addrs()[0];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failed = runtime.block_on(common::conformance(addr));
    smol::block_on(server.shutdown());
    assert_eq!(failed, 0, "conformance failures (listed above)");
}
