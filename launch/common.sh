# shellcheck shell=bash
# Shared helpers for the aape_jax launch scripts. Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Variables it reads:
#   DRY_RUN=1        print every command (`+ cmd`) instead of running it
#                    (the scripts also take --dry-run, which sets it)
#   MAX_RESTARTS     how many times run_until_done reruns a preempted command
#                    (default 10)
#
# Functions:
#   die MSG...                  print "error: MSG" to stderr and exit 1
#   print_header FILE           print FILE's leading comment block (the --help text)
#   log MSG...                  print "[launch] MSG" to stderr
#   require_var NAME...         die naming each unset or empty variable
#   require_tool TOOL...        die naming each missing tool (dry run: warn only)
#   quote_cmd WORD...           print the words as one bash-safe command line
#   run_cmd CMD...              run CMD, or print it under DRY_RUN=1
#   run_until_done CMD...       run CMD; rerun it while it exits 75 (preempted:
#                               it saved a checkpoint, so rerunning resumes),
#                               at most MAX_RESTARTS times; return its final code.
#                               SIGTERM/SIGINT to the launcher is forwarded to CMD
#                               and stops the loop (no restart).
#   split_words STRING          print STRING's whitespace-separated words, one a line
#   build_main_cmd PY CONFIG WORKDIR [FLAG...]
#                               set the array MAIN_CMD to
#                               PY -m aape_jax.main --config CONFIG --workdir WORKDIR
#                               $EXTRA_FLAGS FLAG..., after check_main_flags on the flags
#   check_storage_path NAME VALUE
#                               die unless VALUE (NAME's value) is a local path or a
#                               Cloud Storage one, gs://BUCKET[/FOLDER...]: another
#                               URL scheme (s3://, http://) or a malformed gs:// value
#                               (gs:/x, gs://, gs://Bad_Name) is named with the reason
#   check_workdir WORKDIR       check_storage_path WORKDIR "$WORKDIR"
#   check_main_flags FLAG...    check_storage_path on the value of --config.feature_store

if [[ -n "${_AAPE_COMMON_SOURCED:-}" ]]; then
  return 0
fi
_AAPE_COMMON_SOURCED=1

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  printf 'error: the launch scripts need bash >= 4.4, this is %s (macOS: brew install bash)\n' "$BASH_VERSION" >&2
  exit 1
fi

# Exit code of `python -m aape_jax.main` after SIGTERM: checkpoint saved, rerun to resume
# (EX_TEMPFAIL; PREEMPTED_EXIT_CODE in aape_jax/main.py).
readonly PREEMPTED_EXIT_CODE=75

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

log() {
  printf '[launch] %s\n' "$*" >&2
}

print_header() {
  awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}

is_dry_run() {
  [[ "${DRY_RUN:-0}" == 1 ]]
}

