#!/usr/bin/env bash
# Runs every roost-bench scenario against every broker that exists here, in
# alternation (A B A B ...), and writes the medians into BENCHMARKS.md.
#
#   scripts/bench.sh [--quick] [--rounds N] [--no-write] [--sink] [--http] [--cluster]
#
# --sink adds roost-bench's own trivial forwarding sink as a "broker": its
# column is the load generator's ceiling on this machine, not a competitor.
#
# --http adds "roost-http": target/release/roost with the [http] endpoint on
# (port + 1) and /metrics scraped every second during each run, beside the
# plain "roost" column: the cost of metrics is the difference.
#
# --cluster adds two clustered rooms (nats-server must be installed):
# "roost-1node", target/release/roost with [cluster] on one nats-server,
# publishers and subscribers on it (the cost of being a cluster node), and
# "roost-2nodes", two such nodes with the publishers on the first and the
# subscribers on the second (--sub-port): every message crosses NATS. They
# run the fan-in, fan-out and latency scenarios only; their CPU column is
# the first node's (the publishers').
#
# Brokers: Mosquitto (Debian's `mosquitto`), and roost's binaries
# target/release/roost, roost-smol, roost-mio once they exist and start. A
# broker that is missing or does not open its port is skipped with a note;
# its columns stay blank. Every broker is started fresh for every run, on
# 127.0.0.1 only, so memory numbers start from a clean process.
#
# Every run is bounded: roost-bench's own --deadline, and `timeout` around it.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
ROUNDS=3
WRITE=1
SINK=0
HTTP=0
CLUSTER=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS="$2"; shift ;;
        --no-write) WRITE=0 ;;
        --sink) SINK=1 ;;
        --http) HTTP=1 ;;
        --cluster) CLUSTER=1 ;;
        *) echo "usage: $0 [--quick] [--rounds N] [--no-write] [--sink] [--http] [--cluster]" >&2; exit 2 ;;
    esac
    shift
done

cargo build --release -p roost-conformance --bin roost-bench
BENCH="$PWD/target/release/roost-bench"
WORK="$(mktemp -d /tmp/roost-bench.XXXXXX)"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
PORT=28830

# Idle-connection scenarios need one descriptor per client on both sides;
# brokers started from here inherit this.
ulimit -n "$(ulimit -Hn)"

# name|scenario arguments. Sizes differ between --quick (a smoke run of a
# few minutes) and the full run (the sizes the load generator defaults to).
if [ "$QUICK" = 1 ]; then
    DEADLINE=120
    SCENARIOS=(
        "fanin-q0|fanin --publishers 4 --qos 0 --duration 2"
        "fanin-q1|fanin --publishers 4 --qos 1 --duration 2"
        "fanin-q2|fanin --publishers 4 --qos 2 --duration 2"
        "fanout|fanout --subscribers 100 --qos 0 --duration 2"
        "fanout-q1|fanout --subscribers 100 --qos 1 --duration 2"
        "pairs|pairs --clients 100 --qos 1 --count 500"
        "latency|latency --rate 10000 --qos 0 --duration 3"
        "latency-q1|latency --rate 10000 --qos 1 --duration 3"
        "conns|conns --connections 2000"
        "conns|conns --connections 2000"
        "conns|conns --connections 2000"
        "conns-spread|conns --connections 4000 --processes 2"
        "retained|retained --messages 100000"
        "subs|subs --subscriptions 100000 --sub-connections 100 --duration 2"
    )
else
    DEADLINE=600
    SCENARIOS=(
        "fanin-q0|fanin --publishers 4 --qos 0 --duration 5"
        "fanin-q1|fanin --publishers 4 --qos 1 --duration 5"
        "fanin-q2|fanin --publishers 4 --qos 2 --duration 5"
        "fanout|fanout --subscribers 100 --qos 0 --duration 5"
        "fanout-q1|fanout --subscribers 100 --qos 1 --duration 5"
        "pairs|pairs --clients 1000 --qos 1 --count 200"
        "latency|latency --rate 10000 --qos 0 --duration 5"
        "latency-q1|latency --rate 10000 --qos 1 --duration 5"
        # Three runs per round: one takes well under a second, and its rate
        # swings ±20 % from run to run on this machine.
        "conns|conns --connections 10000"
        "conns|conns --connections 10000"
        "conns|conns --connections 10000"
        "conns-20k|conns --connections 19900 --processes 2"
        "retained|retained --messages 1000000"
        "subs|subs --subscriptions 1000000 --sub-connections 1000 --duration 5"
    )
fi

# --- brokers -----------------------------------------------------------------

BROKERS=()
declare -A NOTES
if command -v mosquitto > /dev/null; then
    BROKERS+=(mosquitto)
else
    NOTES[mosquitto]="not installed (apt-get install -y mosquitto)"
