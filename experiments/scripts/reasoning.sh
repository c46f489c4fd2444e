#!/bin/sh
# Issue 31, first session (2026-12-06, the 2-core AMD EPYC VM, jax 0.10.2 CPU): the induction-heads surrogate
# recipe (Figure 1b) and the k-hop swap, as the commands ran (each ran pinned to one core with `taskset -c N`,
# two or three at once, so the steps/s in the logs are not speed measurements). Each command resumes.
set -e
PY=${PYTHON:-.venv/bin/python}
I=experiments/configs/induction_paper.py
# 1. The paper's recipe with beta = 10 (its own third beta): trained 5,000 steps (the first command was started
#    with --config.train.steps=400000 and killed after the 5,000-step checkpoint; constant lr, so the same run),
#    then a reduced grid (3 x 3 tables x z 1..4 x 3 draws) and the swap diagnosis.
W=${W1:-runs/induction_paper}
$PY -m experiments.main --mode=train --config=$I --workdir=$W --config.sweep.attention.unit_softmax.beta='(10.0,)' \
    --config.train.steps=5000
$PY -m experiments.main --mode=grid --config=$I --workdir=$W --config.sweep.attention.unit_softmax.beta='(10.0,)' \
    --config.train.steps=5000 --config.grid.tables_per_layer='((32,64,96),(4,16,32))' --config.grid.draws=3
$PY -m experiments.main --mode=diagnose --config=$I --workdir=$W --config.sweep.attention.unit_softmax.beta='(10.0,)' \
    --config.train.steps=5000 --cells=32:2,96:4,64:8,128:12 --sequences=16
# 2. The collision-kernel surrogate (unit_softmax.collision_hashes z = 2, 4), 5,000 steps each, then grids
#    (z = 2: stopped after 16 of 36 cells, induction_collision_z2_grid_partial.log; z = 4: the reduced grid with
#    z 2..8, then many tables at z = 4).
W=${W2:-runs/induction_collision}
S="--config.sweep.attention.unit_softmax.beta=(1.0,)"
$PY -m experiments.main --mode=train --config=$I --workdir=$W $S \
    --config.sweep.attention.unit_softmax.collision_hashes='(2,4)' --config.train.steps=5000
$PY -m experiments.main --mode=grid --config=$I --workdir=$W $S --config.sweep.attention.unit_softmax.collision_hashes='(2,)' \
    --config.train.steps=5000 --config.grid.tables_per_layer='((32,64,96),(4,16,32))' --config.grid.draws=3
$PY -m experiments.main --mode=grid --config=$I --workdir=$W $S --config.sweep.attention.unit_softmax.collision_hashes='(4,)' \
    --config.train.steps=5000 --config.grid.tables_per_layer='((32,64,96),(4,16,32))' --config.grid.hashes='(2,4,6,8)' \
    --config.grid.draws=3
$PY -m experiments.main --mode=grid --config=$I --workdir=$W $S --config.sweep.attention.unit_softmax.collision_hashes='(4,)' \
    --config.train.steps=5000 --config.grid.tables_per_layer='((256,1024,4096),(256,1024,4096))' \
    --config.grid.hashes='(4,)' --config.grid.draws=2
# 3. Fine-tuning with anna (Algorithm 1) in the loop from the beta = 10 surrogate: layer 1 64 tables, layer 2 16,
#    z = 3, hashes redrawn every step, lr 1e-3, 2,000 steps (q and k get no gradient; v and the rest learn).
W=${W3:-runs/induction_finetune}
$PY -m experiments.main --mode=train --config=$I --workdir=$W --config.sweep.attention.unit_softmax.beta='()' \
    --config.sweep.attention.kind="('anna',)" --config.train.init_from=${W1:-runs/induction_paper}/runs/khop-unit_softmax-beta=10 \
    --config.attention.anna.resample_hashes=True --config.attention.anna.num_hashes=3 \
    --config.attention.per_layer="({'anna.num_tables':64},{'anna.num_tables':16})" --config.optim.learning_rate=0.001 \
    --config.optim.warmup_steps=100 --config.evaluation.every=500 --config.train.checkpoint_every=500 \
    --config.train.steps=2000
