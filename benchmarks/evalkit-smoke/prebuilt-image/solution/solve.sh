#!/usr/bin/env bash
set -euo pipefail
# absolute paths only: the prebuilt image has no WORKDIR
. /etc/os-release
printf '%s\n' "$VERSION_CODENAME" > /root/codename.txt
