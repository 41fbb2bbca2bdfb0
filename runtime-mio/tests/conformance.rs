//! The black-box conformance suite (`roost-conformance`) against roost-mio.

#[path = "../../runtime-smol/tests/common/mod.rs"]
mod common;

#[test]
fn conformance_suite_passes() {
    let mut server = roost_mio::Server::bind(common::paho_config()).expect("broker starts");
    let addr = server.local_addrs()[0];
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || server.run().expect("server runs"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failed = runtime.block_on(common::conformance(addr));
    stopper.stop();
    thread.join().unwrap();
    assert_eq!(failed, 0, "conformance failures (listed above)");
}
