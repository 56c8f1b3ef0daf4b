#!/usr/bin/env bash
set -euo pipefail
echo second > /app/second.txt
