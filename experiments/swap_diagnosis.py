"""Why a swap fails: per layer and head, the trained surrogate's attention beside ANNA's collision weights.

  python -m experiments.main --mode=diagnose --config=CONFIG --workdir=DIR [--cells=16:4,128:10] [--sequences=64]

For every run of the config's sweep that has a checkpoint (its latest), on the first `sequences` sequences of its fixed test set, each layer
is fed the surrogate's own residual stream (so layers are judged one at a time, not through each other's errors)
and its unit-normalised queries and keys give, per layer and head, averaged over real queries:
- the reference weights: the surrogate's softmax (unit_softmax layers) or, for a layer trained through anna, the
  weights Algorithm 1 averages to (p^z / sum p^z, p = 1 - angle / pi: its straight-through kernel);
- top weight: the reference's largest attention weight (1: one key; 1 / (keys seen): uniform);
- cos top, gap: the cosine of q to its top key, and that minus the largest cosine to any other key it sees (the
  margin angular LSH must resolve: hyperplane hashes collide with probability 1 - angle / pi per hash);
- per cell (l tables x z hashes, one draw): overlap = sum_j min(w_ij, a_ij) between the surrogate's weights w and
  ANNA's a_ij = c_ij / sum_j' c_ij' (1: the same distribution; 0: disjoint), top kept = a on the surrogate's
  top key, alone = the share of queries with no collision (ANNA outputs zeros there);
- value range: x in e^x, the growth of the values' norm over the sequence (the least-squares slope of the mean
  log |v_q| against the position q, times N - 1). Averaging attentions (Algorithm 1 above all, whose weights know
  no position) can prefer recent keys through values that grow with q (experiments/induction_circuit.py).
Writes swap_diagnosis.md and swap_diagnosis.jsonl in the workdir and prints the table.
"""

import json
import os

import jax
import jax.numpy as jnp
from absl import flags, logging

from anna_jax import oracle
from anna_jax.anna import ANNAConfig, draw_projections
from anna_jax.baselines import collision_kernel_weights, unit_norm
from anna_jax.tooling import write_atomic
from experiments import checkpoints, records
from experiments.evaluation import Evaluator


def define_flags():
  return {
      'cells': flags.DEFINE_list('cells', ['16:4', '128:10'], 'ANNA cells tables:hashes to compare with.'),
      'sequences': flags.DEFINE_integer('sequences', 64, 'Test sequences (from the start of the fixed test set).'),
  }


def parse_cells(cells):
  try:
    parsed = [tuple(int(part) for part in cell.split(':')) for cell in cells]
  except ValueError:
    parsed = []
  if not parsed or any(len(c) != 2 or c[0] < 1 or c[1] < 0 for c in parsed):
    raise ValueError(f'--cells must be tables:hashes pairs with tables >= 1, hashes >= 0, got {",".join(cells)}')
  return parsed


def restore_model(x, run_dir):
  """The trained Transformer of the run in run_dir (records.StaleRun if trained with other settings)."""
  records.check(run_dir, x, what='grid')
  model, step = checkpoints.trained_model(x, run_dir)
  return model, Evaluator(x).test_set, step


def reference_weights(cos, seen, attention):
  """(batch, heads, n, n): the softmax a unit_softmax layer computes, or the expected weights of an anna layer."""
  if attention.kind == 'unit_softmax' and not attention.unit_softmax.collision_hashes:
    return jax.nn.softmax(jnp.where(seen, attention.unit_softmax.beta * cos, -jnp.inf), axis=-1)
  if attention.kind in ('unit_softmax', 'anna'):  # the collision kernel, trained as such or through anna
    z = attention.unit_softmax.collision_hashes if attention.kind == 'unit_softmax' else attention.anna.num_hashes
    return collision_kernel_weights(cos, z, seen)
  raise ValueError(f'the diagnosis compares a unit_softmax surrogate or an anna-trained layer with anna, not '
                   f'{attention.kind!r}')


def value_range(v):
  """Per head: x of e^x, the fitted growth of log |v_q| over positions 0..N-1 (mean over the batch)."""
  log_norm = jnp.mean(jnp.log(jnp.linalg.norm(v.astype(jnp.float32), axis=-1) + 1e-30), axis=0)  # (n, heads)
  q = jnp.arange(v.shape[1], dtype=jnp.float32) - (v.shape[1] - 1) / 2
  slope = jnp.sum(q[:, None] * (log_norm - jnp.mean(log_norm, 0)), 0) / jnp.sum(q ** 2)
  return slope * (v.shape[1] - 1)


