#!/usr/bin/env bash
# The entrypoint starts the service in the background: give it up to 10 s to listen.
set -uo pipefail
for _ in $(seq 50); do
  if exec 3<>/dev/tcp/127.0.0.1/47232; then
    printf 'ping\n' >&3
    IFS= read -r reply <&3
    printf '%s\n' "$reply" > /app/reply.txt
    exit 0
  fi 2>/dev/null
  sleep 0.2
done
echo "no service on 127.0.0.1:47232" >&2
exit 1
