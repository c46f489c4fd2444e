#!/bin/sh
# The prepared device check for one GPU (H100/H200), at most about 10 minutes, everything under one folder:
#   1. the scaling benchmark, forward and train, every kind (cuDNN full attention included), 4K to 1M tokens, not
#      causal, then causal (each under its own time budget: lengths run in increasing order, so a cut run has
#      every kind up to some length);
#   2. the induction-heads train step's speed and share of its FLOP bound, plain and in 4 microbatches
#      (benchmarks/scripts/train_step_speed.py; issue 31, item 2 measured on CPU only so far);
#   2b. whole-model k-hop train steps at long N, every kind (benchmarks/scripts/long_train_step.py; issue 44):
#      LONG_LENGTHS (default 8192,32768,65536; empty skips it), LONG_VARIANTS (default: every variant);
#   3. what time is left: the induction-heads Figure 1b surrogate (experiments/configs/induction_paper.py, beta 1),
#      trained under a time limit that checkpoints and evaluates; running the check again resumes it.
# Usage:  make device-check OUT=results/device_check     (or: sh benchmarks/device_check.sh OUT)
# Knobs (environment): DEVICE_CHECK_SECONDS (540: the whole check), LENGTHS, KINDS (default: all for the backend),
# SCALING_SECONDS (170 per causality), REPEATS (3), TRAIN_SECONDS (default: what is left, less 40 s for the
# compile and the final evaluation), TRAIN_FLAGS (extra --config flags for the induction step and run),
# SPEED_SETTINGS (1:1,1:4: num_devices:microbatches of the step's speed table).
# On CPU the same script runs in a reduced form (tests/test_benchmarks.py): small LENGTHS and budgets.
set -eu
OUT=${1:-${OUT:-results/device_check}}
PY=${PYTHON:-.venv/bin/python}
TOTAL=${DEVICE_CHECK_SECONDS:-540}
LENGTHS=${LENGTHS:-4096,16384,65536,262144,1048576}
SCALING=${SCALING_SECONDS:-170}
REPEATS=${REPEATS:-3}
KINDS=${KINDS:-}
start=$(date +%s)
mkdir -p "$OUT"
{ echo "device check started $(date -u +%FT%TZ)"; $PY -c 'import jax; print(jax.devices())'; } > "$OUT/device.txt" 2>&1
for causal in nocausal causal; do
  $PY -m benchmarks.scaling --outdir="$OUT/scaling-$causal" --lengths="$LENGTHS" --kinds="$KINDS" \
      --repeats="$REPEATS" --max_call_seconds=5 --budget_seconds="$SCALING" --"$causal" \
      > "$OUT/scaling-$causal.log" 2>&1
done
# shellcheck disable=SC2086
$PY benchmarks/scripts/train_step_speed.py --config=experiments/configs/induction_paper.py \
    --settings="${SPEED_SETTINGS:-1:1,1:4}" --rounds=3 ${TRAIN_FLAGS:-} --out="$OUT/train_step_speed.md" \
    > "$OUT/train_step_speed.log" 2>&1
LONG_LENGTHS=${LONG_LENGTHS-8192,32768,65536}
if [ -n "$LONG_LENGTHS" ]; then
  $PY benchmarks/scripts/long_train_step.py --lengths="$LONG_LENGTHS" --rounds=3 --reps=3 \
      ${LONG_VARIANTS:+"--variants=$LONG_VARIANTS"} \
      --out="$OUT/long_train_step.md" > "$OUT/long_train_step.log" 2>&1 || true
fi
left=$((TOTAL - ($(date +%s) - start) - 40))
TRAIN_SECONDS=${TRAIN_SECONDS:-$left}
if [ "$TRAIN_SECONDS" -gt 0 ]; then
  # shellcheck disable=SC2086
  $PY -m experiments.main --mode=train --config=experiments/configs/induction_paper.py --workdir="$OUT/induction" \
      --config.sweep.attention.unit_softmax.beta='(1.0,)' --config.train.time_limit_s="$TRAIN_SECONDS" \
      ${TRAIN_FLAGS:-} > "$OUT/induction.log" 2>&1
fi
echo "device check finished $(date -u +%FT%TZ) after $(($(date +%s) - start)) s" >> "$OUT/device.txt"
