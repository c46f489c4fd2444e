#!/bin/sh
# The k-hop depth table (experiments/configs/khop_depth_table.py), on the 2-core CPU, 2026-12-02.
# Each command resumes where it stopped: rerun the script to finish a cut run.
# As it ran: full, anna_softmax, unit_softmax one after another; then reformer and lowrank as two processes at
# once (the same commands, started side by side to fit the session); the grid for beta = 1 only. Second session
# (2026-12-03): the same reformer and lowrank commands finished depth 4..5 (reformer_rest.log, lowrank_rest.log),
# then the width axis (lowrank_width.log), then the grid command below for beta = 1 and 8 (grid_beta8.log),
# stopped after beta = 8 at depth 1 for time. Logs: *.log beside this file.
set -e
W=${WORKDIR:-runs/khop_depth_table}
C=experiments/configs/khop_depth_table.py
PY=${PYTHON:-.venv/bin/python}
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('full',)"
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('anna_softmax',)"
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('unit_softmax',)" \
    --config.sweep.attention.unit_softmax.beta='(1.0,8.0)'
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('reformer',)"
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('lowrank',)"
# low rank at widths 32 and 128
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('lowrank',)" \
    --config.sweep.model.depth='(1,3,5)' --config.sweep.model.width='(32,128)'
# anna (Algorithm 1) swapped into every layer of the unit_softmax surrogates, on 4,096 fixed test sequences
# (beta = 1 in full; beta = 8 at depth 1 only so far: rerun to finish it)
$PY -m experiments.main --mode=grid --config=$C --workdir=$W --config.sweep.attention.kind="('unit_softmax',)" \
    --config.sweep.attention.unit_softmax.beta='(1.0,8.0)' --config.evaluation.test_size=4096
$PY -m experiments.khop_table --workdir=$W --out=experiments/results/khop_depth_table
