#!/bin/sh
# Match2 as N grows with the unit_softmax surrogate at beta = 3 (experiments/configs/match2_growing_n.py, whose
# defaults these are), on the 2-core CPU, 2026-12-03. One command per N (its own step budget; N = 512 first, the
# one in doubt); each trains the surrogate, then evaluates it with `anna` over tables {1..128} x hashes {1..16} x
# 3 draws. Rerun to resume a cut run (finished cells are skipped). Then hashes 17..20 at N = 256 and 512, where the
# cells with 2 to 16 tables were still improving at z = 16, and the report.
set -e
W=${WORKDIR:-runs/match2_growing_n_beta3}
C=experiments/configs/match2_growing_n.py
PY=${PYTHON:-.venv/bin/python}
for ns in 512:3000 256:5000 128:10000 64:20000 32:20000; do
  $PY -m experiments.main --config=$C --workdir=$W --config.sweep.task.match2.n="(${ns%%:*},)" \
      --config.train.steps=${ns##*:}
done
for ns in 512:3000 256:5000; do
  $PY -m experiments.main --mode=grid --config=$C --workdir=$W --config.sweep.task.match2.n="(${ns%%:*},)" \
      --config.train.steps=${ns##*:} --config.grid.hashes=17,18,19,20, --config.grid.tables_per_layer="((2,4,8,16),)"
done
$PY -m experiments.n_scaling --workdir=$W --out=experiments/results/match2_growing_n/beta3 \
    --fixed_cells=4:12,4:16,8:16,128:5
