#!/bin/sh
# The k-hop depth table, as it ran (2-core CPU): one kind per command, so the cheap kinds finish first.
# Each command resumes where it stopped; rerun the script to finish a cut run.
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
$PY -m experiments.main --mode=train --config=$C --workdir=$W --config.sweep.attention.kind="('lowrank',)" \
    --config.sweep.model.depth='(1,3,5)' --config.sweep.model.width='(32,128)'
