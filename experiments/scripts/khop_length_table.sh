#!/bin/sh
# The k-hop length table (experiments/configs/khop_length_table.py), on the project's 2-core CPU.
# Every cell is its own process (so peak memory is the run's own) and resumes where it stopped: rerun a part to
# finish it. As run first (2026-12-07, frozen checkout, see the results README): parts a and b side by side, each
# pinned to one core (taskset), beside development work on the machine.
#   sh experiments/scripts/khop_length_table.sh a      # N = 128, alphabet 4; then N = 512, alphabet 64
#   sh experiments/scripts/khop_length_table.sh b      # N = 128, alphabet 16; then N = 2048, alphabet 256
#   sh experiments/scripts/khop_length_table.sh anna   # Algorithm 1 trained through, warm from each full run
#   sh experiments/scripts/khop_length_table.sh check32  # issue 44's check: the N = 32 recipe, colliding gradient
set -e
W=${WORKDIR:-runs/khop_length}
C=experiments/configs/khop_length_table.py
PY=${PYTHON:-.venv/bin/python}

cell() {  # N ALPHABET KIND [more flags]: one run, in the workdir of its (N, alphabet)
  n=$1; a=$2; kind=$3; shift 3
  $PY -m experiments.main --mode=train --config=$C:$n,$a --workdir=$W/n${n}_a$a \
      "--config.sweep.attention.kind=('$kind',)" "$@"
}

anna_cell() {  # N ALPHABET: Algorithm 1 trained through from the full run of the same cell (the N = 32 recipe)
  cell $1 $2 anna --config.model.value_gain=True --config.optim.value_gain_lr_scale=10 \
      --config.train.init_from=$W/n$1_a$2/runs/khop-full
}

case ${1:-a} in
  a)
    for kind in full local anna_softmax lowrank reformer; do cell 128 4 $kind; done
    for kind in anna_softmax local full lowrank reformer; do cell 512 64 $kind; done ;;
  b)
    for kind in full local anna_softmax lowrank reformer; do cell 128 16 $kind; done
    for kind in anna_softmax local lowrank reformer; do cell 2048 256 $kind; done ;;
  anna)
    anna_cell 128 4; anna_cell 128 16 ;;
  check32)  # the depth-4 k-hop recipe at N = 32 (reasoning.sh part 18) with the 'colliding' gradient: full 5k,
    # then Algorithm 1 trained through from it 5k steps, then 15k more from that (fresh optimiser, same schedule)
    D=experiments/configs/khop_depth_table.py
    G="--config.model.value_gain=True --config.optim.value_gain_lr_scale=10 --config.evaluation.every=2500
       --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True
       --config.attention.anna.num_tables=256 --config.attention.anna.num_hashes=8
       --config.attention.anna.straight_through_pairs=colliding --config.attention.anna.straight_through_tables=32
       --config.attention.anna.straight_through_window=8"
    $PY -m experiments.main --mode=train --config=$D --workdir=$W/n32_full "--config.sweep.attention.kind=('full',)" \
        "--config.sweep.model.depth=(4,)"
    $PY -m experiments.main --mode=train --config=$D --workdir=$W/n32_anna_colliding_s5000 $G \
        "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=(4,)" \
        --config.train.init_from=$W/n32_full/runs/khop-full-depth=4 --config.train.steps=5000
    $PY -m experiments.main --mode=train --config=$D --workdir=$W/n32_anna_colliding_s5000_then_s15000 $G \
        "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=(4,)" \
        --config.train.init_from=$W/n32_anna_colliding_s5000/runs/khop-anna-depth=4 --config.train.steps=15000 ;;
  rest)  # what a session did not reach: N = 512 with alphabet 4, N = 2048 with alphabet 4, full attention at 2048
    for kind in full local anna_softmax lowrank reformer; do cell 512 4 $kind; done
    for kind in anna_softmax local lowrank reformer full; do cell 2048 4 $kind; done
    cell 2048 256 full ;;
esac