# 4. k-hop (the depth-table config) with the collision-kernel surrogate z = 8 at depth 1..5, then anna in every
#    layer over tables {4, 16, 64} x z {4, 8, 12} x 3 draws on 4,096 fixed test sequences, then the table.
W=${W4:-runs/khop_collision}
C=experiments/configs/khop_depth_table.py
S="--config.sweep.attention.kind=('unit_softmax',) --config.sweep.attention.unit_softmax.collision_hashes=(8,)"
$PY -m experiments.main --mode=train --config=$C --workdir=$W $S
$PY -m experiments.main --mode=grid --config=$C --workdir=$W $S --config.evaluation.test_size=4096 \
    --config.grid.tables_every_layer='(4,16,64)' --config.grid.hashes='(4,8,12)'
$PY -m experiments.khop_table --workdir=$W --out=experiments/results/reasoning/khop_collision --fixed_cell=16,8

# ---- Second session (2026-12-06, same VM): training THROUGH Algorithm 1 (attention.anna.straight_through: anna's
# forward, the collision kernel's gradient for q and k), a sharper collision-kernel surrogate, each pinned to one
# core while the other core ran the k-hop construction (steps/s in the logs are not speed measurements).
ST="--config.sweep.attention.unit_softmax.beta=() --config.sweep.attention.kind=('anna',) --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True"
# 5. Match2 (the make-run config, 3,000 steps) trained through anna l = 8, z = 2; the same with q and k frozen
#    (straight_through=False: anna passes them no gradient); then the quick grid on the first.
Q=experiments/configs/quick_figure1a.py
for through in True False; do
  $PY -m experiments.main --mode=train --config=$Q --workdir=runs/match2_st_$through \
      "--config.sweep.attention.unit_softmax.beta=()" "--config.sweep.attention.kind=('anna',)" \
      --config.attention.anna.straight_through=$through --config.attention.anna.resample_hashes=True \
      --config.attention.anna.num_tables=8 --config.attention.anna.num_hashes=2
done
$PY -m experiments.main --mode=grid --config=$Q --workdir=runs/match2_st_True "--config.sweep.attention.unit_softmax.beta=()" \
    "--config.sweep.attention.kind=('anna',)" --config.attention.anna.straight_through=True \
    --config.attention.anna.resample_hashes=True --config.attention.anna.num_tables=8 --config.attention.anna.num_hashes=2
# 6. Induction heads trained through anna at the paper's cell (32, 4), z = 2, and at (64, 16), z = 4, 5,000 steps
#    from scratch; the reduced grid on the first.
for cell in "2 32 4" "4 64 16"; do set -- $cell
  $PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_st_z$1 $ST --config.attention.anna.num_hashes=$1 \
      "--config.attention.per_layer=({'anna.num_tables':$2},{'anna.num_tables':$3})" --config.train.steps=5000 \
      --config.evaluation.every=1000
done
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_st_z2 $ST --config.attention.anna.num_hashes=2 \
    "--config.attention.per_layer=({'anna.num_tables':32},{'anna.num_tables':4})" --config.train.steps=5000 \
    --config.evaluation.every=1000 "--config.grid.tables_per_layer=((32,64,96),(4,16,32))" --config.grid.draws=3
# 7. k-hop (the depth-table config, depth 1..5) trained through anna, 16 tables x 8 hashes in every layer.
$PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_st "--config.sweep.attention.kind=('anna',)" \
    --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True \
    --config.attention.anna.num_tables=16 --config.attention.anna.num_hashes=8
# 8. Induction heads, the collision-kernel surrogate at z = 16 (near-exact matches), then anna at z 8..20.
S="--config.sweep.attention.unit_softmax.beta=(1.0,) --config.sweep.attention.unit_softmax.collision_hashes=(16,)"
$PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_collision16 $S --config.train.steps=5000
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_collision16 $S --config.train.steps=5000 \
    "--config.grid.tables_per_layer=((32,96,512),(4,32,512))" "--config.grid.hashes=(8,12,16,20)" --config.grid.draws=3
# 9. k-hop (the depth-table config): full attention at depth d, then anna_softmax (4 tables x 3 hashes, window 64)
#    warm-started from it (train.init_from; 5,000 more steps, the config's schedule), d = 2..5; then the table over
#    one workdir holding links to the runs (khop-full-depth=d, khop-anna_softmax_warm-depth=d).
for d in 2 3 4 5; do
  $PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_full "--config.sweep.attention.kind=('full',)" \
      "--config.sweep.model.depth=($d,)"
  $PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_warm_d$d \
      "--config.sweep.attention.kind=('anna_softmax',)" "--config.sweep.model.depth=($d,)" \
      --config.train.init_from=runs/khop_full/runs/khop-full-depth=$d
  mkdir -p runs/khop_warm_all/runs
  ln -sfn "$PWD/runs/khop_full/runs/khop-full-depth=$d" runs/khop_warm_all/runs/khop-full-depth=$d
  ln -sfn "$PWD/runs/khop_warm_d$d/runs/khop-anna_softmax-depth=$d" runs/khop_warm_all/runs/khop-anna_softmax_warm-depth=$d
