"""A hand-set two-layer induction-heads circuit run through Algorithm 1: what ANNA can do at the paper's cells.

  python -m experiments.induction_circuit --out=experiments/results/reasoning/induction_circuit

Why: the trained surrogates swap to 0.31-0.43 at (32, 4), z = 2 (the paper: about 0.2). This asks whether the
paper's cells allow 0.2 at all, with weights set by hand instead of trained (numpy, nothing trained).

The circuit (1-hop induction heads, N = 100, alphabet 4, the task's own k = 1 sequences):
- Layer 1 (previous symbol): query p is the position code e(p - 1), key q the code e(q) (a 2-D rotation by omega1
  per position), value the one-hot symbol x_q scaled by exp(rate1 * q); the read-out takes the arg max of the
  averaged values over every symbol but x_p (the query's own, which no immediate repeat allows as x_{p-1}).
- Layer 2 (induction): query [a s(x_p), b e(p)], key q [a s(x_{q-1}), b e(q)] with s the symbol codes on a regular
  simplex (cosine -1/3 between symbols) and e a position code (profile 'exp': cosine exp(-d / tau), the Cholesky
  factor of its Gram matrix; 'rotation': cos(omega d)), a^2 + b^2 = 1; value the one-hot x_q scaled by
  exp(rate * q); read-out: the arg max over symbols but x_p.
Each layer is Algorithm 1 with causal keys (q <= p; layer 2 from q = 1): weights c_pq / sum c_pq from l tables of
z random hyperplanes (or their expectation (1 - angle / pi)^z, l -> inf); a query with no collision reads zeros and
counts wrong. Angles alone can favour recent keys only weakly at small z; the value scale exp(rate * q) is the
other way an average over keys can prefer the most recent one, at the price of a dynamic range exp(rate * (N - 1))
in the values. Parameters are fitted on `fit` sequences with expected weights (layer 1 for the previous-symbol
accuracy, layer 2 on the exact previous symbol), then every cell is measured on `test` other sequences with the
paper's metric (error over every symbol token; the circuit has no "none" output, so "none" targets, about 4% of
tokens, count wrong).
"""

import json
import os

import numpy as np
from absl import app, flags

from anna_jax.tasks import KHop
from anna_jax.tooling import fail, flags_parser, write_atomic

def define_flags():
  """This program's flags (defined when it runs, so importing the module for its functions defines none)."""
  return {
      'out': flags.DEFINE_string('out', None, 'Output prefix: writes OUT.md and OUT.jsonl.'),
      'hashes': flags.DEFINE_list('hashes', ['1', '2', '3', '4', '8'], 'Hashes per table z.'),
      'cells': flags.DEFINE_list('cells', ['32:4', '96:32'], 'Sampled (layer-1 tables:layer-2 tables) cells.'),
      'fit': flags.DEFINE_integer('fit', 200, 'Fit sequences.'),
      'test': flags.DEFINE_integer('test', 100, 'Test sequences.'),
      'draws': flags.DEFINE_integer('draws', 10, 'Hash draws per sampled cell.'),
      'seed': flags.DEFINE_integer('seed', 0, 'Data and hash seed.'),
  }


FLAGS = {}  # set by define_flags() when run as a program
TASK = KHop(n=100, alphabet=4, max_k=1)
MIXES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)  # a^2: symbol share of layer 2's q, k
RATES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.8)  # value recency exp(rate * q); 0: angles alone
ROTATIONS = tuple(np.pi / s for s in (200, 100, 50, 25, 12, 6, 3))
PROFILES = {'exp': (0.5, 1, 2, 4, 8, 16, 32, 64), 'rotation': ROTATIONS}


def sequences(seed, size):
  """Symbols (size, n) and 1-hop targets (size, n) of the task's k = 1 sequences (leading k token dropped)."""
  batch = TASK.test_set(seed, size, k=1, every_token=True)
  return np.asarray(batch['tokens'])[:, 1:], np.asarray(batch['targets'])[:, 1:]


def position_codes(profile, scale, positions):
  """Unit codes (len, dim) with cosine rho(p - q) between positions p and q."""
  positions = np.asarray(positions, float)
  if profile == 'rotation':
    return np.stack([np.cos(scale * positions), np.sin(scale * positions)], -1)
  d = np.abs(positions[:, None] - positions[None, :])
  return np.linalg.cholesky(np.exp(-d / scale) + 1e-9 * np.eye(len(positions)))


