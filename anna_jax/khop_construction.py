"""Theorems 5.4 and 5.6 executed: induction heads (k = 1) and k-hop by ANNA-transformers with SET weights.

The task (`anna_jax.tasks.khop_targets`): one hop from position i goes to the most recent j < i with x_j = x_i,
then one step right, to j + 1; k hops compose that k times; the answer is the symbol reached, or "none" when a
hop finds no earlier occurrence. The model reads a sequence of n + 1 tokens, [k, x_0, ..., x_{n-1}], causally.

Every attention layer here is one `anna` call (Algorithm 1, causal) whose heads each LOOK UP one position: a
token's state names a target position p, its query is the code of p, and the key of the token at p is the same
code, so the two are the same float vector and collide in every table whatever the hash draw; the value is the
part of p's state the layer reads. Codes (`encode`): unit vectors e(t) = [cos(2 pi f t / M), sin(2 pi f
t / M)] / sqrt(T) over T odd frequencies f and M a power of two past n + 1, so distinct indices sit at cosine at
most `max_false_cosine` < 1 (computed exactly over every difference). Index t = position + 1; index 0 is "none",
the code of the leading k token, whose value is 0 in every lookup: a lookup of "none" reads 0, which is "none"
again. Positions travel in values as floats (index t, exact in float32 up to 2^24), rounded after each read.

Layers (B = `base`; L = ceil(log_B (n + 1)); bits = max_k.bit_length()):
1. Most recent occurrence per letter, a prefix maximum by B-ary doubling: last[i, a] = the largest index <= i's
   holding letter a. Layer s has B - 1 heads, head t reading last[i - t B^s]; the token keeps the maximum.
   L layers, (B - 1) heads each, values of width A (the alphabet): the depth / heads trade-off of the theorems.
2. One hop: a head reads last[i - 1] (width A); h_1(i) = last[i - 1, x_i] + 1 (the index of j + 1), or none.
3. Pointer doubling and the bits of k: layer b has two heads over the values h_{2^b}(j): one reads it at
   h_{2^b}(i), giving h_{2^(b+1)} (= h_{2^b} composed with itself); the other reads it at the token's pointer r
   (r starts at the token itself), and r moves there when bit b of k is set. `bits` layers.
4. Read-out: a head reads x at r (value x + 1); 0 is "none".
So L + bits + 2 layers: for N = 2^20, B = 2, k <= 16 that is 21 + 5 + 2 = 28 layers of at most 2 heads (B = 32:
5 layers of 31 heads for step 1, as 32^4 = 2^20 < N + 1).

If every index's code lands in a bucket of its own in every table of every layer, each lookup returns exactly
the target's value (it is the only key in the query's buckets) and the model is exact; otherwise a false
collider averages another position's value in, the error this measures. z must grow like log N (Theorem 3.4).

Where ours differs from the paper's proofs (App. F, via MPC protocols; not seen by us): the per-token updates
(maximum, rounding, choosing the letter's column, moving the pointer on a bit of k) are plain functions of a
token's state, standing in for the MLPs of an ANNA-transformer; k is given to every token (one more head reading
the leading token would do it); the same weights under exact softmax attention (`softmax_attend`) give the
comparison the theorems make.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from anna_jax.anna import ANNAConfig, anna_attention, draw_projections
from anna_jax.baselines import full_blockwise_attention
from anna_jax.constructions import max_false_cosine


@dataclasses.dataclass(frozen=True)
class KHopConstruction:
  """The set weights: position codes for sequences of n symbols, and the model's shape."""
  n: int  # symbols per sequence (the model reads n + 1 tokens, the first the hop count)
  alphabet: int
  max_k: int
  base: int  # B: heads per prefix-maximum layer = B - 1
  modulus: int  # M, a power of two > n + 1
  frequencies: np.ndarray  # (T,) odd
  max_false_cosine: float

  @property
  def width(self):
    return 2 * len(self.frequencies)

  @property
  def prefix_layers(self):
    return max(1, math.ceil(math.log(self.n + 1, self.base) - 1e-9))

  @property
  def bits(self):
    return max(1, self.max_k.bit_length())

  def layer_heads(self):
    """Heads per layer, in order."""
    return [self.base - 1] * self.prefix_layers + [1] + [2] * self.bits + [1]

  @property
  def softmax_beta(self):
    """softmax(beta q.k) puts a match e^(2 (ln(n + 1) + 3)) above any other key: every other key together gets under
    e^-6 / (n + 1) of the weight, so a read position is off by under 0.5 before rounding."""
    return 2 * (math.log(self.n + 1) + 3.0) / (1.0 - self.max_false_cosine)


