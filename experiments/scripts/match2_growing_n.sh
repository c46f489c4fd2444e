#!/bin/sh
# Match2 as N grows (experiments/configs/match2_growing_n.py), on the 2-core CPU, 2026-12-02/03, with the paper's
# beta = 0.1 and z <= 10 (the config's defaults then; now beta = 3 and z <= 16: experiments/scripts/match2_growing_n_beta3.sh).
# One command per N (its own step budget); each trains the surrogate, then evaluates it with `anna` over the
# grid. Rerun to resume a cut run. Then the report: tables and plots into this folder.
set -e
W=${WORKDIR:-runs/match2_growing_n}
C=experiments/configs/match2_growing_n.py
PY=${PYTHON:-.venv/bin/python}
for ns in 32:20000 64:20000 128:10000 256:5000 512:3000; do
  $PY -m experiments.main --config=$C --workdir=$W --config.sweep.task.match2.n="(${ns%%:*},)" \
      --config.train.steps=${ns##*:} --config.attention.unit_softmax.beta=0.1 --config.grid.hashes=1,2,3,4,5,6,7,8,9,10,
done
$PY -m experiments.n_scaling --workdir=$W --out=experiments/results/match2_growing_n
