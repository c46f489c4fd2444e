"""The paper's reasoning tasks, Match2 and k-hop induction heads: seeded, jittable samplers and labelers, and
how each is evaluated.

A batch is a dict of (batch, length) arrays:
  tokens: model input; targets: per-token class;
  loss_mask: positions trained on; eval_mask: positions counted in the error;
  k: (batch,) the hop count of each sequence (k-hop only).

A task owns its data and its evaluation (the trainer and the grid call these, never `task.name`):
  sample(key, batch_size)                training batches of fresh sequences
  train_set(seed, size)                  a fixed training set, where `fixed_training_set` says the task has one
  test_set(seed, size, k, every_token)   a fixed test set
  eval_groups(k), eval_batch(key, batch_size, group, every_token): fresh evaluation batches, group by group
  counts(batch, wrong)                   extra integer counts summed inside the evaluation step
  results(counts)                        the task's own result entries from those sums (k-hop: errors per k)
  validate_evaluation(k)                 ValueError for an evaluation setting the task cannot run
`k` and `every_token` are the evaluation section's k (-1: every k) and error_over == 'all' (k-hop's; Match2
ignores them).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


SOLVED_ERROR = 0.05  # a k is "solved" when its error is below 5%, as in the paper


def max_k_solved(per_k):
  """Largest k with every k' <= k below SOLVED_ERROR; -1 if none. per_k: {k: error}."""
  solved = -1
  while solved + 1 in per_k and per_k[solved + 1] < SOLVED_ERROR:
    solved += 1
  return solved


def match2_labels(x, modulus):
  """Label_i = 1 iff some j (j = i included) has x_i + x_j = 0 (mod modulus). x: (..., n) ints.

  O(n + modulus) per sequence (a scatter of the residues present, then a gather), so it serves n = 2**20."""
  flat = jnp.reshape(x, (-1, x.shape[-1]))
  rows = jnp.arange(flat.shape[0])[:, None]
  present = jnp.zeros((flat.shape[0], modulus), bool).at[rows, flat].set(True)
  return present[rows, (modulus - flat) % modulus].astype(jnp.int32).reshape(x.shape)


def is_prime(m):
  return m >= 2 and all(m % p for p in range(2, math.isqrt(m) + 1))


def match2_modulus(n):
  """The modulus Match2 over n tokens gets by default: the smallest prime >= 37 n / 32 (the paper's N = 32,
  M = 37 ratio), so about as many residues exist as tokens at every n, and balanced sets stay easy to draw."""
  m = max(5, math.ceil(37 * n / 32))
  while not is_prime(m):
    m += 1
  return m


def khop_targets(x, k, alphabet, max_k):
  """k-hop targets for symbols x: (n,) and hop count k (scalar); `alphabet` stands for "none".

  One hop from position p: the most recent j < p with x_j = x_p, then step right to j + 1.
  """
  n = x.shape[0]

  def remember(last_seen, p):
    return last_seen.at[x[p]].set(p), last_seen[x[p]]

  _, previous = jax.lax.scan(remember, jnp.full((alphabet,), -1), jnp.arange(n))

  def hop(i, carry):
    pos, alive = carry
    j = previous[pos]
    active = i < k
    alive = alive & ~(active & (j < 0))
    return jnp.where(active & alive, j + 1, pos), alive

  pos, alive = jax.lax.fori_loop(0, max_k, hop, (jnp.arange(n), jnp.ones(n, bool)))
  return jnp.where(alive, x[pos], alphabet)


