"""The constructed Match2 model (Theorem 5.2, weights set, not trained), the modulus rule, and the reports of
the N-scaling experiments."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anna_jax import constructions, lsh
from anna_jax.anna import ANNAConfig
from anna_jax.tasks import Match2, balanced_match2_tokens, match2_labels, match2_modulus
from experiments import match2_construction, n_scaling, records

N = 64
MODULUS = match2_modulus(N)  # 79


@pytest.fixture(scope='module')
def construction():
  return constructions.build(MODULUS, width=32, seed=0)


@pytest.fixture(scope='module')
def data():
  tokens = jnp.asarray(balanced_match2_tokens(0, 4, N, MODULUS))
  return tokens, match2_labels(tokens, MODULUS)


def anna_error(construction, data, tables, hashes, draw):
  tokens, labels = data
  config = ANNAConfig(num_tables=tables, num_hashes=hashes)
  projections = constructions.draw(construction, jax.random.key(draw), config)
  predictions, _ = constructions.anna_forward(construction, tokens, projections, config)
  return float(jnp.mean(predictions != labels)), projections


def test_modulus_rule_is_the_papers_ratio_rounded_up_to_a_prime():
  assert [match2_modulus(n) for n in (32, 64, 128, 256, 512)] == [37, 79, 149, 307, 593]
  assert Match2(n=128, modulus=0).modulus == 149 and Match2(n=128, modulus=11).modulus == 11


def test_labels_scale_and_equal_the_pairwise_definition():
  x = jax.random.randint(jax.random.key(0), (3, 50), 0, 23)
  pairwise = jnp.any((x[:, :, None] + x[:, None, :]) % 23 == 0, axis=-1)
  np.testing.assert_array_equal(match2_labels(x, 23), pairwise)


def test_construction_is_exact_when_distinct_residues_never_share_a_bucket(construction, data):
  # The argument: a query is the key vector of its partner residue (same float vector, so the same bucket in
  # every table). If the M residues' vectors have M distinct codes in each table, a query's buckets hold
  # exactly its partners: o_i = e(-x_i) (score 1 > threshold) or nothing (score 0). So zero error, every token.
  assert construction.max_false_cosine < construction.threshold < 1
  error, projections = anna_error(construction, data, tables=2, hashes=24, draw=0)
  residues = jnp.asarray(construction.table)[None, :, None, :]
  codes = np.asarray(lsh.hash_codes(residues, projections, 'hyperplane'))[0, 0]  # (tables, M)
  assert all(len(set(table.tolist())) == MODULUS for table in codes)  # the precondition holds for this draw
  assert error == 0.0
  tokens, labels = data
  np.testing.assert_array_equal(constructions.softmax_forward(construction, tokens, block=16), labels)


def test_error_rises_when_too_few_hashes_separate_the_residues(construction, data):
  # z = 2: 4 buckets per table for 79 residues, so a partner shares its bucket with about a quarter of the
  # sequence and is outweighed. A wrong construction (partners not colliding, or a read-out that ignores the
  # attention) would not show this rise from zero.
  coarse = np.mean([anna_error(construction, data, 1, 2, d)[0] for d in range(3)])
  fine = np.mean([anna_error(construction, data, 1, 24, d)[0] for d in range(3)])
  assert coarse > 0.2 and fine == 0.0


def test_construction_refuses_a_composite_modulus_or_odd_width():
  with pytest.raises(ValueError, match='prime'):
    constructions.build(77)
  with pytest.raises(ValueError, match='even'):
    constructions.build(79, width=5)


def test_construction_runner_rows_and_reports(tmp_path):
  rows = list(match2_construction.evaluate_n(16, [1], [1, 12], draws=2, seed=0, width=16, softmax_up_to=16))
  assert [r['kind'] for r in rows] == ['softmax', 'anna', 'anna']
  assert rows[0]['error'] == 0.0 and rows[2]['mean'] <= rows[1]['mean']
  done = {match2_construction.row_key(r) for r in rows}
  assert not list(match2_construction.evaluate_n(16, [1], [1, 12], 2, 0, 16, 16, done))  # a rerun skips them
  table = match2_construction.write_reports(str(tmp_path), rows, tolerance=0.01)
  assert rows[1]['mean'] > 0.2 and rows[2]['mean'] == 0.0  # z = 1: 2 buckets for 19 residues; z = 12 separates
  assert (table[0]['cheapest']['tables'], table[0]['cheapest']['hashes']) == (1, 12)
  assert (tmp_path / 'construction.png').stat().st_size > 0
  assert '| 2^4 | 19 |' in (tmp_path / 'construction.md').read_text()


def grid_row(n, tables, hashes, mean, surrogate):
  return records.GridCell(run=f'match2-unit_softmax-n={n}', step=100, tables=(tables,), hashes=hashes, mean=mean,
                          std=0.0, draws=3, errors=(mean,), surrogate_error=surrogate, no_collision_fraction=0.1,
                          mean_collisions=2.0, attention='unit_softmax', beta=3.0, settings={'task.match2.n': n})


def test_n_scaling_picks_the_cheapest_cell_near_the_surrogate_or_the_best():
  rows = [grid_row(32, 8, 1, 0.005, 0.0), grid_row(32, 2, 1, 0.3, 0.0), grid_row(32, 16, 2, 0.0, 0.0),
          grid_row(64, 4, 3, 0.2, 0.0), grid_row(64, 8, 3, 0.105, 0.0), grid_row(64, 64, 3, 0.1, 0.0)]
  table, _ = n_scaling.summarise(rows, tolerance=0.01)
  first, second = table
  assert (first['n'], first['modulus'], first['cheapest']['tables'], first['cheapest']['within']) == (
      32, 37, 8, 'surrogate')  # cost 16 beats (16, 2) at cost 48
  assert (first['best']['tables'], first['best']['hashes']) == (16, 2)
  # N = 64: nothing within 0.01 of the surrogate; the cheapest within 0.01 of the best (0.1) is (8, 3).
  assert (second['cheapest']['tables'], second['cheapest']['within']) == (8, 'best')
  text = n_scaling.markdown(table, 0.01)
  assert '| 64 | 79 | 100 | 0.0000 | 3 x 3 |' in text and 'l ~ N^' in text  # both surrogates solve: slopes fitted
  unsolved, _ = n_scaling.summarise([dataclasses.replace(r, surrogate_error=0.2) if r.tables == (4,) else r for r in rows],
                                   0.01)
  assert 'No fit: 1 N' in n_scaling.markdown(unsolved, 0.01)  # one N's surrogate errs 20%: no slope from one N


def test_n_scaling_z_needed_keeps_to_the_many_hashes_regime():
  # l = 4: at N = 32 a dip at z = 1 (large buckets) does not count, z = 3 onwards stays under 0.05; at N = 64 z = 4.
  errors = {32: {1: 0.04, 2: 0.3, 3: 0.04, 4: 0.03}, 64: {1: 0.04, 2: 0.3, 3: 0.2, 4: 0.04}}
  rows = [grid_row(n, 4, z, e, 0.01) for n, by_z in errors.items() for z, e in by_z.items()]
  rows += [grid_row(n, 2, 4, 0.06, 0.01) for n in errors]  # l = 2 never reaches 0.05
  table, by_n = n_scaling.summarise(rows, tolerance=0.01)
  needed = n_scaling.hashes_needed(table, by_n, 0.05)
  assert needed == {4: {32: 3, 64: 4}}
  assert n_scaling.z_slopes(needed) == pytest.approx({4: 1.0})
  text = n_scaling.markdown(table, 0.01, needed)
  assert '| 64 | 4 |' in text and 'l = 4: s = 1.00' in text
