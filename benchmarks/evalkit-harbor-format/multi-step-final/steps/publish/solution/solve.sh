#!/usr/bin/env bash
set -euo pipefail
echo publish > /app/publish.txt