def layer_rows(q, k, v, attention, causal, cells, key):
  """The metrics of the module docstring for one layer: one dict per head."""
  q, k = unit_norm(q.astype(jnp.float32)), unit_norm(k.astype(jnp.float32))
  n, heads, dim = q.shape[1], q.shape[2], q.shape[3]
  cos = jnp.einsum('bqhd,bkhd->bhqk', q, k)
  seen = jnp.tril(jnp.ones((n, n), bool)) if causal else jnp.ones((n, n), bool)
  weights = reference_weights(cos, seen, attention)
  top = jnp.argmax(weights, axis=-1)  # (batch, heads, n)
  cos_top = jnp.take_along_axis(cos, top[..., None], -1)[..., 0]
  others = jnp.where(seen & (jnp.arange(n)[None, None, None, :] != top[..., None]), cos, -jnp.inf)
  runner_up = jnp.max(others, axis=-1)
  gap = jnp.where(jnp.isfinite(runner_up), cos_top - runner_up, jnp.nan)
  growth = value_range(v)
  rows = [{'head': h, 'top_weight': float(jnp.mean(jnp.max(weights[:, h], -1))),
           'cos_top': float(jnp.mean(cos_top[:, h])), 'gap': float(jnp.nanmean(gap[:, h])),
           'value_range': float(growth[h])} for h in range(heads)]
  for i, (tables, hashes) in enumerate(cells):
    config = ANNAConfig(num_tables=tables, num_hashes=hashes)
    projections = draw_projections(jax.random.fold_in(key, i), heads, dim, config)
    counts = oracle.collision_counts(q, k, projections, 'hyperplane', causal=causal).astype(jnp.float32)
    total = jnp.sum(counts, -1, keepdims=True)
    anna = counts / jnp.maximum(total, 1.0)
    overlap = jnp.sum(jnp.minimum(weights, anna), -1)
    kept = jnp.take_along_axis(anna, top[..., None], -1)[..., 0]
    for h in range(heads):
      rows[h][f'{tables}:{hashes}'] = {'overlap': float(jnp.mean(overlap[:, h])),
                                       'top_kept': float(jnp.mean(kept[:, h])),
                                       'alone': float(jnp.mean(total[:, h] == 0))}
  return rows


def diagnose(x, run_dir, cells, sequences, seed=0):
  """Rows (one per layer and head) for the run in run_dir."""
  model, test_set, step = restore_model(x, run_dir)
  tokens = test_set['tokens'][:sequences]
  inputs = []
  model(tokens, attention_inputs=inputs)
  rows = []
  for layer, (q, k, v) in enumerate(inputs):
    key = jax.random.fold_in(jax.random.key(seed), layer)
    for row in layer_rows(q, k, v, x.model.attention_of(layer), x.model.causal, cells, key):
      rows.append({'layer': layer + 1, 'step': step, **row})
  return rows


def markdown(name, rows, cells):
  lines = [f'## {name} (step {rows[0]["step"]})', '',
           '| layer | head | top weight | cos top | gap | value range | ' + ' | '.join(
               f'{c[0]}x{c[1]}: overlap / top kept / alone' for c in cells) + ' |',
           '|---|---|---|---|---|---|' + '---|' * len(cells)]
  for r in rows:
    per_cell = [r[f'{t}:{z}'] for t, z in cells]
    lines.append(f'| {r["layer"]} | {r["head"]} | {r["top_weight"]:.3f} | {r["cos_top"]:.3f} | {r["gap"]:.3f} | '
                 f'e^{r["value_range"]:.2f} | '
                 + ' | '.join(f'{c["overlap"]:.3f} / {c["top_kept"]:.3f} / {c["alone"]:.3f}' for c in per_cell)
                 + ' |')
  return '\n'.join(lines) + '\n'


def run(config, workdir, points, cells, sequences):
  """Diagnoses every finished run of the sweep; writes and returns the markdown."""
  sections, records_out = [], []
  for name, x in points:
    run_dir = os.path.join(workdir, 'runs', name)
    checkpoints = os.path.join(run_dir, 'checkpoints')
    if not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
      logging.warning('swap diagnosis: %s has no checkpoint; skipped', name)
      continue
    rows = diagnose(x, run_dir, cells, sequences, seed=x.grid.seed)
    sections.append(markdown(name, rows, cells))
    records_out += [{'run': name, **r} for r in rows]
  text = '# Swap diagnosis: the surrogate\'s attention beside ANNA\'s collision weights\n\n' + '\n'.join(sections)
  if jax.process_index() == 0 and records_out:
    write_atomic(os.path.join(workdir, 'swap_diagnosis.md'), text)
    write_atomic(os.path.join(workdir, 'swap_diagnosis.jsonl'), ''.join(json.dumps(r) + '\n' for r in records_out))
  return text

