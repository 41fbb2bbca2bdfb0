#!/usr/bin/env bash
# Runs README's "From install to a TLS broker with client certificates"
# block as an operator would paste it (with the roost just built on PATH,
# a free port for 8883 and 127.0.0.1 for 0.0.0.0), then checks what it
# should show. Every wait is bounded; everything it started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p roost-tokio
bin=$PWD/target/debug
tmp=$(mktemp -d)
walk=""
cleanup() {
    # The block's own background jobs (roost, mosquitto_sub) share its
    # process group.
    [ -n "$walk" ] && kill -- "-$walk" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
awk '/^### From install to a TLS broker/ { f = 1 } f && /^```sh/ { g = 1; next } g && /^```/ { exit } g' README.md \
    | sed "s/8883/$port/g; s/0\.0\.0\.0/127.0.0.1/g" > "$tmp/walk.sh"
[ -s "$tmp/walk.sh" ] || { echo "README: walk-through block not found"; exit 1; }

cd "$tmp"
set -m
PATH="$bin:$PATH" bash -e walk.sh > out.txt 2> log.txt &
walk=$!
wait "$walk" || { echo "the block failed:"; cat log.txt; exit 1; }
set +m

fail() { echo "readme-walkthrough: $*"; echo "--- mosquitto_sub"; cat out.txt; echo "--- roost"; cat log.txt; exit 1; }
within() { # within SECONDS FILE TEXT
    for _ in $(seq $(( $1 * 10 ))); do grep -qF -- "$3" "$2" && return 0; sleep 0.1; done
    return 1
}
within 10 out.txt "devices/sensor-1/temp 21.5" || fail "the message did not reach mosquitto_sub"
within 10 log.txt "client connected client_id=" || fail "no connect line"
grep -F "client connected" log.txt | grep -qF "user=sensor-1" || fail "the certificate's CN is not the user"
within 10 log.txt "configuration file re-read" || fail "SIGHUP did not re-read the configuration"
within 10 log.txt "certificates, password and ACL files reloaded" || fail "SIGHUP did not reload the files"
if timeout 10 mosquitto_pub -h localhost -p "$port" --cafile ca.crt -t devices/sensor-1/temp -m 0 2>/dev/null; then
    fail "a client without a certificate was accepted"
fi
if grep -qE 'Some\(|Os \{|Error \{' log.txt; then fail "Rust debug output in the log"; fi
echo "README walk-through: message delivered, user=sensor-1, no certificate refused, SIGHUP reloaded"
