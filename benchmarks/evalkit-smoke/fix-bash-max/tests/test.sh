#!/usr/bin/env bash
set -uo pipefail
mkdir -p /logs/verifier
ok=1
check() {  # check <expected> <args...>
  local want=$1; shift
  local got
  got=$(bash /app/max.sh "$@" 2>/dev/null)
  if [ "$got" != "$want" ]; then echo "max.sh $* -> '$got', want '$want'"; ok=0; fi
}
check 10 3 10 2
check 10 10 9
check 100 9 100 20
check -2 -5 -2 -9
check 7 7
check 0 -1 0 -3
if [ "$ok" = 1 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
