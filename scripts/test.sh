#!/usr/bin/env bash
# Runs roost's whole test suite: what README tells a newcomer and what CI runs.
#
# 1. Installs the third-party clients the tests drive (mosquitto-clients,
#    paho-mqtt, MQTT.js, chromium) when they are missing and this machine can
#    (scripts/install-test-deps.sh).
# 2. Runs every Rust test: unit, property, in-process scenarios, integration
#    tests on real sockets, the conformance suite against each runtime, the
#    fuzz corpus replay, and doc tests.
# 3. Runs the third-party client and browser tests (tests/clients/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/install-test-deps.sh ]; then
    scripts/install-test-deps.sh
fi
cargo test --workspace
if [ -x tests/clients/run.sh ]; then
    tests/clients/run.sh
fi
