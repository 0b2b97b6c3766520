#!/usr/bin/env bash
# The tiny model's fidelity study (#32, docs/experiments.md "Fidelity study"): arms of equal
# budget, each a resumable run under runs/study/, judged on the same held-out slice.
#
#   bash scripts/study_fidelity.sh autoencoder   # the codec arms, then their ceilings on the suite
#
# Arms of the codec (the shipped recipe: 2,400 steps, constant lr after warm-up, ~35 min alone):
#   ae_continued  the shipped autoencoder trained 1,400 steps more (today's recipe continued; its
#                 PSNR went 18.8 -> 19.1 dB, so the budget went to the next arm)
#   ae_stride4    4x4x4 instead of 4x8x8, 2,400 steps from scratch: twice the DiT's tokens per side
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
PART=${1:?usage: study_fidelity.sh autoencoder}

stage() {  # stage <stage> <config> <run dir> [--override k=v ...]: resumable, skipped when done
  local name=$1 config=$2 out=$3; shift 3
  if [ -d "$out/final" ]; then echo "== $out: done, skipped"; return; fi
  local resume=()
  if [ -d "$out/checkpoints" ]; then resume=(--resume); fi
  echo "== $out ($(date -u +%H:%M))"
  "$PY" -m shotstream train "$name" --config "$config" --out "$out" "${resume[@]}" --override "threads=$THREADS" \
    --override stage.export_to= "$@"
}

case $PART in
  autoencoder)
    # Each arm's ceiling right after it: the suite's ground truth through the codec (label
    # accuracies, CLIP), rows in runs/study/bench beside the shipped codec's.
    stage autoencoder autoencoder runs/study/ae_continued --override stage.init=checkpoints/tiny/autoencoder \
      --override steps=1400
    "$PY" -m benchmark run --threads "$THREADS" --results runs/study/bench \
      --method ae_shipped=checkpoints/tiny/autoencoder ae_continued=runs/study/ae_continued/final/autoencoder
    stage autoencoder autoencoder runs/study/ae_stride4 --override stage.spatial_stride=4 \
      --override stage.channel_mults=1,2
    "$PY" -m benchmark run --threads "$THREADS" --results runs/study/bench \
      --method ae_stride4=runs/study/ae_stride4/final/autoencoder
    ;;
  *) echo "unknown part '$PART' (autoencoder)" >&2; exit 2;;
esac
