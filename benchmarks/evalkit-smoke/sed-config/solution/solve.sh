#!/usr/bin/env bash
set -euo pipefail
# only touch lines inside the [server] section (up to the next section header)
sed -i -e '/^\[server\]/,/^\[/{s/^port = .*/port = 8080/;s/^debug = .*/debug = false/}' /app/config/server.conf