fi
for b in roost roost-smol roost-mio; do
    if [ -x "target/release/$b" ]; then
        BROKERS+=("$b")
        # The tokio runtime once more with its disk store (fjall, fsync'd
        # group commit): the cost of durability.
        [ "$b" = roost ] && BROKERS+=(roost-fjall)
        [ "$b" = roost ] && [ "$HTTP" = 1 ] && BROKERS+=(roost-http)
    else
        pkg=roost-tokio
        [ "$b" != roost ] && pkg="$b"
        NOTES[$b]="target/release/$b missing (cargo build --release -p $pkg); skipped, no numbers"
    fi
done
[ "$SINK" = 1 ] && BROKERS+=(sink)
if [ "$CLUSTER" = 1 ]; then
    if command -v nats-server > /dev/null && [ -x target/release/roost ]; then
        BROKERS+=(roost-1node roost-2nodes)
    else
        NOTES[roost-1node]="needs nats-server and target/release/roost; skipped, no numbers"
    fi
fi

mosquitto_conf() {
    # Limits chosen so Mosquitto never drops or throttles what the test sends:
    # unlimited in-flight and queued messages (0 = no maximum in 2.0), no
    # persistence, Nagle off (roost-bench batches its own writes).
    cat > "$WORK/mosquitto-$1.conf" <<EOF
listener $1 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 0
max_queued_bytes 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
    echo "$WORK/mosquitto-$1.conf"
}

BROKER_PID=
SCRAPER_PID=
CLUSTER_PIDS=()
EXTRA_ARGS=""

cluster_conf() { # name port nats-port
    { cat scripts/bench-roost.toml
      printf '\n[cluster]\nurls = ["nats://127.0.0.1:%s"]\nnode = "%s"\nretained = "local"\n' "$3" "$1"
    } > "$WORK/$1.toml"
    echo "$WORK/$1.toml"
}

# The ports of a cluster run: the first node on $1, the second on $1 + 1,
# nats-server on $1 + 2.
start_cluster() { # name port
    local name="$1" port="$2" nats=$(($2 + 2))
    nats-server -a 127.0.0.1 -p "$nats" > "$WORK/$name-nats.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    for _ in $(seq 100); do (exec 3<> "/dev/tcp/127.0.0.1/$nats") 2> /dev/null && break; sleep 0.05; done
    if [ "$name" = roost-2nodes ]; then
        target/release/roost -c "$(cluster_conf b "$port" "$nats")" --port $((port + 1)) > "$WORK/$name-b.log" 2>&1 &
        CLUSTER_PIDS+=($!)
        EXTRA_ARGS="--sub-port $((port + 1)) --settle 1"
    else
        EXTRA_ARGS="--settle 1"
    fi
    target/release/roost -c "$(cluster_conf a "$port" "$nats")" --port "$port" > "$WORK/$name.log" 2>&1 &
    BROKER_PID=$!
}
start_broker() { # name port
    local name="$1" port="$2"
    case "$name" in
        mosquitto) mosquitto -c "$(mosquitto_conf "$port")" > "$WORK/$name.log" 2>&1 & ;;
        roost-fjall)
            rm -rf "$WORK/fjall-data"
            target/release/roost -c "$PWD/scripts/bench-roost.toml" --port "$port" \
                --data-dir "$WORK/fjall-data" > "$WORK/$name.log" 2>&1 & ;;
        roost-http)
            { cat scripts/bench-roost.toml; printf '\n[http]\nbind = "127.0.0.1:%s"\n' $((port + 1)); } \
                > "$WORK/roost-http.toml"
            target/release/roost -c "$WORK/roost-http.toml" --port "$port" > "$WORK/$name.log" 2>&1 &
            BROKER_PID=$!
            # A scraper as Prometheus would be, only more often.
            ( while sleep 1; do
                { exec 3<> "/dev/tcp/127.0.0.1/$((port + 1))" \
                    && printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3 \
                    && cat <&3 > /dev/null; } 2> /dev/null || true
              done ) &
            SCRAPER_PID=$! ;;
        roost-1node|roost-2nodes) start_cluster "$name" "$port" ;;
        roost*) "target/release/$name" -c "$PWD/scripts/bench-roost.toml" --port "$port" > "$WORK/$name.log" 2>&1 & ;;
        sink) "$BENCH" sink --port "$port" --deadline $((DEADLINE + 60)) > "$WORK/$name.log" 2>&1 & ;;
    esac
    case "$name" in roost-http|roost-1node|roost-2nodes) ;; *) BROKER_PID=$! ;; esac
    for _ in $(seq 100); do
        if ! kill -0 "$BROKER_PID" 2> /dev/null; then
            return 1
        fi
        if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
            return 0
        fi
        sleep 0.05
    done
    stop_broker
    return 1
}