def symbol_codes():
  simplex = np.eye(TASK.alphabet) - 1.0 / TASK.alphabet  # cosine -1 / (alphabet - 1) between symbols
  return simplex / np.linalg.norm(simplex, axis=-1, keepdims=True)


def collision_weights(q, k, keys, z, tables, rng):
  """Algorithm 1's weights c_pq (unnormalised): counts over `tables` tables of z hyperplanes, or, with tables = 0,
  the expected count per table (1 - angle / pi)^z."""
  if not tables:
    cos = np.clip(np.einsum('...pd,...qd->...pq', q, k), -1, 1)
    return np.where(keys, (1 - np.arccos(cos) / np.pi) ** z, 0.0)
  planes = rng.standard_normal((tables, z, q.shape[-1]))
  bucket = lambda v: (np.einsum('...d,tzd->...tz', v, planes) > 0) @ (2 ** np.arange(z))
  counts = (bucket(q)[..., :, None, :] == bucket(k)[..., None, :, :]).sum(-1)
  return np.where(keys, counts, 0).astype(float)


def read_out(x, weights, rate):
  """Arg max of sum_q w_pq onehot(x_q) exp(rate q) over the symbols but x_p; -1 where nothing collided."""
  n = x.shape[-1]
  values = np.eye(TASK.alphabet)[x] * np.exp(rate * (np.arange(n) - n + 1.0))[:, None]
  votes = np.einsum('...pq,...qs->...ps', weights, values)
  votes = np.where(np.eye(TASK.alphabet, dtype=bool)[x], -1.0, votes)
  return np.where(weights.sum(-1) > 0, np.argmax(votes, -1), -1)


def causal(n, first_key):
  return (np.arange(n)[None, :] >= first_key) & (np.arange(n)[None, :] <= np.arange(n)[:, None])


def layer1_weights(x, omega, z, tables, rng):
  """Layer 1's collision weights: query p is the code of p - 1, key q the code of q."""
  n = x.shape[-1]
  q = np.broadcast_to(position_codes('rotation', omega, np.arange(n) - 1), x.shape + (2,))
  k = np.broadcast_to(position_codes('rotation', omega, np.arange(n)), x.shape + (2,))
  return collision_weights(q, k, causal(n, 0), z, tables, rng)


def layer1(x, omega, rate, z, tables, rng):
  """The previous symbol of every position (p = 0 reads garbage; layer 2 never uses it)."""
  return read_out(x, layer1_weights(x, omega, z, tables, rng), rate)


def layer2_weights(x, prev, mix, profile, scale, z, tables, rng):
  """Layer 2's collision weights: query [a s(x_p), b e(p)], key [a s(prev_q), b e(q)], keys from q = 1."""
  n, s = x.shape[-1], symbol_codes()
  e = position_codes(profile, scale, np.arange(n))
  e = np.broadcast_to(e, x.shape + e.shape[-1:])
  q = np.concatenate([np.sqrt(mix) * s[x], np.sqrt(1 - mix) * e], -1)
  k = np.concatenate([np.sqrt(mix) * s[np.maximum(prev, 0)], np.sqrt(1 - mix) * e], -1)
  return collision_weights(q, k, causal(n, 1), z, tables, rng)


def layer2(x, prev, params, z, tables, rng):
  mix, profile, scale, rate = params
  return read_out(x, layer2_weights(x, prev, mix, profile, scale, z, tables, rng), rate)


def true_previous(x):
  return np.concatenate([np.zeros(x.shape[:-1] + (1,), int), x[..., :-1]], -1)


def fit_layer1(x, z):
  """(accuracy, omega, rate): the smallest value recency within 0.001 of the best previous-symbol accuracy."""
  prev, tried = true_previous(x)[:, 1:], []
  for w in ROTATIONS:
    weights = layer1_weights(x, w, z, 0, None)  # the rate only scales values: one kernel per omega
    tried += [(float(np.mean(read_out(x, weights, r)[:, 1:] == prev)), w, r) for r in RATES]
  top = max(a for a, _, _ in tried)
  return min((t for t in tried if t[0] >= top - 1e-3), key=lambda t: (t[2], -t[0]))


