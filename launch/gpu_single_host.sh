#!/usr/bin/env bash
# Train on one host with all its local GPUs: one process, JAX sees every visible
# GPU and the train step shards the batch over them. Also the laptop/CPU
# launcher (JAX falls back to the CPU when it finds no GPU).
#
# Usage (from the repository root):
#   CONFIG=experiments/aape_base2new.py:shots=16,seed=1 WORKDIR=runs/aape/seed1 \
#     launch/gpu_single_host.sh [--dry-run] [-- EXTRA_MAIN_FLAG...]
#
# Flags:
#   --dry-run       print the commands instead of running them (or DRY_RUN=1)
#   -h, --help      show this header
#   -- FLAG...      more flags for `python -m aape_jax.main` (e.g. --config.clip=PATH)
# Variables:
#   CONFIG                (required) config path:args, relative to the current directory
#   WORKDIR               (required) run directory, a local path or a Cloud Storage
#                         folder gs://BUCKET/FOLDER; rerunning with it resumes
#   EXTRA_FLAGS           more main.py flags, whitespace-separated (no quoting)
#   PYTHON                interpreter with aape_jax and jax[cuda12] installed (default: python)
#   CUDA_VISIBLE_DEVICES  optional: restrict the GPUs JAX sees (e.g. 0,1,2,3)
#   MAX_RESTARTS          reruns after exit 75 (preempted; resumes) (default 10)
#   DRY_RUN=1             same as --dry-run
#
# Idempotent: the same command on a finished or interrupted workdir resumes from
# its latest checkpoint. SIGTERM/Ctrl-C to this script is forwarded to the run,
# which checkpoints and exits 75; the script then stops (exit 75).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

extra_args=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      print_header "$0"
      exit 0
      ;;
    --)
      shift
      extra_args=("$@")
      break
      ;;
    *) die "unknown argument '$1' (flags for main.py go after --; see --help)" ;;
  esac
  shift
done

PYTHON="${PYTHON:-python}"
require_var CONFIG WORKDIR
check_workdir "$WORKDIR"
require_tool "$PYTHON"

config_file="${CONFIG%%:*}"
[[ -f "$config_file" ]] || die "CONFIG file not found: $config_file (CONFIG=$CONFIG; paths are relative to $(pwd); run from the repository root)"

if ! is_dry_run; then
  "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("aape_jax") is None)' 2>/dev/null ||
    die "$PYTHON cannot import aape_jax: run 'pip install -e .' (and 'pip install \"jax[cuda12]\"' for GPUs) from the repository root, or set PYTHON"
fi

if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  log "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  log "GPUs on this host: $(nvidia-smi --list-gpus 2>/dev/null | wc -l)"
else
  log "no nvidia-smi: JAX runs on whatever backend it finds (the CPU on a laptop)"
fi

build_main_cmd "$PYTHON" "$CONFIG" "$WORKDIR" "${extra_args[@]}"
run_until_done "${MAIN_CMD[@]}"
