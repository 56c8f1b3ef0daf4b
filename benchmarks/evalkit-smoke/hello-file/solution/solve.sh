#!/usr/bin/env bash
set -euo pipefail
printf 'Hello, evalkit!\n' > /app/hello.txt