require_var() {
  local name missing=()
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      missing+=("$name")
    fi
  done
  if ((${#missing[@]})); then
    die "required variable(s) not set: ${missing[*]} (see the header of $(basename "$0") or launch/README.md)"
  fi
}

require_tool() {
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      if is_dry_run; then
        log "dry run: '$tool' is not on PATH (a real run needs it)"
      else
        die "required tool not found on PATH: $tool"
      fi
    fi
  done
}

# One word, quoted for bash only where needed (printf %q also escapes ',' and '[').
_quote_word() {
  local word="$1"
  if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

quote_cmd() {
  local word sep=""
  for word in "$@"; do
    printf '%s' "$sep"
    _quote_word "$word"
    sep=" "
  done
  printf '\n'
}

run_cmd() {
  if is_dry_run; then
    printf '+ %s' "$(quote_cmd "$@")"
    printf '\n'
    return 0
  fi
  "$@"
}

split_words() {
  local words=()
  read -r -a words <<<"${1:-}"
  if ((${#words[@]})); then
    printf '%s\n' "${words[@]}"
  fi
}

MAIN_CMD=()

build_main_cmd() {
  local main_python="$1" main_config="$2" main_workdir="$3" extra=()
  shift 3
  mapfile -t extra < <(split_words "${EXTRA_FLAGS:-}")
  check_main_flags "${extra[@]}" "$@"
  # shellcheck disable=SC2034  # MAIN_CMD is this function's output, read by the scripts that source this file
  MAIN_CMD=("$main_python" -m aape_jax.main --config "$main_config" --workdir "$main_workdir" "${extra[@]}" "$@")
}

# aape_jax reads and writes local paths and gs:// (aape_jax/storage.py); anything else
# with "://" would be taken for a bucket there, and "gs:/x" would become a local
# folder named "gs:". Bucket names: 3-63 of a-z 0-9 - _ . (up to 222 with dots),
# starting and ending with a letter or digit.
check_storage_path() {
  local name="$1" value="$2"
  case "$value" in
    gs://*)
      [[ "$value" =~ ^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/|$) ]] ||
        die "$name=$value: not a valid Cloud Storage path; expected gs://BUCKET/FOLDER (a bucket name is 3-63 lowercase letters, digits, '-', '_' or '.')"
      ;;
    *://* | gs:*)
      die "$name=$value: unsupported location; use a local path or a Cloud Storage path gs://BUCKET/FOLDER (for another store, mount it and pass the mount's path)"
      ;;
  esac
}

check_workdir() {
  check_storage_path WORKDIR "$1"
}

check_main_flags() {
  while (($#)); do
    case "$1" in
      --config.feature_store=*) check_storage_path --config.feature_store "${1#*=}" ;;
      --config.feature_store)
        if (($# > 1)); then
          check_storage_path --config.feature_store "$2"
        fi
        ;;
    esac
    shift
  done
}

_aape_child=""
_aape_terminated=0

_aape_forward_term() {
  _aape_terminated=1
  if [[ -n "$_aape_child" ]]; then
    log "launcher got a stop signal: sending SIGTERM to pid $_aape_child (it checkpoints and exits $PREEMPTED_EXIT_CODE)"
    kill -TERM "$_aape_child" 2>/dev/null || true
  fi
}

run_until_done() {
  (($#)) || die "run_until_done: no command given"
  local max="${MAX_RESTARTS:-10}" restarts=0 rc
  [[ "$max" =~ ^[0-9]+$ ]] || die "MAX_RESTARTS must be a non-negative integer, got '$max'"
  if is_dry_run; then
    run_cmd "$@"
    printf '# (rerun while it exits %s = preempted, at most %s restarts)\n' "$PREEMPTED_EXIT_CODE" "$max"
    return 0
  fi
  _aape_terminated=0
  trap _aape_forward_term TERM INT
  while true; do
    "$@" &
    _aape_child=$!
    rc=0
    wait "$_aape_child" || rc=$?
    # A trapped signal interrupts `wait`; wait again for the command's own exit code.
    while ((_aape_terminated)) && kill -0 "$_aape_child" 2>/dev/null; do
      rc=0
      wait "$_aape_child" || rc=$?
    done
    _aape_child=""
    if ((rc != PREEMPTED_EXIT_CODE)); then
      break
    fi
    if ((_aape_terminated)); then
      log "stopped by a signal after a checkpoint (exit $rc); rerun the same command to resume"
      break
    fi
    if ((restarts >= max)); then
      log "preempted again (exit $rc) after $restarts restart(s); MAX_RESTARTS=$max reached, giving up"
      break
    fi
    restarts=$((restarts + 1))
    log "preempted (exit $rc): checkpoint saved; restart $restarts/$max with the same command (it resumes)"
  done
  trap - TERM INT
  if ((rc == 0)); then
    log "done (exit 0) after $restarts restart(s)"
  elif ((rc != PREEMPTED_EXIT_CODE)); then
    log "command failed with exit code $rc; not restarting"
  fi
  return "$rc"
}
