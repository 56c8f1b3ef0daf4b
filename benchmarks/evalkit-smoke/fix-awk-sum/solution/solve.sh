#!/usr/bin/env bash
set -euo pipefail
cat > /app/sum.awk <<'AWK'
# total the amount column per category
BEGIN { FS = "," }
NR > 1 { total[$1] += $2 }
END { for (c in total) print c, total[c] }
AWK
