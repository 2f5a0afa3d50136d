#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create it, set up a pinned jax[tpu] and
# this project on every worker, run a config on all workers, follow the logs,
# stop, delete. Every process runs the same command; jax.distributed.initialize()
# in aape_jax.main finds the other workers on its own.
#
# Usage (from the repository root):
#   launch/tpu_pod.sh [--dry-run] SUBCOMMAND [-- EXTRA_MAIN_FLAG...]
# Subcommands:
#   create    create the TPU VM (skipped if `describe` finds it)
#   setup     copy the code to every worker (local tree, or REPO_URL@BRANCH) and
#             install Python $PYTHON_VERSION + jax[tpu]==$JAX_VERSION + the project
#             into ~/$REMOTE_VENV (rerunnable: updates the code, pip is idempotent);
#             the project's own dependencies (pyproject.toml) include what gs://
#             needs (gcsfs, google-cloud-storage), and setup fails if they do not import
#   run       start `python -m aape_jax.main --config $CONFIG --workdir $WORKDIR`
#             on all workers in the background under launch/restart_loop.sh
#             (reruns it on exit 75 = preempted, which resumes); log ~/$LOG_FILE
#             on each worker. Skips workers where the run is already going.
#   logs      stream the workers' logs (tail -F; Ctrl-C to stop following)
#   status    TPU state and, on each worker, whether the run is going
#   stop      SIGTERM the run on all workers: it checkpoints and exits 75;
#             `run` again resumes
#   delete    delete the TPU VM (skipped if it does not exist)
# Flags:
#   --dry-run     print every command instead of running it (or DRY_RUN=1)
#   -h, --help    show this header
#   -- FLAG...    (run) more flags for aape_jax.main, e.g. --config.clip=PATH
# Variables (required ones are checked per subcommand):
#   TPU_NAME          (required) TPU VM name
#   ZONE              (required) e.g. us-central2-b
#   PROJECT           GCP project (default: gcloud's configured project)
#   ACCELERATOR_TYPE  (create) e.g. v4-32, v5litepod-16
#   TPU_VERSION       (create) runtime image (default tpu-ubuntu2204-base)
#   SPOT=1            (create) a Spot TPU (can be preempted: recreate, setup, run)
#   JAX_VERSION       (setup) pinned jax[tpu] (default 0.10.2)
#   PYTHON_VERSION    (setup) Python for the worker venv, via uv (default 3.11)
#   REPO_URL, BRANCH  (setup) git clone REPO_URL at BRANCH (default main) on each
#                     worker; without REPO_URL the local tree is copied
#   REMOTE_DIR        code directory on the workers, under ~ (default aape_jax)
#   REMOTE_VENV       venv on the workers, under ~ (default aape_venv)
#   CONFIG            (run) config path:args relative to the repository root
#   WORKDIR           (run) run directory every worker reaches: a Cloud Storage
#                     folder gs://BUCKET/FOLDER (no shared filesystem needed; the
#                     TPU VM's service account must be allowed to write the
#                     bucket) or a shared filesystem path (NFS/Filestore);
#                     same WORKDIR = resume
#   EXTRA_FLAGS       (run) more main.py flags, whitespace-separated, e.g.
#                     --config.feature_store=gs://BUCKET/features
#   MAX_RESTARTS      (run) reruns after exit 75 on a worker (default 10)
#   LOG_FILE          log file on each worker, under ~ (default aape_run.log)
#   LOGS_WORKER       (logs) worker to follow (default all)
#   LOG_LINES         (logs) lines of history to show first (default 100)
#   DRY_RUN=1         same as --dry-run
set -euo pipefail
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/common.sh
source "$LAUNCH_DIR/common.sh"

TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
BRANCH="${BRANCH:-main}"
REMOTE_DIR="${REMOTE_DIR:-aape_jax}"
REMOTE_VENV="${REMOTE_VENV:-aape_venv}"
LOG_FILE="${LOG_FILE:-aape_run.log}"
LOGS_WORKER="${LOGS_WORKER:-all}"
LOG_LINES="${LOG_LINES:-100}"
MAX_RESTARTS="${MAX_RESTARTS:-10}"

usage() {
  print_header "$0"
}

subcommand=""
extra_args=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      extra_args=("$@")
      break
      ;;
    create | setup | run | logs | status | stop | delete)
      [[ -z "$subcommand" ]] || die "one subcommand at a time (got '$subcommand' and '$1')"
      subcommand="$1"
      ;;
    *) die "unknown argument '$1' (subcommands: create setup run logs status stop delete; see --help)" ;;
  esac
  shift
done
[[ -n "$subcommand" ]] || die "no subcommand (create setup run logs status stop delete; see --help)"

require_var TPU_NAME ZONE
require_tool gcloud
GCLOUD_LOCATION=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  GCLOUD_LOCATION+=(--project="$PROJECT")
fi
TPU=(gcloud compute tpus tpu-vm)