def balanced_match2_tokens(seed, size, n, modulus):
  """`size` Match2 sequences, each with exactly n // 2 tokens labelled 1 (numpy, deterministic in `seed`).

  Uniform sequences are not balanced (N = 32, M = 37: about 58% ones). Here the values 1..M-1 form (M-1)/2
  partner pairs {a, M-a} and 0 is its own partner. Per sequence, with P = n // 2 positive slots:
    - the n - P negative tokens come from u "lonely" pairs (u uniform in 1..min(n - P, pairs - 1)), one side
      of each, every lonely pair used at least once; the other side never appears, so their labels are 0;
    - the P positive tokens come from p "matched" pairs (p uniform in 1..min(P // 2, pairs - u)), both sides
      of each placed once, the remaining positive slots drawn from those 2p values and 0 (labels 1);
    - the tokens are shuffled.
  The label of every token is then fixed by construction (checked against `match2_labels` in the tests).
  """
  if modulus % 2 == 0 or modulus < 5 or n < 4:
    raise ValueError(f'balanced Match2 needs an odd modulus >= 5 and n >= 4, got modulus={modulus}, n={n}')
  rng = np.random.default_rng(seed)
  pairs = (modulus - 1) // 2
  positives = n // 2
  negatives = n - positives
  out = np.empty((size, n), np.int32)
  for row in range(size):
    chosen = rng.permutation(pairs) + 1  # pair a stands for {a, modulus - a}
    u = rng.integers(1, min(negatives, pairs - 1) + 1)
    p = rng.integers(1, min(positives // 2, pairs - u) + 1)
    lonely = np.where(rng.random(u) < 0.5, chosen[:u], modulus - chosen[:u])
    negative = np.concatenate([lonely, rng.choice(lonely, negatives - u)])
    matched = np.concatenate([chosen[u:u + p], modulus - chosen[u:u + p]])
    positive = np.concatenate([matched, rng.choice(np.append(matched, 0), positives - 2 * p)])
    out[row] = rng.permutation(np.concatenate([negative, positive]))
  return out


@dataclasses.dataclass(frozen=True)
class Match2:
  """Match2 over n tokens from {0..modulus-1}; a per-token binary label. modulus 0: `match2_modulus(n)`."""
  n: int = 32
  modulus: int = 37

  name = 'match2'
  fixed_training_set = True  # train_set() draws one

  def __post_init__(self):
    if self.modulus == 0:
      object.__setattr__(self, 'modulus', match2_modulus(self.n))

  def validate(self):
    if self.n < 2:
      raise ValueError(f'match2 needs n >= 2, got n={self.n}')
    if self.modulus < 2:
      raise ValueError(f'match2 needs modulus >= 2, got {self.modulus}')

  @property
  def vocab_size(self):
    return self.modulus

  @property
  def num_classes(self):
    return 2

  @property
  def length(self):
    return self.n

  def sample(self, key, batch_size):
    return self.batch(jax.random.randint(key, (batch_size, self.n), 0, self.modulus))

  def batch(self, x):
    ones = jnp.ones(x.shape, bool)
    return {'tokens': x, 'targets': match2_labels(x, self.modulus), 'loss_mask': ones, 'eval_mask': ones}

  def balanced_set(self, seed, size):
    """A fixed, label-balanced set of `size` sequences (see `balanced_match2_tokens`)."""
    return self.batch(jnp.asarray(balanced_match2_tokens(seed, size, self.n, self.modulus)))

  def train_set(self, seed, size):
    return self.balanced_set(seed, size)  # the paper's 10,000 training sequences

  def test_set(self, seed, size, k=-1, every_token=False):
    return self.balanced_set(seed, size)  # the paper's 256 test sequences

  def eval_groups(self, k=-1):
    return [0]

  def eval_batch(self, key, batch_size, group, every_token=False):
    return self.sample(key, batch_size)

  def counts(self, batch, wrong):
    return {}

  def results(self, counts):
    return {}

  def validate_evaluation(self, k):
    pass


@dataclasses.dataclass(frozen=True)
class KHop:
  """k-hop induction heads: a leading k token, then n symbols with no immediate repeat.

  Tokens: symbols 0..alphabet-1, then the k tokens alphabet + k. Classes: symbols, then "none" = alphabet.
  k is drawn uniformly from 0..max_k per sequence unless `sample(..., k=)` fixes it.
  """
  n: int = 100
  alphabet: int = 4
  max_k: int = 16

  name = 'khop'
  fixed_training_set = False  # fresh sequences only

  def validate(self):
    if self.max_k < 0:
      raise ValueError(f'khop needs max_k >= 0, got {self.max_k}')
    if self.alphabet < 2:
      raise ValueError(f'khop needs an alphabet of >= 2 symbols, got {self.alphabet}')
    if self.n < self.max_k + 2:
      raise ValueError(f'khop n={self.n} is too small for k={self.max_k}: every answer would be "none" '
                       f'(need n >= k + 2)')

  @property
  def vocab_size(self):
    return self.alphabet + self.max_k + 1

  @property
  def num_classes(self):
    return self.alphabet + 1

  @property
  def length(self):
    return self.n + 1

  def sample(self, key, batch_size, k=None, every_token=False):
    """every_token: count errors on every symbol position (the paper's induction-heads metric), not only
    on positions with an answer."""
    key_first, key_steps, key_k = jax.random.split(key, 3)
    # No immediate repeats: each symbol differs from the last by a nonzero offset.
    first = jax.random.randint(key_first, (batch_size, 1), 0, self.alphabet)
    steps = jax.random.randint(key_steps, (batch_size, self.n - 1), 1, self.alphabet)
    x = jnp.cumsum(jnp.concatenate([first, steps], axis=1), axis=1) % self.alphabet
    if k is None:
      k = jax.random.randint(key_k, (batch_size,), 0, self.max_k + 1)
    k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (batch_size,))
    targets = jax.vmap(lambda x, k: khop_targets(x, k, self.alphabet, self.max_k))(x, k)
    tokens = jnp.concatenate([(self.alphabet + k)[:, None], x], axis=1)
    targets = jnp.concatenate([jnp.full((batch_size, 1), self.alphabet), targets], axis=1)
    # Every symbol position, "none" targets included (the leading k token is not a symbol).
    loss_mask = jnp.broadcast_to(jnp.arange(self.n + 1)[None, :] > 0, tokens.shape)
    eval_mask = loss_mask if every_token else loss_mask & (targets != self.alphabet)
    return {'tokens': tokens, 'targets': targets, 'loss_mask': loss_mask, 'eval_mask': eval_mask, 'k': k}

  def test_set(self, seed, size, k=-1, every_token=False):
    return self.sample(jax.random.key(seed), size, k=None if k < 0 else k, every_token=every_token)

  def eval_groups(self, k=-1):
    """One group of fresh batches per k evaluated."""
    return [k] if k >= 0 else list(range(self.max_k + 1))

  def eval_batch(self, key, batch_size, group, every_token=False):
    return self.sample(key, batch_size, k=group, every_token=every_token)

  def counts(self, batch, wrong):
    """Errors and counted tokens per k ((max_k + 1,) each), summed over the batch inside the step, so sharded
    batches give small replicated sums."""
    eval_mask = batch['eval_mask']
    return {'wrong_by_k': jnp.zeros(self.max_k + 1, jnp.int32).at[batch['k']].add(jnp.sum(wrong, -1)),
            'counted_by_k': jnp.zeros(self.max_k + 1, jnp.int32).at[batch['k']].add(jnp.sum(eval_mask, -1))}

  def results(self, counts):
    """The error of every k with counted tokens, and the largest k solved."""
    wrong, counted = np.asarray(counts['wrong_by_k']), np.asarray(counts['counted_by_k'])
    per_k = {k: float(wrong[k] / counted[k]) for k in range(len(counted)) if counted[k]}
    return {'eval/max_k_solved': max_k_solved(per_k), **{f'eval/error_k{k}': e for k, e in per_k.items()}}

  def validate_evaluation(self, k):
    if not -1 <= k <= self.max_k:
      raise ValueError(f'evaluation.k must be -1 (every k) or in 0..max_k={self.max_k}, got {k}')


TASKS = {'match2': Match2, 'khop': KHop}


def make_task(name, **fields):
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; choose one of {sorted(TASKS)}')
  task = TASKS[name](**fields)
  task.validate()
  return task
