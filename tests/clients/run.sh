#!/usr/bin/env bash
# Third-party MQTT clients and a real browser against a freshly built roost.
# Needs scripts/install-test-deps.sh to have run. Prints "N passed, M failed"
# last and exits non-zero when anything failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

cargo build -q -p roost-tokio || { echo "0 passed, 1 failed"; exit 1; }
roost="${CARGO_TARGET_DIR:-$root/target}/debug/roost"

work=$(mktemp -d /tmp/roost-clients.XXXXXX)
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$broker_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free ports: the kernel picks them, we release them and hand them to roost.
read -r tcp ws tls wss < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

# A throwaway CA-less self-signed certificate; clients trust it directly.
tls_ok=0
if timeout 20 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 1 -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$work/server.key" -out "$work/server.crt" 2>"$work/openssl.log"; then
    tls_ok=1
fi

{
    printf '[[listener]]\nprotocol = "tcp"\nbind = "127.0.0.1:%s"\nallow_anonymous = true\n\n' "$tcp"
    printf '[[listener]]\nprotocol = "ws"\nbind = "127.0.0.1:%s"\nws_path = "/mqtt"\nallow_anonymous = true\n\n' "$ws"
    if [ $tls_ok = 1 ]; then
        for l in "tls $tls" "wss $wss"; do
            set -- $l
            printf '[[listener]]\nprotocol = "%s"\nbind = "127.0.0.1:%s"\ncert = "%s"\nkey = "%s"\nallow_anonymous = true\n\n' \
                "$1" "$2" "$work/server.crt" "$work/server.key"
        done
    fi
    printf '[sys]\ninterval_secs = 0\n'
} >"$work/roost.toml"

"$roost" -c "$work/roost.toml" >"$work/roost.log" 2>&1 &
broker_pid=$!

# Ready once every listener accepts a connection (bounded).
ports="$tcp $ws"
[ $tls_ok = 1 ] && ports+=" $tls $wss"
ready=0
for _ in $(seq 100); do
    if python3 - $ports <<'PY' 2>/dev/null; then ready=1; break; fi
import socket, sys
for p in sys.argv[1:]:
    socket.create_connection(("127.0.0.1", int(p)), timeout=1).close()
PY
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
done
if [ $ready != 1 ]; then
    echo "roost did not start:"; cat "$work/roost.log"
    echo "0 passed, 1 failed"
    exit 1
fi

export ROOST_TCP_PORT=$tcp ROOST_WS_PORT=$ws RUN_ID=$$-$RANDOM
if [ $tls_ok = 1 ]; then
    export ROOST_TLS_PORT=$tls ROOST_WSS_PORT=$wss ROOST_CA=$work/server.crt
fi
export ROOST_ARTIFACTS=$root/target/test-artifacts
mkdir -p "$ROOST_ARTIFACTS"

passed=0
failed=0
# Each suite prints "ok - NAME" / "not ok - NAME: why"; a suite that dies or
# hangs counts as one more failure.
run_suite() {
    local name=$1
    shift
    echo "== $name"
    local out="$work/$name.out" rc
    (cd "$here" && timeout 180 "$@") >"$out" 2>&1
    rc=$?
    cat "$out"
    local p f
    p=$(grep -c '^ok - ' "$out")
    f=$(grep -c '^not ok - ' "$out")
    passed=$((passed + p))
    failed=$((failed + f))
    if [ $rc != 0 ] && [ "$f" = 0 ]; then
        echo "not ok - $name suite exited with status $rc"
        failed=$((failed + 1))
    fi
}

run_suite mosquitto bash ./mosquitto.sh
run_suite paho python3 ./paho_test.py
run_suite mqttjs node ./mqttjs_test.mjs
run_suite ws-raw python3 ./ws_raw_test.py
run_suite browser node ./browser_test.mjs

echo "== roost"
# Every client above misbehaved on purpose at least once (SIGKILL, dropped
# sockets); the broker must have survived all of it and still stop cleanly.
if kill -0 "$broker_pid" 2>/dev/null; then
    echo "ok - roost still running after the clients"
    passed=$((passed + 1))
    kill -TERM "$broker_pid"
    stopped=0
    for _ in $(seq 100); do
        kill -0 "$broker_pid" 2>/dev/null || { stopped=1; break; }
        sleep 0.1
    done
    if [ $stopped = 1 ] && wait "$broker_pid"; then
        echo "ok - roost exits 0 within 10 s of SIGTERM"
        passed=$((passed + 1))
        broker_pid=""
    else
        echo "not ok - roost exits 0 within 10 s of SIGTERM"
        failed=$((failed + 1))
    fi
else
    echo "not ok - roost still running after the clients"
    failed=$((failed + 1))
fi
if [ $failed != 0 ]; then
    echo "== roost log (last 40 lines)"
    tail -40 "$work/roost.log"
fi
echo "$passed passed, $failed failed"
[ $failed = 0 ]
