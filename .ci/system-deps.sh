#!/bin/sh
# Install the system packages the device-agent tests need (sshd for emulated targets,
# the adb client for the emu-android stand-in). Idempotent and quiet; run as root.
set -eu

need=""
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
command -v adb >/dev/null 2>&1 || need="$need adb"

[ -z "$need" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "system-deps: need root to install:$need" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# shellcheck disable=SC2086
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $need; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
# The package may start a system sshd on port 22; the emulated targets run their own.
if command -v service >/dev/null 2>&1; then
    service ssh stop >/dev/null 2>&1 || true
fi
