#!/usr/bin/env bash
# The tiny model's fidelity study (#32, docs/experiments.md "Fidelity study"): arms of equal
# budget, each a resumable run under runs/study/, judged on the same held-out slice.
#
#   bash scripts/study_fidelity.sh autoencoder   # the codec arms, then their ceilings on the suite
#   bash scripts/study_fidelity.sh teacher       # teachers of equal budget on each codec, judged
#
# Arms of the codec (the shipped recipe: 2,400 steps, constant lr after warm-up, ~35 min alone):
#   ae_continued  the shipped autoencoder trained 1,400 steps more (today's recipe continued; its
#                 PSNR went 18.8 -> 19.1 dB, so the budget went to the next arm)
#   ae_stride4    4x4x4 instead of 4x8x8, 2,400 steps from scratch: twice the DiT's tokens per side
#
# Arms of the teacher (experiments/configs/study_teacher_*.json: a pool of 300 stories, phase 3's
# data mix, ~80 min each at one thread beside another arm):
#   today         from scratch, 1,000 steps: the shipped codec (4x8x8), patch 2x2, 8x8 tokens a frame
#   stride4       from scratch, 1,000 steps: the stride-4 codec (4x4x4), patch 4x4: the higher
#                 ceiling at the same tokens
#   continued     the shipped teacher, 1,000 steps more at phase 3's lr (today's recipe continued)
#   stride4_p2    from scratch: the stride-4 codec at patch 2x2, 16x16 tokens a frame (twice the
#                 tokens per side); ~7x a step, so 150 steps in the same time
# Judged at 12 sampler steps (the ODE pairs' sampler) on the 50 stories, with and without global
# captions, beside the shipped teacher (the continued arm's start); the table from
# `python -m experiments.fidelity_study runs/study/bench_teacher`.
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
  teacher)
    arms=(today stride4 continued stride4_p2)
    for arm in "${arms[@]}"; do
      stage teacher experiments/configs/study_teacher_$arm.json runs/study/teacher_$arm
    done
    for protocol in "" --memory-only; do  # (~16 min a run on 2 cores at 8x8 tokens)
      "$PY" -m benchmark run --threads "$THREADS" --results runs/study/bench_teacher --teacher-steps 12 \
        --autoencoder checkpoints/tiny/autoencoder --method teacher_shipped=checkpoints/tiny/teacher --no-report $protocol
      for arm in "${arms[@]}"; do
        codec=$(sed -n 's/.*"autoencoder": "\([^"]*\)".*/\1/p' experiments/configs/study_teacher_$arm.json)
        "$PY" -m benchmark run --threads "$THREADS" --results runs/study/bench_teacher --teacher-steps 12 \
          --autoencoder "$codec" --method "$arm=runs/study/teacher_$arm/final/teacher" --no-report $protocol
      done
    done
    "$PY" -m experiments.fidelity_study runs/study/bench_teacher --methods teacher_shipped "${arms[@]}"
    ;;
  *) echo "unknown part '$PART' (autoencoder, teacher)" >&2; exit 2;;
esac
