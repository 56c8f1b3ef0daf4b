#!/usr/bin/env bash
set -euo pipefail
echo first > /app/notes.txt