stop_broker() {
    if [ -n "$SCRAPER_PID" ]; then
        kill "$SCRAPER_PID" 2> /dev/null || true
        wait "$SCRAPER_PID" 2> /dev/null || true
        SCRAPER_PID=
    fi
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2> /dev/null || true
        wait "$BROKER_PID" 2> /dev/null || true
        BROKER_PID=
    fi
    for pid in "${CLUSTER_PIDS[@]}"; do
        kill "$pid" 2> /dev/null || true
        wait "$pid" 2> /dev/null || true
    done
    CLUSTER_PIDS=()
    EXTRA_ARGS=""
}
trap stop_broker EXIT

# --- runs --------------------------------------------------------------------

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
declare -A DEAD
for round in $(seq "$ROUNDS"); do
    for entry in "${SCENARIOS[@]}"; do
        key="${entry%%|*}"
        args="${entry#*|}"
        for broker in "${BROKERS[@]}"; do
            [ -n "${DEAD[$broker]:-}" ] && continue
            # The sink keeps no retained messages: the scenario would only wait out its deadline.
            [ "$broker" = sink ] && [ "$key" = retained ] && continue
            # Clusters: the message-flow scenarios only.
            case "$broker" in
                roost-1node|roost-2nodes)
                    case "$key" in fanin*|fanout*|latency*) ;; *) continue ;; esac ;;
            esac
            PORT=$((PORT + 3))
            if ! start_broker "$broker" "$PORT"; then
                NOTES[$broker]="did not start (see its log); skipped, no numbers"
                DEAD[$broker]=1
                echo "== $broker did not start; skipping it" >&2
                continue
            fi
            echo "== round $round $key $broker" >&2
            # shellcheck disable=SC2086 # $args is a word list on purpose
            # shellcheck disable=SC2086 # $EXTRA_ARGS too
            if out="$(timeout $((DEADLINE + 30)) "$BENCH" $args $EXTRA_ARGS --port "$PORT" \
                --broker-pid "$BROKER_PID" --label "$broker" --deadline "$DEADLINE" --json)"; then
                echo "$out" | head -n -1 >&2
                echo "$out" | tail -n 1 |
                    python3 -c 'import json,sys; r=json.load(sys.stdin); r["key"]=sys.argv[1]; r["round"]=int(sys.argv[2]); print(json.dumps(r))' \
                        "$key" "$round" >> "$RESULTS"
            else
                echo "== $key against $broker failed" >&2
            fi
            stop_broker
        done
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- report ------------------------------------------------------------------

MOSQ_VERSION="$({ mosquitto -h 2> /dev/null || true; } | head -n 1)"
NOTES_TEXT=""
for b in mosquitto roost roost-smol roost-mio roost-1node; do
    if [ -n "${NOTES[$b]:-}" ]; then
        NOTES_TEXT+="- $b: ${NOTES[$b]}"$'\n'
    fi
done
COMMANDS=""
declare -A LISTED
for entry in "${SCENARIOS[@]}"; do
    [ -n "${LISTED[$entry]:-}" ] && continue
    LISTED[$entry]=1
    COMMANDS+="roost-bench ${entry#*|} --port PORT --broker-pid PID --label BROKER --deadline $DEADLINE --json"$'\n'
done

SECTION="$WORK/section.md"
MODE=full
[ "$QUICK" = 1 ] && MODE=quick
python3 - "$RESULTS" "$SECTION" "${BROKERS[@]}" <<'PY'
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# Mosquitto and every roost runtime always get a column (blank until measured).
brokers = [b for b in ["mosquitto", "roost", "roost-http", "roost-fjall", "roost-smol", "roost-mio", "roost-1node", "roost-2nodes", "sink"] if b in sys.argv[3:]]
# (label, how to read it from a report, which way is better)
metrics = {
    "conns": [("connections/s", lambda r: r["delivered_per_s"], "higher"),
              ("connect p99 (ms)", lambda r: r["latency"]["p99_us"] / 1e3, "lower"),
              ("broker bytes/connection", lambda r: r["extra"].get("bytes_per_conn"), "lower")],
    # Two generator processes (each under the 20,000-descriptor limit) hold
    # 19,900 connections at once; the broker, with the same limit, holds them all.
    "conns-20k": [("connections held at once", lambda r: r["extra"].get("connections_open"), "higher"),
                  ("broker bytes/connection", lambda r: r["extra"].get("bytes_per_conn"), "lower")],
    "conns-spread": [("connections held at once", lambda r: r["extra"].get("connections_open"), "higher"),
                     ("broker bytes/connection", lambda r: r["extra"].get("bytes_per_conn"), "lower")],
    "retained": [("store msgs/s", lambda r: r["extra"].get("store_msgs_per_s"), "higher"),
                 ("first retained (ms)", lambda r: r["extra"].get("first_ms"), "lower"),
                 ("last retained (ms)", lambda r: r["extra"].get("last_ms"), "lower"),
                 ("broker RSS (MiB)", lambda r: (r["broker_rss_kb"] or 0) / 1024, "lower")],
    "subs": [("subscribe/s", lambda r: r["extra"].get("subscribe_per_s"), "higher"),
             ("broker bytes/subscription", lambda r: r["extra"].get("bytes_per_sub"), "lower"),
             ("delivered msgs/s", lambda r: r["delivered_per_s"], "higher"),
             ("latency p99 (ms)", lambda r: r["latency"]["p99_us"] / 1e3, "lower")],
}
default = [("delivered msgs/s", lambda r: r["delivered_per_s"], "higher"),
           ("latency p50 (ms)", lambda r: r["latency"]["p50_us"] / 1e3, "lower"),
           ("latency p99 (ms)", lambda r: r["latency"]["p99_us"] / 1e3, "lower"),
           ("broker CPU µs/msg", lambda r: (r["broker_cpu_ns_per_msg"] or 0) / 1e3, "lower")]