def build(n, alphabet, max_k, base=2, width=128, seed=0):
  """The construction for k-hop over n symbols of `alphabet` letters, k <= max_k, B-ary prefix doubling."""
  if n < 2 or alphabet < 2 or max_k < 0 or base < 2:
    raise ValueError(f'need n >= 2, alphabet >= 2, max_k >= 0 and base >= 2, got {n}, {alphabet}, {max_k}, {base}')
  if width < 2 or width % 2:
    raise ValueError(f'width must be even and >= 2, got {width}')
  modulus = 1 << max(2, (n + 1).bit_length())
  frequencies = np.random.default_rng(seed).integers(0, modulus // 2, width // 2) * 2 + 1
  return KHopConstruction(n, alphabet, max_k, base, modulus, frequencies, max_false_cosine(frequencies, modulus))


def encode(construction, index):
  """Unit codes (..., width) of integer indices (...): exact phases by uint32 arithmetic modulo M = 2^m."""
  f = jnp.asarray(construction.frequencies, jnp.uint32)
  phase = (index.astype(jnp.uint32)[..., None] * f) & jnp.uint32(construction.modulus - 1)
  angle = (2 * np.pi / construction.modulus) * phase.astype(jnp.float32)
  return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=-1) / np.sqrt(len(construction.frequencies))


def lookup(construction, attend, layer, targets, values):
  """Per head h and token i, the values of the token at index targets[h, i] (0 = none: reads 0).

  targets (heads, n + 1) int32; values (n + 1, dv), one row per token, shared by the heads. Returns
  (n + 1, heads, dv), rounded to integers (the values are indices and letters)."""
  heads, tokens = targets.shape
  q = jnp.moveaxis(encode(construction, targets), 0, 1)[None]  # (1, n + 1, heads, width)
  k = jnp.broadcast_to(encode(construction, jnp.arange(tokens))[None, :, None, :], q.shape)
  v = jnp.broadcast_to(values.astype(jnp.float32)[None, :, None, :], (1, tokens, heads, values.shape[-1]))
  out, stats = attend(layer, q, k, v)
  return jnp.round(out[0]).astype(jnp.int32), stats


def forward(construction, x, k, attend):
  """Predicted targets (n,) for symbols x (n,) int and hop count k (int scalar), `alphabet` meaning "none";
  and the per-layer stats of `attend(layer, q, k, v) -> (out, stats)`."""
  n, a = construction.n, construction.alphabet
  index = jnp.arange(n + 1)  # token t: index t; the hop-count token is index 0
  letters = jnp.concatenate([jnp.full((1,), -1), x])  # the k token holds no letter
  values_zero_at_k = lambda v: v.at[0].set(0)  # a lookup of "none" reads 0
  stats = []
  # 1. last[t, a]: the largest index <= t holding letter a (0 = none).
  last = jnp.where(letters[:, None] == jnp.arange(a), index[:, None], 0)
  layer = 0
  for s in range(construction.prefix_layers):
    step = construction.base ** s
    targets = jnp.stack([jnp.maximum(index - t * step, 0) for t in range(1, construction.base)])
    read, st = lookup(construction, attend, layer, targets, values_zero_at_k(last))
    last = jnp.maximum(last, jnp.max(read, axis=1))
    stats.append(st)
    layer += 1
  # 2. One hop: the last occurrence of x_t before t, then one step right.
  read, st = lookup(construction, attend, layer, jnp.maximum(index - 1, 0)[None], values_zero_at_k(last))
  previous = jnp.take_along_axis(read[:, 0], jnp.maximum(letters, 0)[:, None], axis=1)[:, 0]
  hop = jnp.where((previous > 0) & (letters >= 0), previous + 1, 0)  # h_1, an index
  stats.append(st)
  layer += 1
  # 3. Pointer doubling, and the pointer moved by the bits of k.
  pointer = jnp.where(letters >= 0, index, 0)
  for b in range(construction.bits):
    read, st = lookup(construction, attend, layer, jnp.stack([hop, pointer]), values_zero_at_k(hop)[:, None])
    hop, moved = read[:, 0, 0], read[:, 1, 0]
    pointer = jnp.where((k >> b) & 1, moved, pointer)
    stats.append(st)
    layer += 1
  # 4. Read-out: x at the pointer (value x + 1; 0 = none).
  read, st = lookup(construction, attend, layer, pointer[None], values_zero_at_k(letters + 1)[:, None])
  stats.append(st)
  answer = read[1:, 0, 0]
  return jnp.where((answer >= 1) & (answer <= a), answer - 1, a), stats


def draw(construction, key, config: ANNAConfig):
  """Hash functions of every layer: a list, one (heads, tables, ...) array per layer."""
  return [draw_projections(jax.random.fold_in(key, layer), heads, construction.width, config)
          for layer, heads in enumerate(construction.layer_heads())]


def anna_attend(projections, config: ANNAConfig):
  """Algorithm 1, causal, with layer `layer`'s hash functions; stats: (no-collision fraction, collisions)."""
  def attend(layer, q, k, v):
    out, stats = anna_attention(q, k, v, projections[layer], config, causal=True)
    return out, (stats.no_collision_fraction, stats.mean_collisions)
  return attend


def softmax_attend(construction, block=512):
  """Exact causal softmax(beta q.k) with the same weights (flash-style: O(n) memory, O(n^2) time)."""
  def attend(layer, q, k, v):
    del layer
    width = max(q.shape[-1], v.shape[-1])  # one head width for q, k and v: zeros change no dot product
    pad = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])
    scale = construction.softmax_beta * math.sqrt(width)  # full_blockwise divides by sqrt(width)
    out = full_blockwise_attention(pad(q) * scale, pad(k), pad(v), causal=True, block=block)
    return out[..., :v.shape[-1]], ()
  return attend
