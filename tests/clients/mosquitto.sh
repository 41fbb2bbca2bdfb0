#!/usr/bin/env bash
# mosquitto_pub / mosquitto_sub against a running roost.
# Env: ROOST_TCP_PORT, ROOST_TLS_PORT (optional), ROOST_CA (optional), RUN_ID.
# Prints one "ok - NAME" or "not ok - NAME: why" line per check.
set -uo pipefail
H=127.0.0.1
P=$ROOST_TCP_PORT
T=roost/$RUN_ID/mosq
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

ok() { echo "ok - $1"; }
fail() { echo "not ok - $1: $2"; }

# Waits (bounded) until FILE contains PATTERN.
wait_for() {
    local file=$1 pattern=$2 secs=${3:-10} i
    for ((i = 0; i < secs * 20; i++)); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# A subscriber in the background whose -d output tells when its SUBACK came
# back, so the publish that follows cannot race the subscription.
# Usage: start_sub OUTFILE mosquitto_sub-args...; leaves its pid in $sub_pid.
start_sub() {
    local out=$1
    shift
    # No `timeout` wrapper: $! must be mosquitto_sub itself, so SIGKILL hits it.
    # stdbuf: with stdout in a file, -d lines would sit in stdio buffers.
    stdbuf -oL mosquitto_sub -h $H -d "$@" >"$out" 2>&1 &
    sub_pid=$!
    # Out of the job table, so killing the will victim prints no "Killed".
    disown "$sub_pid"
    pids+=("$sub_pid")
    wait_for "$out" "received SUBACK" 10
}

# Waits for a background subscriber to finish (it exits after -C messages).
finish_sub() {
    local pid=$1 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null
    return 1
}

# QoS 0/1/2: the subscriber (granted QoS 2) must see the message at the
# publisher's QoS, and both sides must have run the whole acknowledgement flow.
for q in 0 1 2; do
    name="mosquitto qos$q publish/receive"
    if ! start_sub "$work/sub$q" -p "$P" -q 2 -t "$T/qos$q" -C 1 -W 15 -F 'MSG %q %r %t %p'; then
        fail "$name" "no SUBACK"; continue
    fi
    pub_out=$(timeout 15 mosquitto_pub -h $H -p "$P" -d -q "$q" -t "$T/qos$q" -m "payload-$q" 2>&1)
    finish_sub "$sub_pid"
    got=$(grep '^MSG' "$work/sub$q")
    why=""
    [ "$got" = "MSG $q 0 $T/qos$q payload-$q" ] || why="subscriber got '$got'"
    case $q in
    1) grep -q "received PUBACK" <<<"$pub_out" || why+=" publisher saw no PUBACK"
       grep -q "sending PUBACK" "$work/sub$q" || why+=" subscriber sent no PUBACK" ;;
    2) for s in "received PUBREC" "sending PUBREL" "received PUBCOMP"; do
           grep -q "$s" <<<"$pub_out" || why+=" publisher: missing '$s'"
       done
       for s in "sending PUBREC" "received PUBREL" "sending PUBCOMP"; do
           grep -q "$s" "$work/sub$q" || why+=" subscriber: missing '$s'"
       done ;;
    esac
    [ -z "$why" ] && ok "$name" || fail "$name" "$why"
done

# Retained: a subscriber that arrives later gets the message flagged retained;
# an empty retained publish clears it.
name="mosquitto retained to a later subscriber"
timeout 10 mosquitto_pub -h $H -p "$P" -q 1 -r -t "$T/retained" -m kept
got=$(timeout 15 mosquitto_sub -h $H -p "$P" -t "$T/retained" -C 1 -W 10 -F '%r %t %p' 2>&1)
[ "$got" = "1 $T/retained kept" ] && ok "$name" || fail "$name" "got '$got'"

name="mosquitto retained cleared by empty retained publish"
timeout 10 mosquitto_pub -h $H -p "$P" -q 1 -r -t "$T/retained" -n
# -W makes mosquitto_sub give up after 2 s; a cleared topic prints nothing.
got=$(timeout 10 mosquitto_sub -h $H -p "$P" -t "$T/retained" -C 1 -W 2 -F '%r %t %p' 2>/dev/null)
[ -z "$got" ] && ok "$name" || fail "$name" "still got '$got'"

# Will: SIGKILL leaves the broker with a socket that closed without
# DISCONNECT, so the will must be published.
name="mosquitto will after SIGKILL"
if start_sub "$work/will-watch" -p "$P" -q 1 -t "$T/will" -C 1 -W 15 -F 'MSG %q %t %p'; then
    watcher=$sub_pid
    if start_sub "$work/victim" -p "$P" -i "victim-$RUN_ID" -t "$T/victim-idle" \
        --will-topic "$T/will" --will-payload "victim gone" --will-qos 1; then
        kill -9 "$sub_pid"
        finish_sub "$watcher"
        got=$(grep '^MSG' "$work/will-watch")
        [ "$got" = "MSG 1 $T/will victim gone" ] && ok "$name" || fail "$name" "watcher got '$got'"
    else
        fail "$name" "victim never subscribed"
    fi
else
    fail "$name" "watcher never subscribed"
fi

# MQTT 5 user property travels from publisher to subscriber unchanged.
name="mosquitto mqttv5 user property"
if start_sub "$work/v5" -V mqttv5 -p "$P" -q 1 -t "$T/v5" -C 1 -W 15 -F 'MSG %q %t %p [%P]'; then
    timeout 10 mosquitto_pub -h $H -p "$P" -V mqttv5 -q 1 -t "$T/v5" -m five \
        -D publish user-property colour blue
    finish_sub "$sub_pid"
    got=$(grep '^MSG' "$work/v5")
    [ "$got" = "MSG 1 $T/v5 five [colour:blue]" ] && ok "$name" || fail "$name" "got '$got'"
else
    fail "$name" "no SUBACK"
fi

# TLS listener with the run's self-signed certificate.
if [ -n "${ROOST_TLS_PORT:-}" ]; then
    name="mosquitto tls qos1 round trip"
    if start_sub "$work/tls" -p "$ROOST_TLS_PORT" --cafile "$ROOST_CA" -q 1 -t "$T/tls" -C 1 -W 15 -F 'MSG %q %t %p'; then
        timeout 10 mosquitto_pub -h $H -p "$ROOST_TLS_PORT" --cafile "$ROOST_CA" -q 1 -t "$T/tls" -m secret
        finish_sub "$sub_pid"
        got=$(grep '^MSG' "$work/tls")
        [ "$got" = "MSG 1 $T/tls secret" ] && ok "$name" || fail "$name" "got '$got'"
    else
        fail "$name" "no SUBACK over TLS: $(tail -3 "$work/tls")"
    fi
fi
