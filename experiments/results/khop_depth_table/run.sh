#!/bin/sh
# The k-hop depth table (experiments/configs/khop_depth_table.py), on the 2-core CPU, 2026-12-02.
# Each command resumes where it stopped: rerun the script to finish a cut run.
# As it ran: full, anna_softmax, unit_softmax one after another; then reformer and lowrank as two processes at
# once (the same commands, started side by side to fit the session); the grid for beta = 1 only; the width axis
# and the beta = 8 grid were not run (out of time). Logs: *.log beside this file.
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
# not run yet: low rank at widths 32 and 128
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('lowrank',)" \
    --config.sweep.model.depth='(1,3,5)' --config.sweep.model.width='(32,128)'
# anna (Algorithm 1) swapped into every layer of the unit_softmax surrogates, on 4,096 fixed test sequences
# (ran with beta='(1.0,)'; beta = 8 not run yet)
$PY -m experiments.grid --config=$C --workdir=$W --config.sweep.attention.kind="('unit_softmax',)" \
    --config.sweep.attention.unit_softmax.beta='(1.0,8.0)' --config.evaluation.test_size=4096
$PY -m experiments.khop_table --workdir=$W --out=experiments/results/khop_depth_table
