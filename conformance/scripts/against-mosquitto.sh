#!/usr/bin/env bash
# Runs the conformance suite against Debian's Mosquitto 2.0 configured by
# conformance/mosquitto-reference.conf, then stops that Mosquitto.
# Extra arguments go to roost-conformance (e.g. --version 5 --filter bad).
# Needs: apt-get install -y mosquitto
# Mosquitto is expected to fail the scenarios marked "[differs on Mosquitto]"
# in `roost-conformance --list`, so this script's exit status is the suite's.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=18931
# The plugin may rewrite its file; give it a scratch copy.
scratch=$(mktemp -d)
cp conformance/mosquitto-reference-dynsec.json "$scratch/dynsec.json"
# Mosquitto started as root drops to the `mosquitto` user, which must still
# read (and may rewrite) the plugin file.
chmod a+rwx "$scratch"
chmod a+rw "$scratch/dynsec.json"
sed "s#conformance/mosquitto-reference-dynsec.json#$scratch/dynsec.json#" \
    conformance/mosquitto-reference.conf > "$scratch/mosquitto.conf"
mosquitto -c "$scratch/mosquitto.conf" > "$scratch/mosquitto.log" 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true; rm -rf "$scratch"' EXIT
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
done
cargo run -q -p roost-conformance -- --port "$port" --max-packet-size 10000 "$@"