done
$PY -m experiments.khop_table --workdir=runs/khop_warm_all --out=experiments/results/reasoning/khop_anna_softmax_warm
# 10. Issue 31, second session (2026-12-06, 21:09-23:25 UTC, code at 3fa0f33; the issue-34 refactor moves no
#     number): part 9 at depth 4 and 5 with 30,000 more steps instead of 5,000 (one after the other, one core,
#     `taskset -c 1`), then the control: full attention continued the same way (init_from its own 5k-step run,
#     30,000 more steps; depth 4 and 5 at once, one core each). The full-attention runs are retrained by the
#     part-9 command (same largest k as part 9's; errors differ in the third digit: one core here, two threads
#     there, so XLA sums in another order). The table over one workdir of links.
for d in 4 5; do
  $PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_full "--config.sweep.attention.kind=('full',)" \
      "--config.sweep.model.depth=($d,)"
done
for run in "anna_softmax khop_warm30k" "full khop_full_cont30k"; do set -- $run  # kind, workdir prefix
  for d in 4 5; do
    $PY -m experiments.main --mode=train --config=$C --workdir=runs/$2_d$d \
        "--config.sweep.attention.kind=('$1',)" "--config.sweep.model.depth=($d,)" \
        --config.train.init_from=runs/khop_full/runs/khop-full-depth=$d --config.train.steps=30000 \
        --config.evaluation.every=10000
  done
done
mkdir -p runs/khop_warm30k_all/runs
for d in 4 5; do
  ln -sfn "$PWD/runs/khop_full/runs/khop-full-depth=$d" runs/khop_warm30k_all/runs/khop-full-depth=$d
  ln -sfn "$PWD/runs/khop_full_cont30k_d$d/runs/khop-full-depth=$d" runs/khop_warm30k_all/runs/khop-full_cont30k-depth=$d
  ln -sfn "$PWD/runs/khop_warm30k_d$d/runs/khop-anna_softmax-depth=$d" \
      runs/khop_warm30k_all/runs/khop-anna_softmax_warm30k-depth=$d
done
$PY -m experiments.khop_table --workdir=runs/khop_warm30k_all --out=experiments/results/reasoning/khop_anna_softmax_warm30k
# ---- Third session (2026-12-07, 23:57-02:57 UTC, code at 81b715f; each run pinned to one core, two at once, so the
# steps/s in the logs are not speed measurements).
# 11. Figure 1b: the paper's beta = 1 surrogate with a schedule that lets it converge in CPU time: 1,000 warm-up
#     steps, then a linear decay to 0 at 24,000 steps (the paper's lr 0.01, batch 32, Adam); then the paper's grid
#     (l1 32..96 x l2 4..32 x z 1..4 x 10 draws).
B1="--config.sweep.attention.unit_softmax.beta=(1.0,) --config.train.steps=24000 --config.optim.schedule=linear_decay"
$PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_b1_decay24k $B1
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_b1_decay24k $B1
# 12. k-hop (the depth-table config): anna (Algorithm 1) trained through (straight-through: the collision kernel's
#     gradient for q and k, hashes redrawn every step), warm-started from the 5,000-step full-attention run (part
#     9's), 32 tables x 4 hashes in every layer; 5,000 and 20,000 more steps at depth 4.
#     Then 128 x 8 at depth 3 (full attention retrained there by part 9's command), 4 and 5, 256 x 8 at depth 4 and 3,
#     and the control: 128 x 8 at depth 4 from scratch. (The first run evaluated every 2,500 steps; evaluation does
#     not touch the training state.)
$PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_full "--config.sweep.attention.kind=('full',)" \
    "--config.sweep.model.depth=(3,)"
