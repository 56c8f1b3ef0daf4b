#!/usr/bin/env bash
set -euo pipefail
ls -1 /sys/class/net | LC_ALL=C sort > /app/interfaces.txt
