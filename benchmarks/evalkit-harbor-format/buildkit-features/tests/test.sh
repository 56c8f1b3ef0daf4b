#!/usr/bin/env bash
# greet is 0755 although greet.sh is 0644 in the build context (COPY --chmod); the cache mount was there
# during the build but is not in the image; the bind-mounted file was readable during the build only.
set -uo pipefail
fail() { echo "FAIL: $*"; echo 0 > /logs/verifier/reward.txt; exit 0; }
[ "$(stat -c %a /usr/local/bin/greet)" = 755 ] || fail "greet mode is $(stat -c %a /usr/local/bin/greet)"
printf 'hello from a BuildKit build\n' | cmp -s - /app/greeting.txt || fail "greeting wrong"
printf 'marker\n' | cmp -s - /app/cache-listing.txt || fail "cache mount not seen during build"
[ ! -e /var/cache/evalkit-build/marker ] || fail "cache mount content leaked into the image"
printf 'bound at build time\n' | cmp -s - /app/data.txt || fail "bind mount not seen during build"
[ ! -e /mnt/data.txt ] || fail "bind mount leaked into the image"
echo 1 > /logs/verifier/reward.txt
