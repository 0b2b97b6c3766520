#!/usr/bin/env bash
# Every figure of results/ from the shipped checkpoints, in one command (resumable: rows already
# written are kept, re-running continues).
#
#   make bench          (= bash scripts/benchmark_all.sh; LIMIT=10 for a quicker partial run)
#
#   results/perf/profile.md      where one streamed shot's time goes; FLOP/s vs the matmul peak
#   results/perf/projection.md   the wan2.1-1.3b FLOP / memory model projected onto GPUs
#   results/                     leaderboard + REPORT.md on the 50-story evaluation suite, and the
#                                same suite under the memory-only protocol (no global captions: the
#                                [memory-only] columns)
#   results/long/                the streaming models on 4 stories of 20 shots (chunk time and memory
#                                vs shot; the teacher is left out: 80 shots x ~10 s, nothing streamed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
LIMIT=${LIMIT:+--limit $LIMIT}

shipped() {  # the names of the given models that are shipped in checkpoints/tiny/
  for m in "$@"; do [ -f "checkpoints/tiny/$m/config.json" ] && printf '%s ' "$m"; done; return 0
}
STREAMING=$(shipped student student_stage3 student_no_indicator student_learned_indicator causal_rolling)
PROFILED=$(shipped student teacher | cut -d' ' -f1)

"$PY" -m benchmark.profile --model "${PROFILED:-random}" --threads "$THREADS"
"$PY" -m benchmark.flops --out results/perf/projection.md
# shellcheck disable=SC2086  # word splitting of the method lists is intended
"$PY" -m benchmark run --method $STREAMING teacher autoencoder ground_truth --threads "$THREADS" $LIMIT
# shellcheck disable=SC2086
"$PY" -m benchmark run --method $STREAMING teacher autoencoder ground_truth --memory-only --threads "$THREADS" $LIMIT
# shellcheck disable=SC2086
if [ -n "$STREAMING" ]; then
  "$PY" -m benchmark run --method $STREAMING --suite storyworld-long --results results/long --threads "$THREADS" $LIMIT
fi
