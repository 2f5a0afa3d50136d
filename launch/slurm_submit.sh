#!/usr/bin/env bash
# Submit launch/slurm_multihost.sbatch: validate the variables, then sbatch it
# with the resources below (command-line options override its #SBATCH lines).
# Skips the submission if a job with the same JOB_NAME is already queued or
# running for this user (FORCE=1 submits anyway).
#
# Usage (from the repository root):
#   CONFIG=experiments/aape_base2new.py:shots=16,seed=1 WORKDIR=/shared/runs/aape/seed1 \
#     NODES=2 GPUS_PER_NODE=8 launch/slurm_submit.sh [--dry-run] [-- EXTRA_SBATCH_OPTION...]
#
# Flags:
#   --dry-run       print the commands instead of running them (or DRY_RUN=1)
#   -h, --help      show this header
#   -- OPTION...    more sbatch options, e.g. --qos=high --constraint=a100
# Variables:
#   CONFIG          (required) config path:args, relative to the repository root
#   WORKDIR         (required) run directory on a filesystem all nodes share,
#                   or a Cloud Storage folder gs://BUCKET/FOLDER
#   NODES           nodes = processes (default 2)
#   GPUS_PER_NODE   GPUs per node, all used by that node's process (default 8)
#   TIME            time limit (default 24:00:00); SIGTERM comes 120 s before it
#   PARTITION       optional Slurm partition
#   ACCOUNT         optional Slurm account
#   JOB_NAME        job name (default aape)
#   LOG_DIR         directory for the job logs (default slurm_logs)
#   EXTRA_FLAGS     more main.py flags, whitespace-separated (a
#                   --config.feature_store=PATH is checked as WORKDIR is)
#   VENV            optional virtualenv the nodes activate
#   PYTHON          interpreter on the nodes (default: python)
#   MAX_RESTARTS    most requeues after exit 75 (preempted; resumes) (default 10)
#   FORCE=1         submit even if JOB_NAME is already queued
#   DRY_RUN=1       same as --dry-run
set -euo pipefail
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/common.sh
source "$LAUNCH_DIR/common.sh"

sbatch_extra=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      print_header "$0"
      exit 0
      ;;
    --)
      shift
      sbatch_extra=("$@")
      break
      ;;
    *) die "unknown argument '$1' (sbatch options go after --; see --help)" ;;
  esac
  shift
done

NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
TIME="${TIME:-24:00:00}"
JOB_NAME="${JOB_NAME:-aape}"
LOG_DIR="${LOG_DIR:-slurm_logs}"
MAX_RESTARTS="${MAX_RESTARTS:-10}"

require_var CONFIG WORKDIR
check_workdir "$WORKDIR"
mapfile -t extra_flags < <(split_words "${EXTRA_FLAGS:-}")
check_main_flags "${extra_flags[@]}" # here, not only when the job starts on the nodes
for name in NODES GPUS_PER_NODE MAX_RESTARTS; do
  [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name must be a non-negative integer, got '${!name}'"
done
((NODES > 0 && GPUS_PER_NODE > 0)) || die "NODES and GPUS_PER_NODE must be positive"
config_file="${CONFIG%%:*}"
[[ -f "$config_file" ]] || die "CONFIG file not found: $config_file (CONFIG=$CONFIG; paths are relative to $(pwd); run from the repository root)"
if [[ -n "${VENV:-}" && ! -f "$VENV/bin/activate" ]]; then
  die "VENV=$VENV has no bin/activate"
fi
require_tool sbatch squeue

if [[ "${FORCE:-0}" != 1 ]]; then
  squeue_cmd=(squeue --noheader --user="${USER:-$(id -un)}" --name="$JOB_NAME" --format=%i)
  if is_dry_run; then
    run_cmd "${squeue_cmd[@]}"
    printf '# dry run: assuming no job named %s is queued\n' "$JOB_NAME"
  else
    queued="$("${squeue_cmd[@]}" 2>/dev/null || true)"
    if [[ -n "$queued" ]]; then
      log "job(s) named $JOB_NAME already queued or running: $(echo "$queued" | tr '\n' ' ')- submission skipped (FORCE=1 to submit anyway)"
      exit 0
    fi
  fi
fi

run_cmd mkdir -p "$LOG_DIR"
args=(sbatch --job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node=1
  --gpus-per-node="$GPUS_PER_NODE" --time="$TIME" --output="$LOG_DIR/%x-%j.out")
if [[ -n "${PARTITION:-}" ]]; then args+=(--partition="$PARTITION"); fi
if [[ -n "${ACCOUNT:-}" ]]; then args+=(--account="$ACCOUNT"); fi
args+=(--export=ALL "${sbatch_extra[@]}" "$LAUNCH_DIR/slurm_multihost.sbatch")
run_cmd env \
  AAPE_LAUNCH_DIR="$LAUNCH_DIR" CONFIG="$CONFIG" WORKDIR="$WORKDIR" \
  EXTRA_FLAGS="${EXTRA_FLAGS:-}" VENV="${VENV:-}" PYTHON="${PYTHON:-python}" \
  GPUS_PER_NODE="$GPUS_PER_NODE" MAX_RESTARTS="$MAX_RESTARTS" \
  "${args[@]}"
