#!/usr/bin/env bash
set -euo pipefail
cp /etc/evalkit-base-generation /app/generation.txt
