# Helpers for the set-up scripts (sourced): progress lines, a heartbeat for long silent commands, apt.
# Every step that can take more than a few seconds prints a line when it starts and when it ends, with its
# duration; a command that prints nothing useful for minutes (a compiler, debootstrap) gets a heartbeat.
# The caller sets PROGRESS_TAG (the bracketed prefix of its lines).

say() { printf '[%s] %s\n' "${PROGRESS_TAG:-setup}" "$*" >&2; }

# step WHAT CMD...: run CMD between "WHAT …" and "WHAT: done in N s". Call it plainly, never as `step … ||`:
# in a condition bash turns set -e off inside functions, so failures in CMD would pass unnoticed.
step() {
  local what=$1 t0=$SECONDS
  shift
  say "$what …"
  "$@"
  say "$what: done in $((SECONDS - t0)) s"
}

# with_heartbeat WHAT STATUS_FN LOG CMD...: run CMD with its output in LOG, saying "still WHAT… N s (status)"
# every HEARTBEAT_SEC (default 15) seconds, where status is STATUS_FN LOG's output ("" for none). CMD runs in
# its own process group, so Ctrl-C (or SIGTERM) stops all of it (a compiler's children included). A failure
# shows the log's tail and exits 3.
with_heartbeat() {
  local what=$1 status_fn=$2 log=$3 t0=$SECONDS every=${HEARTBEAT_SEC:-15}
  shift 3
  local next=$((SECONDS + every)) rc=0 pid status
  setsid "$@" >"$log" 2>&1 </dev/null &
  pid=$!
  # shellcheck disable=SC2064  # expand $pid now
  trap "kill -TERM -- -$pid 2>/dev/null; exit 130" INT TERM
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ "$SECONDS" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
      status=""
      [ -n "$status_fn" ] && status=$("$status_fn" "$log" 2>/dev/null || true)
      say "still $what… $((SECONDS - t0)) s${status:+ ($status)}"
      next=$((SECONDS + every))
    fi
  done
  wait "$pid" || rc=$?
  trap - INT TERM
  [ "$rc" = 0 ] || fail_with_log "$what" "$log"
}

# fail_with_log WHAT LOG: the last lines of a failed command's log, then exit 3 (infrastructure).
fail_with_log() {
  say "$1 failed; last lines of $2:"
  tail -n 20 "$2" >&2
  exit 3
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    step "apt-get update" apt-get update -qq
    apt_updated=1
  fi
  step "apt-get install $*" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The user cache: $XDG_CACHE_HOME when absolute (as XDG says), else ~/.cache; evalkit's part of it.
evalkit_cache_dir() {
  case ${XDG_CACHE_HOME:-} in
    /*) printf '%s/evalkit\n' "$XDG_CACHE_HOME" ;;
    *) printf '%s/.cache/evalkit\n' "$HOME" ;;
  esac
}