for run in "4 32 4 5000" "4 32 4 20000" "4 128 8 5000" "5 128 8 5000" "3 128 8 5000" "4 256 8 5000" \
    "3 256 8 5000"; do set -- $run
  $PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_anna_warm_d$1_l$2_z$3_s$4 \
      "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=($1,)" \
      --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True \
      --config.attention.anna.num_tables=$2 --config.attention.anna.num_hashes=$3 \
      --config.train.init_from=runs/khop_full/runs/khop-full-depth=$1 --config.evaluation.every=5000 \
      --config.train.steps=$4
done
$PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_anna_scratch_d4_l128_z8 \
    "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=(4,)" \
    --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True \
    --config.attention.anna.num_tables=128 --config.attention.anna.num_hashes=8 --config.evaluation.every=5000
# 13. The part-11 surrogate fine-tuned THROUGH anna at the paper's cell (layer 1: 32 tables, layer 2: 4, z = 2),
#     straight-through, hashes redrawn every step, lr 1e-3 (100 warm-up steps, linear decay), 2,000 steps; then
#     (32, 96) x (4, 32) at z = 2 with 10 draws.
F="--config.sweep.attention.unit_softmax.beta=() --config.sweep.attention.kind=('anna',)
 --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True
 --config.attention.anna.num_hashes=2 --config.attention.per_layer=({'anna.num_tables':32},{'anna.num_tables':4})
 --config.train.init_from=runs/induction_b1_decay24k/runs/khop-unit_softmax-beta=1 --config.optim.learning_rate=0.001
 --config.optim.warmup_steps=100 --config.optim.schedule=linear_decay --config.train.steps=2000
 --config.evaluation.every=500 --config.train.checkpoint_every=500"
$PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_b1_st_ft $F
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_b1_st_ft $F \
    "--config.grid.tables_per_layer=((32,96),(4,32))" "--config.grid.hashes=(2,)" --config.grid.draws=10
# 14. Training throughput (item 2): benchmarks/scripts/train_step_profile.sh, nothing else running.
# ---- Fourth session (2026-12-07, 03:11-06:10 UTC; each run pinned to one core, two at once).
# 15. Figure 1b. (a) Part 13 gentler: lr 2e-4, 3,000 steps, evaluated every 250 (frozen checkout of 81b715f).
F2=$(echo "$F" | sed 's/learning_rate=0.001/learning_rate=0.0002/; s/steps=2000/steps=3000/; s/every=500/every=250/g')
$PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_b1_st_ft_lr2e-4 $F2
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_b1_st_ft_lr2e-4 $F2 \
    "--config.grid.tables_per_layer=((32,96),(4,32))" "--config.grid.hashes=(2,)" --config.grid.draws=10
#     (b) The swap diagnosis (with the values' growth) of the part-11 surrogate and both fine-tunes.
$PY -m experiments.main --mode=diagnose --config=$I --workdir=runs/induction_b1_decay24k $B1 --cells=32:2,96:2,32:4
$PY -m experiments.main --mode=diagnose --config=$I --workdir=runs/induction_b1_st_ft $F --cells=32:2,96:2,32:4
$PY -m experiments.main --mode=diagnose --config=$I --workdir=runs/induction_b1_st_ft_lr2e-4 $F2 --cells=32:2,96:2,32:4
#     (c) The hand-set circuit through Algorithm 1 (numpy; ran as experiments/induction_ceiling.py, renamed after).
$PY -m experiments.induction_circuit --out=experiments/results/reasoning/induction_circuit
#     (d) The beta = 1 surrogate with a learned value gain (model.value_gain, code at 6a654bc), section 11's recipe
#         with the decay ending at 12,000 and at 24,000 steps (one core each, at once), then the reduced grid.
for steps in 12000 24000; do
  VG="--config.sweep.attention.unit_softmax.beta=(1.0,) --config.model.value_gain=True --config.train.steps=$steps
 --config.optim.schedule=linear_decay"
  $PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_b1_vg_decay$steps $VG
  $PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_b1_vg_decay$steps $VG \
      "--config.grid.tables_per_layer=((32,96),(4,32))" --config.grid.draws=10
