#!/usr/bin/env bash
set -euo pipefail
echo gamma > /app/gamma.txt
