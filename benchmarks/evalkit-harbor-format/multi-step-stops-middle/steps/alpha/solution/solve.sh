#!/usr/bin/env bash
set -euo pipefail
echo alpha > /app/alpha.txt
