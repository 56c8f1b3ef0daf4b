#!/usr/bin/env bash
for f in /proc/[0-9]*/cmdline; do
  if [ "$(tr '\0' ' ' < "$f" 2>/dev/null)" = "sleep infinity " ]; then p=${f#/proc/}; kill -9 "${p%/cmdline}"; fi
done
sleep 5
