#!/usr/bin/env bash
set -euo pipefail
echo two > /app/two.txt
