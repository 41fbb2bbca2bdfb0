#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (run as root): the
# third-party clients and browser of tests/clients, Mosquitto (a bridge peer)
# and nats-server (cluster nodes).
# Idempotent and quick when everything is already there: each step first
# checks for what it would install. Never downloads a browser build: the
# tests drive Debian's /usr/bin/chromium through playwright-core.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_missing=()
command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null || apt_missing+=(mosquitto-clients)
# mosquitto_passwd (Mosquitto password files, for the migration test)
command -v mosquitto_passwd >/dev/null || apt_missing+=(mosquitto)
# The broker itself: the bridge tests' remote, and the reference run.
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_missing+=(mosquitto)
# The cluster tests' NATS servers (JetStream).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_missing+=(nats-server)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
command -v openssl >/dev/null || apt_missing+=(openssl)
command -v node >/dev/null || apt_missing+=(nodejs)
command -v npm >/dev/null || apt_missing+=(npm)
python3 -m pip --version >/dev/null 2>&1 || apt_missing+=(python3-pip)
# Without any font the screenshot shows boxes instead of text.
fc-list 2>/dev/null | grep -q . || apt_missing+=(fonts-dejavu-core)
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "install-test-deps: apt-get install ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# Debian's python3-paho-mqtt is 1.x; the tests use the 2.x callback API.
if ! python3 -c 'import sys, paho.mqtt; sys.exit(paho.mqtt.__version__.split(".")[0] != "2")' 2>/dev/null; then
    echo "install-test-deps: pip install paho-mqtt 2.x"
    # Debian's own python refuses pip installs unless told; other pythons
    # ignore the variable.
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'paho-mqtt>=2,<3'
fi

# npm ci is slow even when nothing changed, so remember which lock file
# node_modules was made from.
clients=tests/clients
stamp="$clients/node_modules/.roost-lock-sha256"
want=$(sha256sum "$clients/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "install-test-deps: npm ci in $clients"
    (cd "$clients" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi
echo "install-test-deps: ready"
