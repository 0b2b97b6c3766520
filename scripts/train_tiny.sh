#!/usr/bin/env bash
# Retrain every shipped tiny model from scratch, in the paper's order, then the ablations.
#
#   make train          (= bash scripts/train_tiny.sh)
#   FROM=distil make train   (only stages 2-4 and the ablations, from the shipped teacher)
#
# Resumable: a finished stage (runs/<name>/final) is skipped, a started one continues exactly
# (--resume), ODE pairs already on disk are kept. Each stage writes its model in fp32 to
# runs/<name>/final/, where the next stage starts from, and ships it in bf16 to checkpoints/tiny/
# (see its config in shotstream/training/configs/). One stage runs at a time: on a 2-core CPU two
# concurrent runs are each 4-5x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
FROM=${FROM:-all}  # all | distil
case $FROM in all|distil) ;; *) echo "FROM must be all or distil, got '$FROM'" >&2; exit 2;; esac

stage() {  # stage <stage> <config> <run dir> [--override k=v ...]
  local name=$1 config=$2 out=$3; shift 3
  if [ -d "$out/final" ]; then echo "== $out: done, skipped"; return; fi
  local resume=()
  if [ -d "$out/checkpoints" ]; then resume=(--resume); fi
  echo "== $out"
  "$PY" -m shotstream train "$name" --config "$config" --out "$out" "${resume[@]}" --override "threads=$THREADS" "$@"
}

# Stage 0-1: the codec and the bidirectional next-shot teacher.
if [ "$FROM" = all ]; then
  stage autoencoder autoencoder runs/autoencoder
  stage teacher teacher runs/teacher
  stage teacher teacher_finetune runs/teacher_finetune  # phase 2: a story pool, 32 single frames a step
  stage teacher teacher_phase3 runs/teacher_phase3      # phase 3: half the targets "it" shots, 8 frames a step
fi
# Stage 2: teacher trajectories (cache/, outside git), then the ODE regression of the causal student.
"$PY" -m shotstream ode-pairs --count 256 --threads "$THREADS"
stage ode ode runs/ode
# Stages 3-4: intra-shot, then inter-shot self-forcing DMD (-> student_stage3, student).
stage intra intra runs/intra
stage inter inter runs/inter

# Ablations, each with the budget of the stage(s) it replaces, branching off the shared students.
for variant in none:no learned:learned; do
  indicator=${variant%%:*} name=student_${variant##*:}_indicator
  stage intra intra "runs/intra_$name" --override "stage.model_overrides=model.shot_indicator=$indicator" \
    --override stage.export_to=
  stage inter inter "runs/inter_$name" --override "stage.model_overrides=model.shot_indicator=$indicator" \
    --override "stage.init=runs/intra_$name/final/student_stage3" \
    --override "stage.export_name=$name" --override "stage.export_to=checkpoints/tiny/$name"
done
# No global cache: history only through a rolling window of 15 latent frames across shots
# (the cache capacity of the dual cache: 6 global + 9 local), Self-Forcing / LongLive style.
stage inter inter runs/inter_rolling --override stage.kind=rolling \
  --override stage.model_overrides=model.local_window=15 \
  --override stage.export_name=causal_rolling --override stage.export_to=checkpoints/tiny/causal_rolling
echo "all stages done: checkpoints/tiny/"