def fit_layer2(x, targets, z):
  """Per value-recency rate: (error, params) of the best (mix, profile, scale) with the exact previous symbol
  (the first met, in MIXES, PROFILES order, on a tie)."""
  prev, best = true_previous(x), {}
  for mix in MIXES:
    for profile, scales in PROFILES.items():
      for scale in scales:
        weights = layer2_weights(x, prev, mix, profile, scale, z, 0, None)  # one kernel for every rate
        for rate in RATES:
          e = float(np.mean(read_out(x, weights, rate) != targets))
          if rate not in best or e < best[rate][0]:
            best[rate] = (e, (mix, profile, scale, rate))
  return best


def parsed_settings():
  """(hashes, cells) from the flags; a one-line error for anything malformed."""
  try:
    hashes = [int(z) for z in FLAGS['hashes'].value]
    cells = [tuple(int(v) for v in c.split(':')) for c in FLAGS['cells'].value]
  except ValueError:
    hashes, cells = [], []
  if not hashes or min(hashes) < 1 or not cells or any(len(c) != 2 or min(c) < 1 for c in cells):
    fail('--hashes needs integers >= 1 and --cells pairs l1:l2 of integers >= 1', 'induction_circuit')
  if min(FLAGS['fit'].value, FLAGS['test'].value, FLAGS['draws'].value) < 1:
    fail('--fit, --test and --draws must be >= 1', 'induction_circuit')
  return hashes, cells


def main(_):
  hashes, cells = parsed_settings()
  seed, draws, out = FLAGS['seed'].value, FLAGS['draws'].value, FLAGS['out'].value
  fit_x, fit_t = sequences(seed + 1, FLAGS['fit'].value)
  test_x, test_t = sequences(seed + 2, FLAGS['test'].value)
  rows = []
  for z in hashes:
    accuracy1, omega1, rate1 = fit_layer1(fit_x, z)
    for rate, (_, params) in fit_layer2(fit_x, fit_t, z).items():
      rng = np.random.default_rng(seed)
      err = lambda prev, l2: float(np.mean(layer2(test_x, prev, params, z, l2, rng) != test_t))
      row = {'z': z, 'layer1': {'omega': omega1, 'rate': rate1, 'fit_accuracy': accuracy1},
             'layer2': dict(zip(('mix', 'profile', 'scale', 'rate'), params)),
             'exact_layer1_expected': err(true_previous(test_x), 0),
             'both_expected': err(layer1(test_x, omega1, rate1, z, 0, None), 0)}
      for l1, l2 in cells:
        errors = [err(layer1(test_x, omega1, rate1, z, l1, rng), l2) for _ in range(draws)]
        row[f'{l1}:{l2}'] = (float(np.mean(errors)), float(np.std(errors)))
      rows.append(row)
      print(json.dumps(row), flush=True)
  text = report(rows, cells, test_x.shape[-1], float(np.mean(test_t == TASK.alphabet)))
  print(text)
  if out:
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    write_atomic(out + '.md', text)
    write_atomic(out + '.jsonl', ''.join(json.dumps(r) + '\n' for r in rows))


def report(rows, cells, n, none):
  head = (['z', 'layer-2 value recency (range)', 'layer 2: a^2, profile (scale)', 'layer 1: omega, rate',
           'exact layer 1, l -> inf', 'both layers, l -> inf'] + [f'({l1}, {l2})' for l1, l2 in cells])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    two, one = r['layer2'], r['layer1']
    recency = f"{two['rate']} (e^{two['rate'] * (n - 1):.0f})" if two['rate'] else 'none'
    sampled = [f"{r[f'{l1}:{l2}'][0]:.3f} +- {r[f'{l1}:{l2}'][1]:.3f}" for l1, l2 in cells]
    lines.append(f"| {r['z']} | {recency} | {two['mix']}, {two['profile']} ({two['scale']:.3g}) | "
                 f"{one['omega']:.3g}, {one['rate']} | {r['exact_layer1_expected']:.3f} | {r['both_expected']:.3f} | "
                 + ' | '.join(sampled) + ' |')
  return (f'Error over every symbol token of the test sequences (N = {n}, alphabet {TASK.alphabet}, k = 1; "none" '
          f'targets, {none:.3f} of tokens, count wrong: the circuit has no "none" output). Parameters fitted with '
          f'expected weights on other sequences; sampled cells: mean +- std over hash draws.\n\n'
          + '\n'.join(lines) + '\n')


if __name__ == '__main__':
  FLAGS.update(define_flags())
  app.run(main, flags_parser=flags_parser('induction_circuit'))
