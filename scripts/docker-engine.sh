#!/usr/bin/env bash
# Make a Docker engine available on this machine, idempotently:
#  1. reuse a daemon that already answers (never kill one we did not start);
#  2. otherwise install Debian's engine when dockerd is missing and start it with the bridge disabled
#     (task containers use `host` or `none` networking; traffic stays on 127.0.0.1);
#  3. build debian:bookworm-slim locally with debootstrap when it is missing and cannot be pulled.
set -euo pipefail
PROGRESS_TAG=docker-engine
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
STATE_DIR=${EVALKIT_STATE_DIR:-$(evalkit_cache_dir)}
LOG="$STATE_DIR/dockerd.log"
BASE_IMAGE=${EVALKIT_BASE_IMAGE:-debian:bookworm-slim}
mkdir -p "$STATE_DIR"

ping() { curl -sf --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }

if ! command -v curl >/dev/null; then apt_install curl ca-certificates; fi

if ping; then
  say "engine already answers on $SOCK"
else
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io
  fi
  start_dockerd() {
    nohup dockerd --bridge=none --iptables=false >"$LOG" 2>&1 &
    echo $! >"$STATE_DIR/dockerd.pid"
    for _ in $(seq 1 120); do ping && break; sleep 0.5; done
    ping || { say "dockerd did not answer within 60 s; see $LOG"; tail -20 "$LOG" >&2; exit 3; }
  }
  step "starting dockerd (bridge disabled, log: $LOG)" start_dockerd
  say "engine up (pid $(cat "$STATE_DIR/dockerd.pid"))"
fi

has_image() {
  curl -sf --unix-socket "$SOCK" "http://localhost/images/$1/json" >/dev/null 2>&1
}

if has_image "$BASE_IMAGE"; then
  say "$BASE_IMAGE present"
else
  repo=${BASE_IMAGE%%:*}; tag=${BASE_IMAGE#*:}
  say "pulling $BASE_IMAGE (at most 60 s) …"
  if curl -sf --max-time 60 --unix-socket "$SOCK" -X POST \
       "http://localhost/images/create?fromImage=$repo&tag=$tag" >/dev/null 2>&1 && has_image "$BASE_IMAGE"; then
    say "pulled $BASE_IMAGE"
  else
    say "no registry: building $BASE_IMAGE with debootstrap"
    command -v debootstrap >/dev/null || apt_install debootstrap
    tarball="$STATE_DIR/bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
      rootfs=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
      trap 'rm -rf "$rootfs"' EXIT
      # debootstrap prints "I: Retrieving/Validating/Extracting/Unpacking/Configuring <package>…" as it goes.
      last_step() { grep -a '^I: ' "$1" | tail -n 1 | cut -c4-70; }
      step "debootstrap of Debian bookworm (minbase; about 1–2 min on a fast mirror)" \
        with_heartbeat "running debootstrap" last_step "$STATE_DIR/debootstrap.log" \
          debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
      rm -rf "$rootfs"; trap - EXIT
    fi
    step "importing $BASE_IMAGE into the engine" \
      curl -sf --unix-socket "$SOCK" -X POST -H 'Content-Type: application/x-tar' \
        --data-binary @"$tarball" "http://localhost/images/create?fromSrc=-&repo=$repo&tag=$tag" -o /dev/null
    has_image "$BASE_IMAGE" || { say "importing $BASE_IMAGE failed"; exit 3; }
    say "built $BASE_IMAGE locally"
  fi
fi
