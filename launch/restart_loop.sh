#!/usr/bin/env bash
# Run one command until it is done: rerun it while it exits 75 (preempted; it
# saved a checkpoint, so the same command resumes). Used on each TPU worker by
# tpu_pod.sh; usable on its own.
#
# Usage:   launch/restart_loop.sh [--dry-run] CMD [ARG...]
# Flags:   --dry-run      print the command instead of running it (or DRY_RUN=1)
# Vars:    MAX_RESTARTS   most reruns after exit 75 (default 10)
#          DRY_RUN=1      same as --dry-run
# Exit:    the command's final exit code (75 if still preempted after
#          MAX_RESTARTS, or if this loop was sent SIGTERM/SIGINT, which it
#          forwards to the command).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  print_header "$0"
  exit 0
fi
(($#)) || die "usage: $(basename "$0") [--dry-run] CMD [ARG...]"
run_until_done "$@"
