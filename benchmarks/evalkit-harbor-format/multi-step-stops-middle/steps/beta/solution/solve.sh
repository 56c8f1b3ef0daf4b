#!/usr/bin/env bash
set -euo pipefail
echo beta > /app/beta.txt
