#!/usr/bin/env bash
set -euo pipefail
cat > /app/max.sh <<'SH'
#!/usr/bin/env bash
# print the largest integer argument
max=$1
for n in "$@"; do
  if (( n > max )); then
    max=$n
  fi
done
echo "$max"
SH
