#!/bin/sh
# Issue 33 (2026-12-06, the 2-core AMD EPYC VM, jax 0.10.2 CPU): the constructed k-hop / induction-heads model
# (anna_jax/khop_construction.py), pinned to one core (`taskset -c 1`) while the other core trained models, so the
# times are of one loaded core: quote their ratios (anna against exact softmax, measured in the same run).
# Resumable: a rerun skips the rows results.jsonl holds.
set -e
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-experiments/results/khop_construction}
$PY -m experiments.khop_construction --out=$OUT --log2_n=10,12,14,16 --alphabets=4,64 --tables=1,2 \
    --hashes_offset=4,8,12,16,20 --draws=2 --softmax_up_to=16384
# Past 2^16, one cell each (l = 1; z = log2 N + 12 at 2^18; z = 31 at 2^20, the most hashes before codes pass
# int32 and take the slower sorted path, with k = 1 and 16 only, which keeps the vmapped pointer lookups in memory):
$PY -m experiments.khop_construction --out=$OUT --log2_n=18 --alphabets=4 --tables=1 --hashes_offset=12 \
    --draws=1 --softmax_up_to=0
$PY -m experiments.khop_construction --out=$OUT --log2_n=20 --alphabets=4 --ks=1,16 --tables=1 --hashes_offset=11 \
    --draws=1 --softmax_up_to=0
# The depth / heads trade-off: B = 32 (prefix maxima in ceil(log_32 (N + 1)) layers of 31 heads each).
$PY -m experiments.khop_construction --out=$OUT --log2_n=10,12,14 --alphabets=4 --base=32 --tables=1 \
    --hashes_offset=12,16,20 --draws=2 --softmax_up_to=4096