# Run a bash script on workers ($1: all or an index). The script is prefixed by
# variable assignments so its body stays a fixed, quoted text.
ssh_workers() {
  local worker="$1" script="$2"
  run_cmd "${TPU[@]}" ssh "$TPU_NAME" "${GCLOUD_LOCATION[@]}" --worker="$worker" --command="$script"
}

# `assign NAME VALUE`: a bash assignment line for a remote script.
assign() {
  printf '%s=%s\n' "$1" "$(_quote_word "$2")"
}

# Paths on the workers are relative to ~ unless absolute.
remote_path_word() {
  case "$1" in
    /*) _quote_word "$1" ;;
    *)
      # shellcheck disable=SC2088  # a literal ~ on purpose: the worker's shell expands it
      printf '~/%s' "$(_quote_word "$1")"
      ;;
  esac
}

# Does the TPU exist? In a dry run, print the check and answer $1 (yes/no).
tpu_exists() {
  local describe=("${TPU[@]}" describe "$TPU_NAME" "${GCLOUD_LOCATION[@]}" --format=value\(state\))
  if is_dry_run; then
    run_cmd "${describe[@]}"
    printf '# dry run: assuming the TPU %s\n' "$([[ "$1" == yes ]] && echo exists || echo 'does not exist')"
    [[ "$1" == yes ]]
    return
  fi
  local out
  if out="$("${describe[@]}" 2>&1)"; then
    return 0
  fi
  if grep -qiE 'not[ _]?found' <<<"$out"; then
    return 1
  fi
  die "cannot tell whether TPU $TPU_NAME exists (gcloud describe failed): $out"
}

cmd_create() {
  require_var ACCELERATOR_TYPE TPU_VERSION
  if tpu_exists no; then
    log "TPU $TPU_NAME already exists in $ZONE: create skipped"
    return 0
  fi
  local args=("${TPU[@]}" create "$TPU_NAME" "${GCLOUD_LOCATION[@]}"
    --accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION")
  if [[ "${SPOT:-0}" == 1 ]]; then
    args+=(--spot)
  fi
  run_cmd "${args[@]}"
}

# Copy the local tree (tracked + untracked, not ignored files) to every worker.
copy_local_tree() {
  require_tool git tar
  local repo_root tmp file
  repo_root="$(cd "$LAUNCH_DIR/.." && pwd)"
  git -C "$repo_root" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    die "$repo_root is not a git checkout: set REPO_URL to clone on the workers instead"
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand $tmp now: it is local to this function
  trap "rm -rf '$tmp'" EXIT
  git -C "$repo_root" ls-files -co --exclude-standard --deduplicate |
    while IFS= read -r file; do
      if [[ -f "$repo_root/$file" ]]; then printf '%s\n' "$file"; fi
    done >"$tmp/files"
  run_cmd tar -czf "$tmp/aape_src.tar.gz" -C "$repo_root" -T "$tmp/files"
  run_cmd "${TPU[@]}" scp "$tmp/aape_src.tar.gz" "$TPU_NAME:aape_src.tar.gz" "${GCLOUD_LOCATION[@]}" --worker=all
}

cmd_setup() {
  require_var JAX_VERSION PYTHON_VERSION REMOTE_DIR REMOTE_VENV
  case "$REMOTE_DIR" in
    / | . | .. | '~' | */.. | ../* | */../*) die "REMOTE_DIR=$REMOTE_DIR: setup replaces this directory; use a dedicated one (default aape_jax)" ;;
  esac
  local body code
  if [[ -n "${REPO_URL:-}" ]]; then
    code="$(
      cat <<'EOF'
if [ -d "$AAPE_DIR/.git" ]; then
  git -C "$AAPE_DIR" fetch --depth=1 origin "$AAPE_BRANCH"
  git -C "$AAPE_DIR" checkout --force --quiet FETCH_HEAD
else
  rm -rf "$AAPE_DIR"
  git clone --depth=1 --branch "$AAPE_BRANCH" "$AAPE_REPO_URL" "$AAPE_DIR"
fi
EOF
    )"
  else
    copy_local_tree
    code="$(
      cat <<'EOF'
rm -rf "$AAPE_DIR.new" && mkdir -p "$AAPE_DIR.new"
tar -xzf ~/aape_src.tar.gz -C "$AAPE_DIR.new"
rm -rf "$AAPE_DIR" && mv "$AAPE_DIR.new" "$AAPE_DIR"
EOF
    )"
  fi
  body="$(
    cat <<'EOF'
export PATH="$HOME/.local/bin:$PATH"
command -v uv >/dev/null 2>&1 || python3 -m pip install --user --quiet uv
[ -x "$AAPE_VENV/bin/python" ] || uv venv --python "$AAPE_PYTHON_VERSION" "$AAPE_VENV"
uv pip install --python "$AAPE_VENV/bin/python" "jax[tpu]==$AAPE_JAX_VERSION" -e "$AAPE_DIR"
"$AAPE_VENV/bin/python" -c 'import jax, aape_jax, gcsfs, google.cloud.storage; print("ready: jax", jax.__version__)'
EOF
  )"
  ssh_workers all "set -euo pipefail
cd ~
$(assign AAPE_DIR "$REMOTE_DIR")
$(assign AAPE_VENV "$REMOTE_VENV")
$(assign AAPE_BRANCH "$BRANCH")
$(assign AAPE_REPO_URL "${REPO_URL:-}")
$(assign AAPE_JAX_VERSION "$JAX_VERSION")
$(assign AAPE_PYTHON_VERSION "$PYTHON_VERSION")
$code
$body"
}

cmd_run() {
  require_var CONFIG WORKDIR
  check_workdir "$WORKDIR"
  [[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "MAX_RESTARTS must be a non-negative integer, got '$MAX_RESTARTS'"
  build_main_cmd python "$CONFIG" "$WORKDIR" "${extra_args[@]}"
  # The venv's python, then the rest of the command, quoted for the worker's bash.
  local main_words body
  main_words="$(remote_path_word "$REMOTE_VENV/bin/python") $(quote_cmd "${MAIN_CMD[@]:1}")"
  body="$(
    cat <<'EOF'
[ -x "$AAPE_VENV/bin/python" ] || { echo "$(hostname): no $AAPE_VENV/bin/python: run 'launch/tpu_pod.sh setup' first" >&2; exit 1; }
cd "$AAPE_DIR"
if [ -f "$AAPE_LOG.pid" ] && kill -0 "$(cat "$AAPE_LOG.pid")" 2>/dev/null; then
  echo "$(hostname): already running (pid $(cat "$AAPE_LOG.pid")): skipped; 'logs' follows it, 'stop' stops it"
  exit 0
fi
echo "=== $(date -u +%FT%TZ) start: ${AAPE_CMD[*]}" >>"$AAPE_LOG"
PYTHONUNBUFFERED=1 MAX_RESTARTS="$AAPE_MAX_RESTARTS" nohup bash launch/restart_loop.sh "${AAPE_CMD[@]}" >>"$AAPE_LOG" 2>&1 </dev/null &
echo $! >"$AAPE_LOG.pid"
echo "$(hostname): started (pid $!), log $AAPE_LOG"
EOF
  )"
  ssh_workers all "set -eu
cd ~
$(assign AAPE_DIR "$REMOTE_DIR")
$(assign AAPE_VENV "$REMOTE_VENV")
$(assign AAPE_LOG "$LOG_FILE")
$(assign AAPE_MAX_RESTARTS "$MAX_RESTARTS")
AAPE_VENV=\$(cd \"\$AAPE_VENV\" 2>/dev/null && pwd || echo \"\$AAPE_VENV\")
AAPE_LOG=\$(cd \"\$(dirname \"\$AAPE_LOG\")\" && pwd)/\$(basename \"\$AAPE_LOG\")
AAPE_CMD=($main_words)
$body"
}

cmd_logs() {
  [[ "$LOG_LINES" =~ ^[0-9]+$ ]] || die "LOG_LINES must be a non-negative integer, got '$LOG_LINES'"
  local body
  body="$(
    cat <<'EOF'
tail -n "$AAPE_LOG_LINES" -F "$AAPE_LOG" 2>&1 | sed -u "s/^/[$(hostname)] /"
EOF
  )"
  ssh_workers "$LOGS_WORKER" "cd ~
$(assign AAPE_LOG "$LOG_FILE")
$(assign AAPE_LOG_LINES "$LOG_LINES")
$body"
}

cmd_status() {
  run_cmd "${TPU[@]}" describe "$TPU_NAME" "${GCLOUD_LOCATION[@]}" --format=value\(state,health,acceleratorType\)
  local body
  body="$(
    cat <<'EOF'
if [ -f "$AAPE_LOG.pid" ] && kill -0 "$(cat "$AAPE_LOG.pid")" 2>/dev/null; then
  echo "$(hostname): running (pid $(cat "$AAPE_LOG.pid"))"
else
  echo "$(hostname): not running"
fi
[ -f "$AAPE_LOG" ] && tail -n 2 "$AAPE_LOG" | sed "s/^/[$(hostname)]   /"
true
EOF
  )"
  ssh_workers all "cd ~
$(assign AAPE_LOG "$LOG_FILE")
$body"
}

cmd_stop() {
  local body
  body="$(
    cat <<'EOF'
if [ -f "$AAPE_LOG.pid" ] && kill -0 "$(cat "$AAPE_LOG.pid")" 2>/dev/null; then
  kill -TERM "$(cat "$AAPE_LOG.pid")"
  echo "$(hostname): SIGTERM sent: the run checkpoints and exits 75; 'run' resumes it"
else
  echo "$(hostname): not running"
fi
EOF
  )"
  ssh_workers all "cd ~
$(assign AAPE_LOG "$LOG_FILE")
$body"
}

cmd_delete() {
  if ! tpu_exists yes; then
    log "TPU $TPU_NAME does not exist in $ZONE: delete skipped"
    return 0
  fi
  run_cmd "${TPU[@]}" delete "$TPU_NAME" "${GCLOUD_LOCATION[@]}" --quiet
}

"cmd_$subcommand"
