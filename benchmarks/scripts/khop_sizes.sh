#!/bin/sh
# anna_softmax at the k-hop table's sizes (forward for quality, train = forward + backward), every CPU kind but anna;
# the second command: anna_softmax's sorted layout, which short sequences took before the dense one.
set -e
PY=${PYTHON:-.venv/bin/python}
COMMON="--modes=forward,train --causal --lengths=33,65,129,257 --batch=32 --heads=4 --head_dim=16 --num_tables=4 --num_hashes=3 --chunk_size=64 --window=64 --reformer_rounds=2 --reformer_chunk=8 --lowrank_features=64 --repeats=20 --warmup=3"
$PY -m benchmarks.scaling $COMMON --kinds=full,full_blockwise,anna_softmax,lowrank,reformer --outdir=benchmarks/results/khop-sizes
$PY -m benchmarks.scaling $COMMON --kinds=full,anna_softmax --dense_up_to=0 --outdir=benchmarks/results/khop-sizes-sorted-layout
# 2026-12-03: anna_softmax's CPU plan is now its C++ kernels at every length (khop-sizes/ above was its XLA dense
# layout, run before them); the kernels against the exact kinds, same settings:
$PY -m benchmarks.scaling $COMMON --kinds=full,full_blockwise,anna_softmax --outdir=benchmarks/results/khop-sizes-kernel
