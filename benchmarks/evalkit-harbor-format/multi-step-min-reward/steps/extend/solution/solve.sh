#!/usr/bin/env bash
set -euo pipefail
cat extra.txt >> /app/notes.txt