by = defaultdict(list)
order = []
for r in rows:
    if r["key"] not in order:
        order.append(r["key"])
    by[(r["key"], r["label"])].append(r)

def med(key, broker, f):
    vals = [f(r) for r in by.get((key, broker), [])]
    vals = [v for v in vals if v is not None]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)

def fmt(v):
    if v is None:
        return ""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"

out = ["| scenario | metric | better | " + " | ".join(brokers) + " | roost / mosquitto |",
       "|---|---|---|" + "---|" * len(brokers) + "---|"]
issues = []
for key in order:
    for label, f, better in metrics.get(key, default):
        cells, base, roost = [], None, None
        for b in brokers:
            v, n = med(key, b, f)
            cells.append(fmt(v))
            if b == "mosquitto":
                base = v
            if b == "roost":
                roost = v
        ratio = f"{roost / base:.2f}" if roost is not None and base else ""
        out.append(f"| {key} | {label} | {better} | " + " | ".join(cells) + f" | {ratio} |")
    for b in brokers:
        for r in by.get((key, b), []):
            if r["partial"] or r["loss"] or r["duplicates"] or r["errors"]:
                issues.append(f"- {key} / {b} round {r['round']}: loss {r['loss']}, duplicates {r['duplicates']}"
                              + (", PARTIAL (deadline)" if r["partial"] else "")
                              + "".join(f"; {e}" for e in r["errors"]))
runs = defaultdict(int)
for r in rows:
    runs[r["label"]] += 1
text = "\n".join(out) + "\n\nRuns per broker: " + ", ".join(f"{b} {n}" for b, n in runs.items()) + "\n"
text += "\nLoss, duplicates, deadline hits and client errors:\n\n" + ("\n".join(issues) if issues else "- none") + "\n"
open(sys.argv[2], "w").write(text)
PY

{
    echo "<!-- bench:begin (written by scripts/bench.sh; edit outside these markers) -->"
    echo "## Results ($MODE run)"
    echo
    if [ ! -x target/release/roost ]; then
        echo "**Mosquitto-only reference numbers: roost does not run yet, so its columns are blank.**"
        echo
    fi
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) cores (\`nproc\`), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); load average before $LOAD_BEFORE, after $LOAD_AFTER"
    echo "- Mosquitto: $MOSQ_VERSION"
    echo "- rounds: $ROUNDS, brokers alternating within each scenario; every cell is the median over rounds (\`conns\` runs three times a round: the median of $((ROUNDS * 3)))"
    echo "- command: \`scripts/bench.sh $([ "$QUICK" = 1 ] && echo --quick) --rounds $ROUNDS\`"
    echo
    cat "$SECTION"
    if [ -n "$NOTES_TEXT" ]; then
        echo
        echo "Brokers not measured:"
        echo
        printf '%s' "$NOTES_TEXT"
    fi
    echo
    echo "Exact load-generator commands (PORT, PID, BROKER filled in per run):"
    echo
    echo '```'
    printf '%s' "$COMMANDS"
    echo '```'
    echo "<!-- bench:end -->"
} > "$WORK/block.md"

cat "$WORK/block.md"
if [ "$WRITE" = 1 ]; then
    python3 - BENCHMARKS.md "$WORK/block.md" <<'PY'
import os, re, sys
path, block = sys.argv[1], open(sys.argv[2]).read()
doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
pat = re.compile(r"<!-- bench:begin.*?<!-- bench:end -->\n?", re.S)
doc = pat.sub(lambda _: block, doc) if pat.search(doc) else doc.rstrip("\n") + "\n\n" + block
open(path, "w").write(doc)
PY
    echo "wrote BENCHMARKS.md (raw results: $RESULTS)" >&2
fi
