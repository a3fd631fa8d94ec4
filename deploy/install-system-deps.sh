#!/usr/bin/env bash
# System tools the tests use: sipp (sip-tester), tshark, prometheus + promtool, alertmanager + amtool.
# Installed with apt when missing and apt is usable (root); otherwise the tests that need them skip
# with a visible reason.
set -u
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not available; missing: ${need[*]} (tests needing them will skip)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install-system-deps: not root and no sudo; missing: ${need[*]} (tests needing them will skip)" >&2
        exit 0
    fi
fi
echo "install-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || echo "install-system-deps: apt-get install ${need[*]} failed (tests needing them will skip)" >&2
exit 0