done
#     (e) Each fine-tuned through anna at (32, 4), z = 2 as in (a) (lr 2e-4, 100 warm-up steps, linear decay), with
#         the gain: the 12k surrogate 3,000 steps (then the reduced grid at z = 2, then the paper's whole grid on it),
#         the 24k surrogate 2,000 steps (then the reduced grid at z = 2). Then the diagnoses of the gained models.
for run in "12000 3000 runs/induction_b1_vg12000_st_ft" "24000 2000 runs/induction_b1_vg24000_st_ft2000"; do set -- $run
  FV="--config.sweep.attention.unit_softmax.beta=() --config.sweep.attention.kind=('anna',) --config.model.value_gain=True
 --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True
 --config.attention.anna.num_hashes=2 --config.attention.per_layer=({'anna.num_tables':32},{'anna.num_tables':4})
 --config.train.init_from=runs/induction_b1_vg_decay$1/runs/khop-unit_softmax-beta=1 --config.optim.learning_rate=0.0002
 --config.optim.warmup_steps=100 --config.optim.schedule=linear_decay --config.train.steps=$2
 --config.evaluation.every=250 --config.train.checkpoint_every=250"
  W=$3
  $PY -m experiments.main --mode=train --config=$I --workdir=$W $FV
  $PY -m experiments.main --mode=grid --config=$I --workdir=$W $FV \
      "--config.grid.tables_per_layer=((32,96),(4,32))" "--config.grid.hashes=(2,)" --config.grid.draws=10
  [ $1 = 12000 ] && $PY -m experiments.main --mode=grid --config=$I --workdir=$W $FV
  $PY -m experiments.main --mode=diagnose --config=$I --workdir=$W $FV --cells=32:2,96:2,32:4
  $PY -m experiments.main --mode=diagnose --config=$I --workdir=runs/induction_b1_vg_decay$1 \
      "--config.sweep.attention.unit_softmax.beta=(1.0,)" --config.model.value_gain=True --config.train.steps=$1 \
      --config.optim.schedule=linear_decay --cells=32:2,96:2,32:4
done
# 16. k-hop depth 5, part 12's recipe with 256 x 8 tables (frozen checkout of 81b715f).
$PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_anna_warm_d5_l256_z8_s5000 \
    "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=(5,)" \
    --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True \
    --config.attention.anna.num_tables=256 --config.attention.anna.num_hashes=8 \
    --config.train.init_from=runs/khop_full/runs/khop-full-depth=5 --config.evaluation.every=5000 --config.train.steps=5000
# 17. Fifth session: the 24k value-gain surrogate of 15 (d) swapped past the paper's grid (frozen checkout of 6a654bc;
#     its own workdir, whose runs/ is a link to runs/induction_b1_vg_decay24000/runs, so the grid rows stay apart).
mkdir -p runs/induction_b1_vg24000_past_grid
ln -sfn ../induction_b1_vg_decay24000/runs runs/induction_b1_vg24000_past_grid/runs
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_b1_vg24000_past_grid \
    "--config.sweep.attention.unit_softmax.beta=(1.0,)" --config.model.value_gain=True --config.train.steps=24000 \
    --config.optim.schedule=linear_decay \
    "--config.grid.tables_per_layer=((96,192,384),(32,96,384))" "--config.grid.hashes=(2,3,4,6)" --config.grid.draws=10
# 18. k-hop: part 12's recipe (256 x 8 tables) with the learned value gain added at the warm start (it starts at 0,
#     so the model starts computing what the full-attention run did), its rate 1x and 10x the rest's
#     (optim.value_gain_lr_scale); 5,000 steps at depth 1..5, then a new run from each 5,000-step run's parameters
#     (fresh optimiser, the same warm-up and decay) for 15,000 more at depth 4 and 5. One core each, two at once.
vg_run() {  # depth steps gain-rate-scale workdir warm-start-run
  $PY -m experiments.main --mode=train --config=$C --workdir=$4 \
      "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=($1,)" --config.model.value_gain=True \
      --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True \
      --config.attention.anna.num_tables=256 --config.attention.anna.num_hashes=8 --config.optim.learning_rate=0.001 \
      --config.optim.value_gain_lr_scale=$3 --config.train.init_from=$5 --config.evaluation.every=2500 \
      --config.train.steps=$2
}
$PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_full "--config.sweep.attention.kind=('full',)" \
    "--config.sweep.model.depth=(1,)"  # depth 2..5: part 9's command
vg_run 4 5000 1 runs/khop_anna_vg_warm_d4_g1 runs/khop_full/runs/khop-full-depth=4
for d in 4 5 3 2 1; do
  vg_run $d 5000 10 runs/khop_anna_vg_warm_d${d}_g10 runs/khop_full/runs/khop-full-depth=$d
