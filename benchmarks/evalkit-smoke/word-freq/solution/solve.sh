#!/usr/bin/env bash
set -euo pipefail
# split into words, lowercase, count, order by count desc then word asc
tr -cs 'A-Za-z' '\n' < /app/data/corpus.txt \
  | tr 'A-Z' 'a-z' \
  | grep -v '^$' \
  | sort | uniq -c \
  | awk '{print $1, $2}' \
  | sort -k1,1nr -k2,2 \
  | head -n 5 > /app/top5.txt
