#!/usr/bin/env bash
# Make a Docker engine available on this machine, idempotently:
#  1. reuse a daemon that already answers (never kill one we did not start);
#  2. otherwise install Debian's engine when dockerd is missing and start it with the bridge disabled
#     (task containers use `host` or `none` networking; traffic stays on 127.0.0.1);
#  3. build debian:bookworm-slim locally with debootstrap when it is missing and cannot be pulled.
set -euo pipefail

SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
STATE_DIR=${EVALKIT_STATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/evalkit}
LOG="$STATE_DIR/dockerd.log"
BASE_IMAGE=${EVALKIT_BASE_IMAGE:-debian:bookworm-slim}
mkdir -p "$STATE_DIR"

say() { printf '[docker-engine] %s\n' "$*" >&2; }

ping() { curl -sf --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v curl >/dev/null; then apt_install curl ca-certificates; fi

if ping; then
  say "engine already answers on $SOCK"
else
  if ! command -v dockerd >/dev/null; then
    say "installing Debian's docker.io engine"
    apt_install docker.io
  fi
  say "starting dockerd (bridge disabled, log: $LOG)"
  nohup dockerd --bridge=none --iptables=false >"$LOG" 2>&1 &
  echo $! >"$STATE_DIR/dockerd.pid"
  for _ in $(seq 1 120); do ping && break; sleep 0.5; done
  ping || { say "dockerd did not answer within 60 s; see $LOG"; tail -20 "$LOG" >&2; exit 3; }
  say "engine up (pid $(cat "$STATE_DIR/dockerd.pid"))"
fi

has_image() {
  curl -sf --unix-socket "$SOCK" "http://localhost/images/$1/json" >/dev/null 2>&1
}

if has_image "$BASE_IMAGE"; then
  say "$BASE_IMAGE present"
else
  repo=${BASE_IMAGE%%:*}; tag=${BASE_IMAGE#*:}
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
      debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$STATE_DIR/debootstrap.log" 2>&1 \
        || { say "debootstrap failed; see $STATE_DIR/debootstrap.log"; exit 3; }
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
      rm -rf "$rootfs"; trap - EXIT
    fi
    curl -sf --unix-socket "$SOCK" -X POST -H 'Content-Type: application/x-tar' \
      --data-binary @"$tarball" "http://localhost/images/create?fromSrc=-&repo=$repo&tag=$tag" >/dev/null
    has_image "$BASE_IMAGE" || { say "importing $BASE_IMAGE failed"; exit 3; }
    say "built $BASE_IMAGE locally"
  fi
fi
