#!/bin/sh
# Start the service the task needs, then run the command the harness gave.
perl /usr/local/bin/service.pl &
exec "$@"
