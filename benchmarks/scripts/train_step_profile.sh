#!/bin/sh
# Issue 31, item 2: where the train step's time goes, and how fast it runs each way, for the induction-heads
# (Figure 1b), k-hop (depth table, depth 3) and Match2 (Figure 1a, and Match2 as N grows) configs; nothing else
# running on the machine. Reports in benchmarks/results/train_step_profile/. Run from the repository root.
set -e
PY=${PYTHON:-.venv/bin/python}
P=benchmarks/scripts/train_step_profile.py
S=benchmarks/scripts/train_step_speed.py
O=benchmarks/results/train_step_profile
IND=experiments/configs/induction_paper.py
TWO=--xla_force_host_platform_device_count=2
# Profiles: the step as it runs by default (train.microbatches automatic: 4 for induction heads on CPU, 1 for the
# others), and the induction step unsplit, on one core, and data parallel over two host devices.
$PY $P --config=$IND --out=$O/induction.md
$PY $P --config=$IND --config.train.microbatches=1 --out=$O/induction_unsplit.md
taskset -c 1 $PY $P --config=$IND --out=$O/induction_one_core.md
XLA_FLAGS=$TWO $PY $P --config=$IND --config.train.num_devices=2 --out=$O/induction_two_devices.md
$PY $P --config=experiments/configs/khop_depth_table.py --config.model.depth=3 --config.attention.kind=full \
    --out=$O/khop_depth3_full.md
$PY $P --config=experiments/configs/match2_paper.py --out=$O/match2.md
# Speed: settings num_devices:microbatches (0 automatic) timed in turns in one process; ratios to the first.
$PY $S --config=$IND --settings=1:1,1:2,1:4,1:8 --out=$O/induction_speed.md
taskset -c 1 $PY $S --config=$IND --settings=1:1,1:2,1:4 --out=$O/induction_speed_one_core.md
XLA_FLAGS=$TWO $PY $S --config=$IND --settings=1:1,1:0,2:1,2:0,2:4 --out=$O/induction_speed_two_devices.md
$PY $S --config=experiments/configs/khop_depth_table.py --config.model.depth=3 --config.attention.kind=full \
    --settings=1:1,1:2,1:4 --reps=30 --out=$O/khop_depth3_full_speed.md
$PY $S --config=experiments/configs/match2_paper.py --settings=1:1,1:2,1:4 --reps=50 --out=$O/match2_speed.md
for N in 128 512; do
  $PY $S --config=experiments/configs/match2_growing_n.py --config.task.match2.n=$N --settings=1:1,1:2,1:0 \
      --reps=5 --out=$O/match2_n${N}_speed.md
done
