#!/bin/sh
# Issue 31, item 2: where the train step's time goes, for the induction-heads (Figure 1b), k-hop (depth table,
# depth 3) and Match2 (Figure 1a) configs; nothing else running on the machine. Reports in
# benchmarks/results/train_step_profile/. Run from the repository root.
set -e
PY=${PYTHON:-.venv/bin/python}
P=benchmarks/scripts/train_step_profile.py
O=benchmarks/results/train_step_profile
$PY $P --config=experiments/configs/induction_paper.py --out=$O/induction.md
taskset -c 1 $PY $P --config=experiments/configs/induction_paper.py --out=$O/induction_one_core.md
XLA_FLAGS=--xla_force_host_platform_device_count=2 $PY $P --config=experiments/configs/induction_paper.py \
    --config.train.num_devices=2 --out=$O/induction_two_devices.md
$PY $P --config=experiments/configs/khop_depth_table.py --config.model.depth=3 --config.attention.kind=full \
    --out=$O/khop_depth3_full.md
$PY $P --config=experiments/configs/match2_paper.py --out=$O/match2.md