done
for d in 4 5; do
  vg_run $d 15000 10 runs/khop_anna_vg_warm_d${d}_g10_then_s15000 runs/khop_anna_vg_warm_d${d}_g10/runs/khop-anna-depth=$d
done
# The 20,000-step runs evaluated with anna at other tables x hashes (the run's own training flags, so the grid
# reads its checkpoint; 2 draws on 4,096 fixed test sequences): depth 4 over z 6..10, depth 5 at z = 8.
for run in "4 (32,64,128,256,512) (6,8,10)" "5 (64,128,256,512) (8,)"; do set -- $run
  $PY -m experiments.main --mode=grid --config=$C --workdir=runs/khop_anna_vg_warm_d$1_g10_then_s15000 \
      "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=($1,)" --config.model.value_gain=True \
      --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True \
      --config.attention.anna.num_tables=256 --config.attention.anna.num_hashes=8 --config.optim.learning_rate=0.001 \
      --config.optim.value_gain_lr_scale=10 --config.train.init_from=runs/khop_anna_vg_warm_d$1_g10/runs/khop-anna-depth=$1 \
      --config.evaluation.every=2500 --config.train.steps=15000 --config.evaluation.test_size=4096 \
      "--config.grid.tables_every_layer=$2" "--config.grid.hashes=$3" --config.grid.draws=2
done
# The control: section 12's depth-4 (256, 8) run (no gain) continued 15,000 steps the same way.
$PY -m experiments.main --mode=train --config=$C --workdir=runs/khop_anna_warm_d4_l256_z8_s5000_then_s15000 \
    "--config.sweep.attention.kind=('anna',)" "--config.sweep.model.depth=(4,)" \
    --config.attention.anna.straight_through=True --config.attention.anna.resample_hashes=True \
    --config.attention.anna.num_tables=256 --config.attention.anna.num_hashes=8 \
    --config.train.init_from=runs/khop_anna_warm_d4_l256_z8_s5000/runs/khop-anna-depth=4 \
    --config.evaluation.every=2500 --config.train.steps=15000
# The table and heat maps over one workdir of links: full attention (5k) and the final value-gain runs (5k at depth
# 1..3, 20k at depth 4 and 5).
mkdir -p runs/khop_vg_all/runs
for d in 1 2 3 4 5; do
  ln -sfn "$PWD/runs/khop_full/runs/khop-full-depth=$d" runs/khop_vg_all/runs/khop-full-depth=$d
  run=runs/khop_anna_vg_warm_d${d}_g10; [ $d -ge 4 ] && run=${run}_then_s15000
  ln -sfn "$PWD/$run/runs/khop-anna-depth=$d" runs/khop_vg_all/runs/khop-anna_through_vg-depth=$d
done
$PY -m experiments.khop_table --workdir=runs/khop_vg_all --out=experiments/results/reasoning/khop_anna_value_gain_warm
# ---- Seventh session (2026-12-07, 14:40-17:40 UTC; nothing else running during the timings).
# 19. Training throughput (item 2): the profiles and speed tables (train.microbatches, new this session).
sh benchmarks/scripts/train_step_profile.sh
#     Section 15 (d)'s 12k value-gain surrogate again with the automatic microbatches (4 on this CPU), then the same
#     reduced grid: the split gradient trains a model as good as the unsplit one (a first try of 2,000 steps was
#     stopped and resumed by the same command; it ran with --workdir=/tmp/tp/runs/vg12k_micro).
VG="--config.sweep.attention.unit_softmax.beta=(1.0,) --config.model.value_gain=True --config.train.steps=12000
 --config.optim.schedule=linear_decay"
$PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_b1_vg_decay12000_microbatches $VG
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_b1_vg_decay12000_microbatches $VG \
    "--config.grid.tables_per_layer=((32,96),(4,32))" --config.grid.draws=10
# 20. Figure 1b: section 15's recipe at 36,000 steps (automatic microbatches), then the same reduced grid (it ran with
#     --workdir=/tmp/tp/runs/vg36k).
VG="--config.sweep.attention.unit_softmax.beta=(1.0,) --config.model.value_gain=True --config.train.steps=36000
 --config.optim.schedule=linear_decay"
$PY -m experiments.main --mode=train --config=$I --workdir=runs/induction_b1_vg_decay36000 $VG
$PY -m experiments.main --mode=grid --config=$I --workdir=runs/induction_b1_vg_decay36000 $VG \
    "--config.grid.tables_per_layer=((32,96),(4,32))" --config.grid.draws=10
