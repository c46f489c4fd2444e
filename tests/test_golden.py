"""Golden regression: a tiny config's first losses and final errors, recorded on this CPU (jax 0.10.2).

If this fails after a change that is MEANT to move these numbers (a new initialisation, a different data
stream, a changed loss), re-record them with `python tests/test_golden.py` and say why in the commit. If the
change was not meant to move them, the failure is a regression: find it.
"""

import jax.numpy as jnp
import numpy as np

from experiments import experiment, train
from experiments.configs import match2_paper

GOLDEN = {
    'losses': [0.7291918396949768, 0.8101306557655334, 0.5805287957191467, 0.6082380414009094,
               0.7706236839294434, 0.68671053647995, 0.8348290324211121, 0.7818533182144165],
    'surrogate_error': 0.453125,  # unit_softmax, on the fixed 32-sequence test set
    'anna_error': 0.4375,  # the same weights with Algorithm 1 (4 tables, 1 hash) swapped in
}


TINY = dict(train_size=64, test_size=32, steps=8, batch_size=8, warmup_steps=2, num_tables=4)
# A second tiny run that learns (the one above stays at chance after 8 steps, so its errors cannot show a model
# that learns the wrong thing): 300 steps on 256 fixed sequences; 64 test sequences x 8 tokens.
LEARNING = dict(train_size=256, test_size=64, steps=300, batch_size=16, warmup_steps=20, num_tables=8)
LEARNED = {'surrogate_error': 0.064453125, 'anna_error': 0.232421875}  # chance: about 0.5
TOKEN = 1 / (64 * 8)  # one test token: the tolerance allows a few tokens to flip on another CPU


def tiny_config(eval_attention='', *, train_size, test_size, steps, batch_size, warmup_steps, num_tables):
  """Match2 at n = 8, M = 11, width 16, lr 0.01; evaluated with `eval_attention` (anna: num_tables x 1 hash)."""
  c = match2_paper.get_config()
  c.task.match2.n, c.task.match2.modulus, c.model.width, c.train.train_size = 8, 11, 16, train_size
  c.evaluation.test_size = test_size
  c.train.steps, c.train.batch_size, c.optim.warmup_steps, c.optim.learning_rate = steps, batch_size, warmup_steps, 0.01
  c.evaluation.attention, c.attention.anna.num_tables, c.attention.anna.num_hashes = eval_attention, num_tables, 1
  return experiment.build(c)


def golden_numbers(sizes=TINY):
  """Losses of every step, and the test errors of the surrogate and of anna swapped in, after sizes['steps']."""
  trainer = train.Trainer(tiny_config(**sizes))
  state, losses = trainer.initial_state, []
  for step in range(sizes['steps']):
    state, metrics = trainer.train_step(state, jnp.int32(step), trainer.train_set)
    losses.append(metrics['loss'])  # read once at the end: no host sync per step
  losses = [float(loss) for loss in losses]
  surrogate = trainer.evaluate(state)['eval/error']
  anna = train.Trainer(tiny_config(eval_attention='anna', **sizes)).evaluate(state)['eval/error']
  return {'losses': losses, 'surrogate_error': surrogate, 'anna_error': anna}


def test_golden_losses_and_errors():
  got = golden_numbers()
  message = ('golden numbers moved; update GOLDEN in tests/test_golden.py only if the change was meant to '
             f'move them (got {got})')
  np.testing.assert_allclose(got['losses'], GOLDEN['losses'], rtol=2e-4, err_msg=message)
  assert abs(got['surrogate_error'] - GOLDEN['surrogate_error']) < 1e-9, message
  assert abs(got['anna_error'] - GOLDEN['anna_error']) < 1e-9, message


def test_golden_model_that_learns():
  got = golden_numbers(LEARNING)
  assert got['surrogate_error'] < 0.15 and got['anna_error'] < 0.35, got  # far below chance
  assert abs(got['surrogate_error'] - LEARNED['surrogate_error']) <= 4 * TOKEN, got
  assert abs(got['anna_error'] - LEARNED['anna_error']) <= 8 * TOKEN, got


if __name__ == '__main__':
  print(golden_numbers(), golden_numbers(LEARNING))
