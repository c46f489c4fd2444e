// The `anna_softmax` kind's 'cpu' loop plan: forward and backward as XLA FFI targets (anna_jax/cpu_kernel.py
// builds them with anna_cpu.cc into one library; anna_jax/anna_softmax.py puts them under a custom VJP).
//
// Semantics are anna_softmax.py's `route` exactly, so the accelerator plan and this one attend the same pairs:
// per hash table, keys sorted by (bucket, position) (padded keys last, never matched);
//  - causal: query i reads the latest `window` keys of its bucket at positions <= i;
//  - not causal: valid queries sorted by (bucket, position) are cut into chunks of `chunk`; a chunk's window is
//    the `window` sorted keys from the first key of its first query's bucket, that start clipped to
//    [0, key_slots - window] (key_slots: the padded length, padding sorting last); a query reads the keys of its
//    own bucket inside its chunk's window.
// A query attends the UNION over tables of what it reads (table t skips a key an earlier table gave it, as the
// XLA plans do), weighted by softmax(q.k * scale) or uniformly; padded queries and queries that read nothing
// output zeros. Collisions (same-bucket keys, causal: at positions <= i) and read pairs are summed per table into
// stats, so dropped = collisions - read, as the XLA plans count it.
//
// A task is one (batch row, head): it routes every table (counting sorts), then walks the pairs one of two ways,
// chosen by size (query_major_bytes, from cpu_kernel.QUERY_MAJOR_BYTES), both attending the same pairs:
//  - query-major (heads whose k and v take at most query_major_bytes): queries in table 0's order, each query's
//    union over the tables gathered once (a per-key stamp); then keys in blocks of positions whose packed rows
//    (forward k | v, backward k | v | dk | dv) take at most key_block_bytes, and per block every query's keys in
//    it: scores, weights and sums in registers, a running max and sum merged across blocks (flash style);
//  - table-major (longer heads): per table, the keys' rows gathered in sorted order, then the table's queries in
//    sorted order, each reading its window's rows one after another and merging new keys into a running max,
//    sum of weights and weighted sum (flash style); tables after the first skip a key an earlier one gave.
// Measured (n, 8 heads of 64, l = 8, z = log2(n / 8), train = forward + backward, medians, one process per n,
// this project's 2-core VM, 2026-12-03): the backward's key rows (16 MiB a head at 16K) thrashed the 32 MiB L3
// that two threads share; in blocks of 4 MiB the 16K train step took 1.10 s against 1.59 s in one block
// (forward 0.39 / 0.40 s). Query-major against table-major, train: 32K 2.31 / 3.29 s, 64K 8.96 / 6.99 s (there
// the queries' rows, streamed once per block, cost more than the tables' gathers), hence the switch at 16 MiB.
// Table-major, the queries' rows packed on huge pages: 128K train 16.7 s against 20.0 s before (forward 5.6 /
// 7.3 s; the old code in a second process, run just before). Query-major, scores of 8 keys at once (Dot8): 16K
// train 39.7x full_blockwise's in one process, against 34.5x before it (an hour apart, VM noisy: a hint only).
// Nothing n x n is kept: the backward recomputes scores from the inputs with the output and each query's
// log-sum-exp; a task owns its head's rows of dq, dk, dv.
// Shapes: q, k, v, out, dout, dq, dk, dv (..., n, heads, dim) float32; ids (..., n, heads,
// tables) int32 in [0, num_ids), stored heads before tokens (cpu_kernel._ids_layout); valid (..., n) bool;
// stats (..., heads, 2).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "kernel_common.h"

namespace {

using anna_kernels::ParallelFor;

struct Problem {
  const float* q;
  const float* k;
  const float* v;
  const int32_t* q_ids;
  const int32_t* k_ids;
  const bool* valid;
  const float* dout;  // backward only
  float* out;  // forward output, backward input
  float* lse;  // the same: per query, log sum exp of its scores
  float* stats;  // forward only
  float* dq;  // backward only
  float* dk;
  float* dv;
  int64_t n, heads, dim, tables, num_ids, key_slots, window, chunk;
  int64_t query_major_bytes;  // heads whose k and v rows take at most this many bytes walk query by query
  int64_t key_block_bytes;  // the query-major walks visit keys in blocks whose rows take at most this many bytes
  bool causal, uniform;
  float scale;
};

// Code spaces up to this many buckets per token are sorted by counting (offsets indexed by code); larger ones by
// a comparison sort of (code, position) with binary searches.
constexpr int64_t kCountingIdsPerToken = 4, kCountingMinIds = 4096;

// The valid tokens of one table of one (batch row, head), sorted by (code, position).
class SortedTable {
 public:
  std::vector<int32_t> positions;  // rank -> position
  int64_t size = 0;

  // ids[i * stride] is token i's code.
  bool Build(const int32_t* ids, int64_t stride, const bool* valid, int64_t n, int64_t num_ids) {
    counting_ = num_ids <= std::max(kCountingMinIds, kCountingIdsPerToken * n);
    positions.resize(n);
    size = 0;
    if (counting_) {
      offsets_.assign(num_ids + 1, 0);
      for (int64_t i = 0; i < n; ++i) {
        if (!valid[i]) continue;
        const int32_t id = ids[i * stride];
        if (id < 0 || id >= num_ids) return false;
        ++offsets_[id + 1];
        ++size;
      }
      for (int64_t c = 0; c < num_ids; ++c) offsets_[c + 1] += offsets_[c];
      fill_.assign(offsets_.begin(), offsets_.end() - 1);
      for (int64_t i = 0; i < n; ++i)
        if (valid[i]) positions[fill_[ids[i * stride]]++] = static_cast<int32_t>(i);  // positions ascend
      return true;
    }
    keys_.clear();
    for (int64_t i = 0; i < n; ++i) {
      if (!valid[i]) continue;
      const int32_t id = ids[i * stride];
      if (id < 0 || id >= num_ids) return false;
      keys_.push_back(static_cast<uint64_t>(id) << 32 | static_cast<uint64_t>(i));
    }
    std::sort(keys_.begin(), keys_.end());
    size = static_cast<int64_t>(keys_.size());
    for (int64_t r = 0; r < size; ++r) positions[r] = static_cast<int32_t>(keys_[r] & 0xffffffffu);
    return true;
  }

  // Ranks [first, last) of the tokens with this code (first: the tokens with smaller codes, when none has it).
  void Range(int32_t code, int64_t* first, int64_t* last) const {
    if (counting_) {
      *first = offsets_[code], *last = offsets_[code + 1];
      return;
    }
    const uint64_t low = static_cast<uint64_t>(code) << 32;
    *first = std::lower_bound(keys_.begin(), keys_.end(), low) - keys_.begin();
    *last = std::lower_bound(keys_.begin(), keys_.end(), low + (uint64_t{1} << 32)) - keys_.begin();
  }

 private:
  bool counting_ = true;
  std::vector<int32_t> offsets_, fill_;
  std::vector<uint64_t> keys_;
};

// One task's routing: per table the sorted keys and queries, each query's range of sorted keys and each key's
// rank; and the per-table scratch of the walk.
struct Routing {
  std::vector<SortedTable> keys, queries;
  // Rows of `stride` (tables rounded up to 8) ints, so 8 tables compare in one vector operation:
  std::vector<int32_t> begin, end;  // [query][table]: the sorted keys query i reads, [begin, end)
  std::vector<int32_t> key_rank;  // [key][table]: its place among the table's sorted keys
  std::vector<int32_t> sorted_rank;  // [rank][u]: key_rank of the walked table's rank-th key
  int64_t stride = 8;
  std::vector<int32_t> picked;  // table-major: one query's new keys in a table (their ranks); query-major: its
  std::vector<float> scores;  // union over the tables (key ids). And their scores, then weights
  std::vector<int32_t> stamp;  // query-major: [key] 1 + the last query place that took it
  std::vector<int32_t> united;  // query-major: every query's union (GatherUnions), query `place`'s from
  std::vector<int64_t> united_start;  // united_start[place]
  double collisions = 0.0, read = 0.0;
};

// Sorts keys and queries per table and places every query's window (see the top of this file).
bool Route(const Problem& p, int64_t b, int64_t h, Routing& r) {
  const bool* valid = p.valid + b * p.n;
  const int64_t ids_base = (b * p.heads + h) * p.n * p.tables;
  r.keys.resize(p.tables);
  r.queries.resize(p.tables);
  r.stride = (p.tables + 7) / 8 * 8;
  r.begin.assign(p.n * r.stride, 0);
  r.end.assign(p.n * r.stride, 0);
  r.key_rank.assign(p.n * r.stride, -1);
  r.collisions = r.read = 0.0;
  for (int64_t t = 0; t < p.tables; ++t) {
    const SortedTable& keys = r.keys[t];
    const SortedTable& queries = r.queries[t];
    if (!r.keys[t].Build(p.k_ids + ids_base + t, p.tables, valid, p.n, p.num_ids)) return false;
    if (!r.queries[t].Build(p.q_ids + ids_base + t, p.tables, valid, p.n, p.num_ids)) return false;
    for (int64_t rank = 0; rank < keys.size; ++rank) r.key_rank[keys.positions[rank] * r.stride + t] = rank;
    int64_t chunk_start = 0;
    for (int64_t rank = 0; rank < queries.size; ++rank) {
      const int64_t i = queries.positions[rank];
      int64_t first, last, begin, end;
      keys.Range(p.q_ids[ids_base + i * p.tables + t], &first, &last);
      if (p.causal) {  // the latest `window` keys of the bucket at positions <= i (positions ascend in a bucket)
        last = std::upper_bound(keys.positions.begin() + first, keys.positions.begin() + last,
                                static_cast<int32_t>(i)) - keys.positions.begin();
        begin = std::max(first, last - p.window), end = last;
      } else {  // the chunk's window starts at the first key of its first query's bucket
        if (rank % p.chunk == 0) chunk_start = std::clamp<int64_t>(first, 0, p.key_slots - p.window);
        begin = std::max(first, chunk_start), end = std::min(last, chunk_start + p.window);
      }
      r.collisions += static_cast<double>(last - first);
      if (end <= begin) continue;
      r.read += static_cast<double>(end - begin);
      r.begin[i * r.stride + t] = static_cast<int32_t>(begin);
      r.end[i * r.stride + t] = static_cast<int32_t>(end);
    }
  }
  r.sorted_rank.resize(p.n * r.stride);
  r.picked.resize(p.tables * p.window);  // a table gives a query at most `window` keys
  r.scores.resize(p.tables * p.window);
  r.stamp.assign(p.n, 0);
  return true;
}

typedef float Lanes8 __attribute__((vector_size(8 * sizeof(float))));
typedef int32_t Ints8 __attribute__((vector_size(8 * sizeof(int32_t))));

inline float LaneSum(Lanes8 x) { return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7])); }

// exp of 8 floats <= 0 (scores minus their maximum): 2^k e^r with |r| <= ln2 / 2 and a degree-6 polynomial
// (Cephes' expf coefficients; relative error about 2e-7); below -87 it returns 0. One call of std::exp per score
// was a tenth of the time.
inline Lanes8 Exp8(Lanes8 x) {
  const Lanes8 low = x < -87.0f ? Lanes8{} + 0.0f : Lanes8{} + 1.0f;  // underflow mask as 0 / 1
  x = x < -87.0f ? Lanes8{} - 87.0f : x;
  const Lanes8 k = __builtin_convertvector(__builtin_convertvector(x * 1.44269504f + (x < 0 ? -0.5f : 0.5f), Ints8),
                                           Lanes8);
  const Lanes8 r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  Lanes8 y = 1.9875691500e-4f * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const Ints8 scale = (__builtin_convertvector(k, Ints8) + 127) << 23;  // 2^k
  Lanes8 two_k;
  std::memcpy(&two_k, &scale, sizeof(two_k));
  return y * two_k * low;
}

// a . b. Widths that are multiples of 8 sum in 8 independent lanes: a plain loop is one serial chain of adds
// (the compiler may not reorder float sums), which made the forward 4x slower.
template <int64_t kDim>
inline float Dot(const float* __restrict a, const float* __restrict b, int64_t dim) {
  if constexpr (kDim % 8 == 0 && kDim > 0) {
    Lanes8 acc = {}, x, y;
    for (int64_t d = 0; d < kDim; d += 8) {
      std::memcpy(&x, a + d, sizeof(x)), std::memcpy(&y, b + d, sizeof(y));
      acc += x * y;
    }
    return LaneSum(acc);
  }
  float sum = 0.0f;
  for (int64_t d = 0; d < (kDim ? kDim : dim); ++d) sum += a[d] * b[d];
  return sum;
}

// Lanes of a and b picked by index (b's lanes are 8..15); GCC before 12 has only its own spelling.
#if defined(__clang__) || __GNUC__ >= 12
#define SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, Ints8{__VA_ARGS__})
#endif

// (a0 + a1, a2 + a3, b0 + b1, b2 + b3, a4 + a5, a6 + a7, b4 + b5, b6 + b7).
inline Lanes8 PairSums(Lanes8 a, Lanes8 b) {
  return SHUFFLE8(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + SHUFFLE8(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}

// a . (rows[r] + offset) for r < 8, as one vector: 8 accumulators, then one transposing sum (eight horizontal
// sums of Dot cost more than the products at width 64).
template <int64_t kDim>
inline Lanes8 Dot8(const float* __restrict a, const float* const* rows, int64_t offset, int64_t dim) {
  if constexpr (kDim % 8 == 0 && kDim > 0) {
    Lanes8 acc[8] = {}, x, y;
    for (int64_t d = 0; d < kDim; d += 8) {
      std::memcpy(&x, a + d, sizeof(x));
      for (int r = 0; r < 8; ++r) std::memcpy(&y, rows[r] + offset + d, sizeof(y)), acc[r] += x * y;
    }
    const Lanes8 low = PairSums(PairSums(acc[0], acc[1]), PairSums(acc[2], acc[3]));
    const Lanes8 high = PairSums(PairSums(acc[4], acc[5]), PairSums(acc[6], acc[7]));
    return SHUFFLE8(low, high, 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE8(low, high, 4, 5, 6, 7, 12, 13, 14, 15);
  }
  Lanes8 dots;
  for (int r = 0; r < 8; ++r) dots[r] = Dot<kDim>(a, rows[r] + offset, dim);
  return dots;
}

// acc += w x. In 8-float vectors where the width allows: as a plain loop, the compiler vectorised the loops
// around it across keys instead, with gathers (slow).
template <int64_t kDim>
inline void AddScaled(float* __restrict acc, float w, const float* __restrict x, int64_t dim) {
  if constexpr (kDim % 8 == 0 && kDim > 0) {
    Lanes8 a, b;
    for (int64_t d = 0; d < kDim; d += 8) {
      std::memcpy(&a, acc + d, sizeof(a)), std::memcpy(&b, x + d, sizeof(b));
      a += w * b;
      std::memcpy(acc + d, &a, sizeof(a));
    }
    return;
  }
  for (int64_t d = 0; d < (kDim ? kDim : dim); ++d) acc[d] += w * x[d];
}

// A task's float arrays (packed rows; the table-major walk's keys in sorted order): at least `floats` of them.
class Rows {
 public:
  float* Reserve(int64_t floats) {
    return static_cast<float*>(buffer_.Reserve(static_cast<size_t>(floats) * sizeof(float)));
  }
  // After a task: buffers over 512 MiB (table-major heads from 256K tokens) are freed, as each thread keeps its
  // own: at 1M tokens about 1 GiB each, and the 1M forward benchmark was killed at 24 GiB on this project's VM
  // with them kept, while it peaked at 13 GB freeing them. Smaller ones are kept for the next call.
  void Trim() { buffer_.ReleaseAbove(size_t{1} << 29); }

 private:
  anna_kernels::HugeBuffer buffer_;
};

// Which walk a head takes (see QueryMajorForward, TableMajorForward).
inline bool QueryMajor(const Problem& p) {
  return 2 * p.n * p.dim * static_cast<int64_t>(sizeof(float)) <= p.query_major_bytes;
}

// Tokens and keys are visited in sorted orders, so the rows they touch are scattered: fetch the rows kAhead
// places on before they are needed (independent misses overlap; waiting for each one in turn does not).
constexpr int64_t kAhead = 8;

inline void PrefetchRow(const float* row, int64_t dim) {
  for (int64_t d = 0; d < dim; d += 16) __builtin_prefetch(row + d);
}

// The query kAhead places on in a table's walk, its ranges fetched; -1 past the end.
inline int64_t QueryAhead(const Routing& r, const SortedTable& queries, int64_t place) {
  if (place + kAhead >= queries.size) return -1;
  const int64_t ahead = queries.positions[place + kAhead];
  __builtin_prefetch(r.begin.data() + ahead * r.stride), __builtin_prefetch(r.end.data() + ahead * r.stride);
  return ahead;
}

// The rows of keys[first .. first + 8) of a query's m keys (row = base + key * width), fetching the rows kAhead
// places on; past the m-th, the last row again (callers weigh those lanes 0). Returns how many are real.
inline int64_t GroupRows(float* base, int64_t width, const int32_t* keys, int64_t first, int64_t m,
                         float* rows[8]) {
  const int64_t count = std::min<int64_t>(8, m - first);
  for (int64_t a = 0; a < 8; ++a) {
    if (first + a + kAhead < m) PrefetchRow(base + keys[first + a + kAhead] * width, width);
    rows[a] = base + keys[first + std::min(a, count - 1)] * width;
  }
  return count;
}

// One task's view of the (..., n, heads, dim) arrays: row i of head h of batch row b.
struct Head {
  int64_t b, h, base, stride;
  Head(const Problem& p, int64_t task)
      : b(task / p.heads), h(task % p.heads), base((b * p.n * p.heads + h) * p.dim), stride(p.heads * p.dim) {}
  int64_t Row(int64_t i) const { return base + i * stride; }
};

// Copies the rows of table t's sorted keys (from `x`, strided) into `sorted` (packed), and their key ranks in
// the earlier tables into r.sorted_rank.
void GatherKeys(const Problem& p, const Routing& r, const Head& head, int64_t t, const float* x, float* sorted) {
  const SortedTable& keys = r.keys[t];
  for (int64_t rank = 0; rank < keys.size; ++rank) {
    if (rank + kAhead < keys.size) PrefetchRow(x + head.Row(keys.positions[rank + kAhead]), p.dim);
    std::copy_n(x + head.Row(keys.positions[rank]), p.dim, sorted + rank * p.dim);
  }
}

void GatherRanks(const Problem& p, Routing& r, int64_t t) {
  const SortedTable& keys = r.keys[t];
  for (int64_t rank = 0; rank < keys.size; ++rank)
    std::copy_n(r.key_rank.data() + keys.positions[rank] * r.stride, r.stride, r.sorted_rank.data() + rank * r.stride);
}

// Calls visit(rank, score) for each key table t gives query i that no earlier table gave it (union semantics:
// a range lies inside the query's bucket, so the key's rank inside an earlier range is the whole test). Score 0
// for uniform weights. k_sorted: table t's key rows in sorted order.
typedef uint32_t Unsigned8 __attribute__((vector_size(8 * sizeof(uint32_t))));

// Whether the key whose ranks in the tables are `ranks` lies in the query's range [begin, end) of a table
// u < t: 8 tables per vector comparison (a scalar loop here was compiled into slow gathers).
inline bool SeenEarlier(const int32_t* ranks, const int32_t* begin, const int32_t* end, int64_t t) {
  const Ints8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  for (int64_t u = 0; u < t; u += 8) {
    Ints8 rank, first, last;
    std::memcpy(&rank, ranks + u, sizeof(rank)), std::memcpy(&first, begin + u, sizeof(first));
    std::memcpy(&last, end + u, sizeof(last));
    const Ints8 in = ((Unsigned8)(rank - first) < (Unsigned8)(last - first)) &
                     ((lane + static_cast<int32_t>(u)) < static_cast<int32_t>(t));
    uint64_t words[4];
    std::memcpy(words, &in, sizeof(words));
    if ((words[0] | words[1] | words[2] | words[3]) != 0) return true;
  }
  return false;
}

template <int64_t kDim, typename Visit>
inline void ForEachNewKey(const Problem& p, const Routing& r, const float* q_i, const float* k_sorted, int64_t i,
                          int64_t t, Visit visit) {
  const int32_t* begin = r.begin.data() + i * r.stride;
  const int32_t* end = r.end.data() + i * r.stride;
  for (int64_t rank = begin[t]; rank < end[t]; ++rank) {
    if (SeenEarlier(r.sorted_rank.data() + rank * r.stride, begin, end, t)) continue;
    visit(rank, p.uniform ? 0.0f : Dot<kDim>(q_i, k_sorted + rank * p.dim, p.dim) * p.scale);
  }
}

// exp(x[a] - shift) in place for a < count, 8 at a time; returns their sum.
inline float ExpSum(float* x, int64_t count, float shift) {
  Lanes8 sums = {}, lanes;
  int64_t a = 0;
  for (; a + 8 <= count; a += 8) {
    std::memcpy(&lanes, x + a, sizeof(lanes));
    lanes = Exp8(lanes - shift);
    std::memcpy(x + a, &lanes, sizeof(lanes));
    sums += lanes;
  }
  float total = LaneSum(sums);
  for (; a < count; ++a) total += x[a] = std::exp(x[a] - shift);
  return total;
}

// Packs one head of (..., n, heads, dim) inputs into rows of `width` floats, the c-th input at offset c * dim.
void PackRows(std::initializer_list<const float*> inputs, const Head& head, int64_t n, int64_t dim, int64_t width,
              float* rows) {
  int64_t offset = 0;
  for (const float* x : inputs) {
    for (int64_t i = 0; i < n; ++i) std::copy_n(x + head.Row(i), dim, rows + i * width + offset);
    offset += dim;
  }
}

// Table by table: the table's key rows gathered in sorted order, then its queries in sorted order, each merging
// its new keys into a running max, sum of weights and weighted sum (flash style). Every random access is a
// gathered row fetched ahead; within a query's window the rows follow one another. The queries' rows (backward:
// and the keys' gradients) are first packed in position order into the task's buffer, on huge pages: at 128K
// tokens a head's rows in the inputs span 256 MiB of 4 KiB pages, and a random row there missed the TLB.
template <int64_t kDim>
bool TableMajorForward(const Problem& p, int64_t task, Routing& r, Rows& rows) {
  const Head head(p, task);
  const int64_t b = head.b, h = head.h, dim = p.dim, n = p.n, q_width = 2 * dim + 8;
  float* k_sorted = rows.Reserve(2 * n * dim + q_width * n);
  if (k_sorted == nullptr) return false;
  // Per query, in position order: q | sum | running max, total weight (and padding to keep rows aligned).
  float *v_sorted = k_sorted + n * dim, *queries = v_sorted + n * dim;
  PackRows({p.q}, head, n, dim, q_width, queries);
  for (int64_t i = 0; i < n; ++i) {
    std::fill_n(queries + i * q_width + dim, dim + 8, 0.0f);
    queries[i * q_width + 2 * dim] = -INFINITY;
  }
  float* scores = r.scores.data();
  for (int64_t t = 0; t < p.tables; ++t) {
    GatherKeys(p, r, head, t, p.k, k_sorted), GatherKeys(p, r, head, t, p.v, v_sorted), GatherRanks(p, r, t);
    const SortedTable& order = r.queries[t];
    for (int64_t place = 0; place < order.size; ++place) {
      const int64_t ahead = QueryAhead(r, order, place);
      if (ahead >= 0) PrefetchRow(queries + ahead * q_width, q_width);
      const int64_t i = order.positions[place];
      float* q_i = queries + i * q_width;
      float &m = q_i[2 * dim], &total = q_i[2 * dim + 1];
      int64_t count = 0;
      float best = -INFINITY;
      ForEachNewKey<kDim>(p, r, q_i, k_sorted, i, t, [&](int64_t rank, float score) {
        r.picked[count] = static_cast<int32_t>(rank), scores[count++] = score, best = std::max(best, score);
      });
      if (count == 0) continue;
      const float m_new = std::max(m, best), rescale = std::exp(m - m_new);  // exp(-inf) = 0 at first
      total = total * rescale + ExpSum(scores, count, m_new);  // scores become weights
      m = m_new;
      float acc[kDim ? kDim : 1];
      float* __restrict sum = kDim ? acc : q_i + dim;  // a known width keeps the sum in registers
      for (int64_t d = 0; d < dim; ++d) sum[d] = q_i[dim + d] * rescale;
      for (int64_t a = 0; a < count; ++a) AddScaled<kDim>(sum, scores[a], v_sorted + r.picked[a] * dim, dim);
      if (kDim) std::copy(acc, acc + dim, q_i + dim);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const float* row = queries + i * q_width;
    const float m = row[2 * dim], total = row[2 * dim + 1];
    const bool any = p.valid[b * n + i] && total > 0.0f;  // else zeros, as a padded query
    const float inverse = any ? 1.0f / total : 0.0f;
    for (int64_t d = 0; d < dim; ++d) p.out[head.Row(i) + d] = row[dim + d] * inverse;
    p.lse[(b * n + i) * p.heads + h] = any ? m + std::log(total) : 0.0f;
  }
  return true;
}

// The same walk with the forward's log-sum-exp: w_ij = exp(s_ij - lse_i). dv_j += w_ij dout_i; softmax:
// ds_ij = w_ij (dout_i . v_j - dout_i . out_i) * scale, dq_i += ds_ij k_j, dk_j += ds_ij q_i. dk and dv gather
// in sorted order per table and are added back to the keys' packed rows after it.
template <int64_t kDim>
bool TableMajorBackward(const Problem& p, int64_t task, Routing& r, Rows& rows) {
  const Head head(p, task);
  const int64_t b = head.b, h = head.h, dim = p.dim, n = p.n, q_width = 5 * dim + 8;
  float* k_sorted = rows.Reserve(4 * n * dim + q_width * n);
  if (k_sorted == nullptr) return false;
  float *v_sorted = k_sorted + n * dim, *dk_sorted = v_sorted + n * dim, *dv_sorted = dk_sorted + n * dim;
  // Per token, in position order: q | dout | dq | dk | dv | lse, dout . out (and padding to keep rows aligned).
  float* tokens = dv_sorted + n * dim;
  PackRows({p.q, p.dout}, head, n, dim, q_width, tokens);
  for (int64_t i = 0; i < n; ++i) {
    float* row = tokens + i * q_width;
    std::fill_n(row + 2 * dim, 3 * dim + 8, 0.0f);
    row[5 * dim] = p.lse[(b * n + i) * p.heads + h];
    row[5 * dim + 1] = Dot<kDim>(row + dim, p.out + head.Row(i), dim);
  }
  for (int64_t t = 0; t < p.tables; ++t) {
    GatherKeys(p, r, head, t, p.k, k_sorted), GatherRanks(p, r, t);
    if (!p.uniform) GatherKeys(p, r, head, t, p.v, v_sorted);
    const SortedTable& keys = r.keys[t];
    std::fill_n(dk_sorted, 2 * n * dim, 0.0f);  // dk_sorted, dv_sorted
    const SortedTable& queries = r.queries[t];
    for (int64_t place = 0; place < queries.size; ++place) {
      if (const int64_t ahead = QueryAhead(r, queries, place); ahead >= 0) {
        PrefetchRow(tokens + ahead * q_width, 3 * dim), __builtin_prefetch(tokens + ahead * q_width + 5 * dim);
      }
      const int64_t i = queries.positions[place];
      const float* q_i = tokens + i * q_width;
      const float* dout_i = q_i + dim;
      const float lse = q_i[5 * dim], delta = q_i[5 * dim + 1];
      float acc[kDim ? kDim : 1];
      float* __restrict dq_i = kDim ? acc : tokens + i * q_width + 2 * dim;
      if (kDim) std::fill(acc, acc + dim, 0.0f);
      ForEachNewKey<kDim>(p, r, q_i, k_sorted, i, t, [&](int64_t rank, float score) {
        const float w = std::exp(score - lse);
        AddScaled<kDim>(dv_sorted + rank * dim, w, dout_i, dim);
        if (p.uniform) return;  // the weights do not depend on q or k
        const float ds = w * (Dot<kDim>(dout_i, v_sorted + rank * dim, dim) - delta) * p.scale;
        AddScaled<kDim>(dq_i, ds, k_sorted + rank * dim, dim);
        AddScaled<kDim>(dk_sorted + rank * dim, ds, q_i, dim);
      });
      if (kDim) AddScaled<kDim>(tokens + i * q_width + 2 * dim, 1.0f, acc, dim);
    }
    for (int64_t rank = 0; rank < keys.size; ++rank) {  // back to the keys' rows
      if (rank + kAhead < keys.size) PrefetchRow(tokens + keys.positions[rank + kAhead] * q_width + 3 * dim, 2 * dim);
      float* row = tokens + keys.positions[rank] * q_width;
      AddScaled<kDim>(row + 3 * dim, 1.0f, dk_sorted + rank * dim, dim);
      AddScaled<kDim>(row + 4 * dim, 1.0f, dv_sorted + rank * dim, dim);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const float* row = tokens + i * q_width;
    std::copy_n(row + 2 * dim, dim, p.dq + head.Row(i));
    std::copy_n(row + 3 * dim, dim, p.dk + head.Row(i));
    std::copy_n(row + 4 * dim, dim, p.dv + head.Row(i));
  }
  return true;
}

// Query-major walk: queries in table 0's sorted order (neighbours share table 0's keys), each gathering its union
// over the tables once (a per-key stamp), with its weights and sums in registers. A key's rows are packed side by
// side (forward: k | v; backward: k | v | dk | dv), so each key a query reads is one block of memory, fetched
// ahead; the keys are visited in blocks that stay in cache (past that, key rows all over memory are misses), and
// the queries' rows are packed in walk order, so each block reads them as one stream.

// The union of the keys the tables give query i, in r.picked (branch-free: whether a key repeats is a coin flip;
// raw pointers: the vectors are thread-local). mark: a stamp no earlier query used.
int64_t Unite(const Problem& p, Routing& r, int64_t i, int32_t mark) {
  int32_t* united = r.picked.data();
  int32_t* stamp = r.stamp.data();
  const int32_t* begin = r.begin.data() + i * r.stride;
  const int32_t* end = r.end.data() + i * r.stride;
  int64_t m = 0;
  for (int64_t t = 0; t < p.tables; ++t) {
    const int32_t* positions = r.keys[t].positions.data();
    for (int64_t rank = begin[t]; rank < end[t]; ++rank) {
      const int32_t j = positions[rank];
      united[m] = j;
      m += stamp[j] != mark;
      stamp[j] = mark;
    }
  }
  return m;
}

// Every query's union, in walk order (table 0's): query `place`'s keys are r.united[r.united_start[place] ...
// r.united_start[place + 1]).
void GatherUnions(const Problem& p, Routing& r) {
  const SortedTable& order = r.queries[0];
  r.united.clear();
  r.united_start.resize(order.size + 1);
  for (int64_t place = 0; place < order.size; ++place) {
    r.united_start[place] = static_cast<int64_t>(r.united.size());
    const int64_t m = Unite(p, r, order.positions[place], static_cast<int32_t>(place + 1));
    r.united.insert(r.united.end(), r.picked.begin(), r.picked.begin() + m);
  }
  r.united_start[order.size] = static_cast<int64_t>(r.united.size());
}

// Keys per block of the query-major walks: a block's rows of `width` floats take at most key_block_bytes.
inline int64_t KeysPerBlock(const Problem& p, int64_t width) {
  return std::max<int64_t>(1, p.key_block_bytes / (width * static_cast<int64_t>(sizeof(float))));
}

// Query `place`'s keys at positions [low, low + span): a pointer to them (its whole union when the block holds
// every key, else copied into r.picked) and their number.
inline const int32_t* KeysInBlock(const Problem& p, Routing& r, int64_t place, int64_t low, int64_t span,
                                  int64_t* count) {
  const int32_t* all = r.united.data() + r.united_start[place];
  const int64_t total = r.united_start[place + 1] - r.united_start[place];
  *count = total;
  if (span >= p.n) return all;
  int32_t* picked = r.picked.data();
  int64_t m = 0;
  for (int64_t a = 0; a < total; ++a) {  // branch-free: whether a key lies in the block is a coin flip
    picked[m] = all[a];
    m += static_cast<uint32_t>(all[a] - low) < static_cast<uint32_t>(span);
  }
  *count = m;
  return picked;
}

// Fetches the rows of the next query's first kAhead keys that lie in the block [low, low + span) (GroupRows
// fetches ahead only within a query, so each query's first rows were misses: the 16K forward took 12% longer).
inline void PrefetchNextQuery(const Routing& r, int64_t place, int64_t low, int64_t span, const float* base,
                              int64_t width) {
  if (place + 2 >= static_cast<int64_t>(r.united_start.size())) return;  // the last query
  const int32_t* next = r.united.data() + r.united_start[place + 1];
  const int64_t count = std::min<int64_t>(kAhead, r.united_start[place + 2] - r.united_start[place + 1]);
  for (int64_t a = 0; a < count; ++a)
    if (static_cast<uint32_t>(next[a] - low) < static_cast<uint32_t>(span)) PrefetchRow(base + next[a] * width, width);
}

// The query-major walks' loop: per block of keys, every query in walk order that has keys in it: visit(place, its
// keys, their number), the next query's first rows fetched meanwhile.
template <typename Visit>
inline void WalkBlocks(const Problem& p, Routing& r, const float* rows, int64_t width, Visit visit) {
  const int64_t n = p.n, size = r.queries[0].size, block = KeysPerBlock(p, width);
  for (int64_t low = 0; low < n; low += block) {
    for (int64_t place = 0; place < size; ++place) {
      PrefetchNextQuery(r, place, low, block, rows, width);
      int64_t m;
      const int32_t* mine = KeysInBlock(p, r, place, low, std::min(block, n - low), &m);
      if (m > 0) visit(place, mine, m);
    }
  }
}

// Per block of keys, queries in walk order merge the block's keys into a running max, sum of weights and weighted
// sum (flash style), kept beside the query's packed row (q | sum).
template <int64_t kDim>
bool QueryMajorForward(const Problem& p, int64_t task, Routing& r, Rows& rows) {
  const Head head(p, task);
  const SortedTable& order = r.queries[0];
  const int64_t dim = p.dim, n = p.n, width = 2 * dim, size = order.size, q_width = 2 * dim;
  float* kv = rows.Reserve(width * n + (q_width + 2) * size);  // per key: k | v
  if (kv == nullptr) return false;
  float* queries = kv + width * n;  // per query, in walk order: q | weighted sum of v
  float *top = queries + q_width * size, *total = top + size;
  PackRows({p.k, p.v}, head, n, dim, width, kv);
  for (int64_t place = 0; place < size; ++place) {
    float* row = queries + place * q_width;
    std::copy_n(p.q + head.Row(order.positions[place]), dim, row);
    std::fill_n(row + dim, dim, 0.0f);
    top[place] = -INFINITY, total[place] = 0.0f;
  }
  GatherUnions(p, r);
  float* scores = r.scores.data();
  WalkBlocks(p, r, kv, width, [&](int64_t place, const int32_t* mine, int64_t m) {
    const float* q_i = queries + place * q_width;
    float best = -INFINITY;
    for (int64_t first = 0; first < m; first += 8) {
      float* group[8];
      const int64_t count = GroupRows(kv, width, mine, first, m, group);
      const Lanes8 lanes = p.uniform ? Lanes8{} : Dot8<kDim>(q_i, group, 0, dim) * p.scale;
      for (int64_t a = 0; a < count; ++a) scores[first + a] = lanes[a], best = std::max(best, lanes[a]);
    }
    const float m_new = std::max(top[place], best), rescale = std::exp(top[place] - m_new);  // 0 at first
    total[place] = total[place] * rescale + ExpSum(scores, m, m_new);  // scores become weights
    top[place] = m_new;
    float* sum_row = queries + place * q_width + dim;
    float acc[kDim ? kDim : 1];
    float* __restrict sum = kDim ? acc : sum_row;  // a known width keeps the sum in registers
    for (int64_t d = 0; d < dim; ++d) sum[d] = sum_row[d] * rescale;
    for (int64_t a = 0; a < m; ++a) AddScaled<kDim>(sum, scores[a], kv + mine[a] * width + dim, dim);
    if (kDim) std::copy(acc, acc + dim, sum_row);
  });
  for (int64_t i = 0; i < n; ++i) {  // padded queries and those that read nothing stay zero
    std::fill_n(p.out + head.Row(i), dim, 0.0f);
    p.lse[(head.b * n + i) * p.heads + head.h] = 0.0f;
  }
  for (int64_t place = 0; place < size; ++place) {
    if (total[place] == 0.0f) continue;
    const int64_t i = order.positions[place];
    const float* sum = queries + place * q_width + dim;
    for (int64_t d = 0; d < dim; ++d) p.out[head.Row(i) + d] = sum[d] / total[place];
    p.lse[(head.b * n + i) * p.heads + head.h] = top[place] + std::log(total[place]);
  }
  return true;
}

// The same walk with the forward's log-sum-exp, in one pass over each query's keys in a block, 8 at a time:
// their scores, w_ij = exp(s_ij - lse_i) as one vector, then per key the updates of TableMajorBackward while its
// row is in L1. The queries' rows are packed in walk order (q | dout | dq).
template <int64_t kDim>
bool QueryMajorBackward(const Problem& p, int64_t task, Routing& r, Rows& rows) {
  const Head head(p, task);
  const SortedTable& order = r.queries[0];
  const int64_t dim = p.dim, n = p.n, width = 4 * dim, size = order.size, q_width = 3 * dim;
  float* keys = rows.Reserve(width * n + (q_width + 2) * size);  // per key: k | v | dk | dv
  if (keys == nullptr) return false;
  float* queries = keys + width * n;  // per query, in walk order: q | dout | dq
  float *lse = queries + q_width * size, *delta = lse + size;
  PackRows({p.k, p.v}, head, n, dim, width, keys);
  for (int64_t j = 0; j < n; ++j) std::fill_n(keys + j * width + 2 * dim, 2 * dim, 0.0f);
  for (int64_t place = 0; place < size; ++place) {
    const int64_t i = order.positions[place];
    float* row = queries + place * q_width;
    std::copy_n(p.q + head.Row(i), dim, row), std::copy_n(p.dout + head.Row(i), dim, row + dim);
    std::fill_n(row + 2 * dim, dim, 0.0f);
    lse[place] = p.lse[(head.b * n + i) * p.heads + head.h];
    delta[place] = Dot<kDim>(row + dim, p.out + head.Row(i), dim);
  }
  GatherUnions(p, r);
  WalkBlocks(p, r, keys, width, [&](int64_t place, const int32_t* mine, int64_t m) {
    const float* q_i = queries + place * q_width;
    const float* dout_i = q_i + dim;
    float* dq_row = queries + place * q_width + 2 * dim;
    float acc[kDim ? kDim : 1];
    float* __restrict dq_i = kDim ? acc : dq_row;
    if (kDim) std::fill(acc, acc + dim, 0.0f);
    for (int64_t first = 0; first < m; first += 8) {
      float* group[8];
      const int64_t count = GroupRows(keys, width, mine, first, m, group);
      const Lanes8 weights = Exp8(p.uniform ? Lanes8{} - lse[place]
                                            : Dot8<kDim>(q_i, group, 0, dim) * p.scale - lse[place]);
      for (int64_t a = 0; a < count; ++a) AddScaled<kDim>(group[a] + 3 * dim, weights[a], dout_i, dim);  // dv_j
      if (p.uniform) continue;  // the weights do not depend on q or k
      const Lanes8 ds = weights * (Dot8<kDim>(dout_i, group, dim, dim) - delta[place]) * p.scale;
      for (int64_t a = 0; a < count; ++a) {
        AddScaled<kDim>(dq_i, ds[a], group[a], dim);
        AddScaled<kDim>(group[a] + 2 * dim, ds[a], q_i, dim);  // dk_j
      }
    }
    if (kDim) AddScaled<kDim>(dq_row, 1.0f, acc, dim);
  });
  for (int64_t i = 0; i < n; ++i) {  // padded queries get zeros
    std::fill_n(p.dq + head.Row(i), dim, 0.0f);
    std::copy_n(keys + i * width + 2 * dim, dim, p.dk + head.Row(i));
    std::copy_n(keys + i * width + 3 * dim, dim, p.dv + head.Row(i));
  }
  for (int64_t place = 0; place < size; ++place)
    std::copy_n(queries + place * q_width + 2 * dim, dim, p.dq + head.Row(order.positions[place]));
  return true;
}

// One (batch row, head): route, then the walk that suits its size (both attend the same pairs).
template <int64_t kDim>
bool ForwardTask(const Problem& p, int64_t task, Routing& r, Rows& rows) {
  if (!Route(p, task / p.heads, task % p.heads, r)) return false;
  const bool ok =
      QueryMajor(p) ? QueryMajorForward<kDim>(p, task, r, rows) : TableMajorForward<kDim>(p, task, r, rows);
  p.stats[task * 2] = static_cast<float>(r.collisions);
  p.stats[task * 2 + 1] = static_cast<float>(r.read);
  return ok;
}

template <int64_t kDim>
bool BackwardTask(const Problem& p, int64_t task, Routing& r, Rows& rows) {
  if (!Route(p, task / p.heads, task % p.heads, r)) return false;
  return QueryMajor(p) ? QueryMajorBackward<kDim>(p, task, r, rows) : TableMajorBackward<kDim>(p, task, r, rows);
}


// Whether two float buffers have the same dimensions.
bool SameShape(const ffi::Buffer<ffi::F32>& a, const ffi::Buffer<ffi::F32>& b) {
  const auto da = a.dimensions(), db = b.dimensions();
  if (da.size() != db.size()) return false;
  for (size_t i = 0; i < da.size(); ++i)
    if (da[i] != db[i]) return false;
  return true;
}

// Reads the shapes shared by both targets into p; an error message, or nullptr. Every float buffer the target
// reads (q, k, v; the backward's out and dout too) must have q's shape: a v of another head width would be read
// past its end.
const char* Shapes(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, const ffi::Buffer<ffi::F32>& v,
                   const ffi::Buffer<ffi::S32>& q_ids, const ffi::Buffer<ffi::S32>& k_ids,
                   const ffi::Buffer<ffi::PRED>& valid, Problem& p, int64_t* tasks) {
  const auto dims = q.dimensions();
  const auto id_dims = q_ids.dimensions();
  const size_t rank = dims.size();
  if (rank < 3 || id_dims.size() != rank || k_ids.dimensions().size() != rank)
    return "anna_softmax kernel: q (..., n, heads, dim) and ids (..., n, heads, tables) need equal rank >= 3";
  if (!SameShape(q, k) || !SameShape(q, v)) return "anna_softmax kernel: q, k and v must have equal shapes";
  for (size_t a = 0; a + 1 < rank; ++a)
    if (id_dims[a] != dims[a] || k_ids.dimensions()[a] != dims[a])
      return "anna_softmax kernel: ids and q disagree in shape";
  p.n = dims[rank - 3], p.heads = dims[rank - 2], p.dim = dims[rank - 1], p.tables = id_dims[rank - 1];
  if (k_ids.dimensions()[rank - 1] != p.tables || p.tables < 1) return "anna_softmax kernel: bad table count";
  const int64_t rows = p.n * p.heads * p.dim;
  const int64_t batch = rows > 0 ? q.element_count() / rows : 0;
  if (static_cast<int64_t>(valid.element_count()) != batch * p.n) return "anna_softmax kernel: valid must have shape (..., n)";
  if (p.num_ids < 1 || p.window < 1 || p.chunk < 1 || p.key_slots < std::max(p.n, p.window))
    return "anna_softmax kernel: bad num_ids, window, chunk or key_slots";
  *tasks = batch * p.heads;
  return nullptr;
}

// Runs the task for every (batch row, head), the common head widths unrolled.
template <template <int64_t> class Task>
bool RunTasks(ffi::ThreadPool& pool, const Problem& p, int64_t tasks) {
  return ParallelFor(pool, tasks, [p](int64_t task) {
    thread_local Routing routing;
    thread_local Rows rows;
    bool ok;
    switch (p.dim) {
      case 16: ok = Task<16>::Run(p, task, routing, rows); break;
      case 32: ok = Task<32>::Run(p, task, routing, rows); break;
      case 64: ok = Task<64>::Run(p, task, routing, rows); break;
      case 128: ok = Task<128>::Run(p, task, routing, rows); break;
      default: ok = Task<0>::Run(p, task, routing, rows);
    }
    rows.Trim();
    return ok;
  });
}

template <int64_t kDim>
struct Forward {
  static bool Run(const Problem& p, int64_t task, Routing& r, Rows& rows) {
    return ForwardTask<kDim>(p, task, r, rows);
  }
};
template <int64_t kDim>
struct Backward {
  static bool Run(const Problem& p, int64_t task, Routing& r, Rows& rows) {
    return BackwardTask<kDim>(p, task, r, rows);
  }
};

Problem Attributes(int64_t num_ids, int64_t key_slots, int64_t window, int64_t chunk, bool causal, bool uniform,
                   float scale, int64_t query_major_bytes, int64_t key_block_bytes) {
  Problem p{};
  p.num_ids = num_ids, p.key_slots = key_slots, p.window = window, p.chunk = chunk;
  p.query_major_bytes = query_major_bytes, p.key_block_bytes = key_block_bytes;
  p.causal = causal, p.uniform = uniform, p.scale = scale;
  return p;
}

ffi::Error SoftmaxForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                          ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> q_ids, ffi::Buffer<ffi::S32> k_ids,
                          ffi::Buffer<ffi::PRED> valid, ffi::Result<ffi::Buffer<ffi::F32>> out,
                          ffi::Result<ffi::Buffer<ffi::F32>> lse, ffi::Result<ffi::Buffer<ffi::F32>> stats,
                          int64_t num_ids, int64_t key_slots,
                          int64_t window, int64_t chunk, bool causal, bool uniform, float scale,
                          int64_t query_major_bytes, int64_t key_block_bytes) {
  Problem p = Attributes(num_ids, key_slots, window, chunk, causal, uniform, scale, query_major_bytes,
                         key_block_bytes);
  int64_t tasks;
  if (const char* error = Shapes(q, k, v, q_ids, k_ids, valid, p, &tasks)) return ffi::Error::InvalidArgument(error);
  p.q = q.typed_data(), p.k = k.typed_data(), p.v = v.typed_data();
  p.q_ids = q_ids.typed_data(), p.k_ids = k_ids.typed_data(), p.valid = valid.typed_data();
  p.out = out->typed_data(), p.lse = lse->typed_data(), p.stats = stats->typed_data();
  if (tasks == 0) return ffi::Error::Success();
  if (!RunTasks<Forward>(pool, p, tasks))
    return ffi::Error::InvalidArgument("anna_softmax kernel: a bucket id outside [0, num_ids), or no memory");
  return ffi::Error::Success();
}

ffi::Error SoftmaxBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                           ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> q_ids, ffi::Buffer<ffi::S32> k_ids,
                           ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                           ffi::Buffer<ffi::F32> dout,
                           ffi::Result<ffi::Buffer<ffi::F32>> dq, ffi::Result<ffi::Buffer<ffi::F32>> dk,
                           ffi::Result<ffi::Buffer<ffi::F32>> dv, int64_t num_ids, int64_t key_slots,
                           int64_t window, int64_t chunk, bool causal, bool uniform, float scale,
                          int64_t query_major_bytes, int64_t key_block_bytes) {
  Problem p = Attributes(num_ids, key_slots, window, chunk, causal, uniform, scale, query_major_bytes,
                         key_block_bytes);
  int64_t tasks;
  if (const char* error = Shapes(q, k, v, q_ids, k_ids, valid, p, &tasks)) return ffi::Error::InvalidArgument(error);
  if (!SameShape(q, out) || !SameShape(q, dout) || static_cast<int64_t>(lse.element_count()) * p.dim != q.element_count())
    return ffi::Error::InvalidArgument("anna_softmax kernel: out and dout must have q's shape, lse (..., n, heads)");
  p.q = q.typed_data(), p.k = k.typed_data(), p.v = v.typed_data(), p.dout = dout.typed_data();
  p.out = const_cast<float*>(out.typed_data()), p.lse = const_cast<float*>(lse.typed_data());  // read only
  p.q_ids = q_ids.typed_data(), p.k_ids = k_ids.typed_data(), p.valid = valid.typed_data();
  p.dq = dq->typed_data(), p.dk = dk->typed_data(), p.dv = dv->typed_data();
  if (tasks == 0) return ffi::Error::Success();
  if (!RunTasks<Backward>(pool, p, tasks))
    return ffi::Error::InvalidArgument("anna_softmax kernel: a bucket id outside [0, num_ids), or no memory");
  return ffi::Error::Success();
}

}  // namespace

#define ANNA_SOFTMAX_ATTRIBUTES                                                                                 \
  .Attr<int64_t>("num_ids").Attr<int64_t>("key_slots").Attr<int64_t>("window").Attr<int64_t>("chunk")          \
      .Attr<bool>("causal").Attr<bool>("uniform").Attr<float>("scale").Attr<int64_t>("query_major_bytes")  \
      .Attr<int64_t>("key_block_bytes")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AnnaSoftmaxForward, SoftmaxForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v
                                  .Arg<ffi::Buffer<ffi::S32>>()   // q_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()   // k_ids
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // valid
                                  .Ret<ffi::Buffer<ffi::F32>>()   // out
                                  .Ret<ffi::Buffer<ffi::F32>>()   // lse
                                  .Ret<ffi::Buffer<ffi::F32>>()   // stats: collisions, read pairs
                                      ANNA_SOFTMAX_ATTRIBUTES);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AnnaSoftmaxBackward, SoftmaxBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v
                                  .Arg<ffi::Buffer<ffi::S32>>()   // q_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()   // k_ids
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // valid
                                  .Arg<ffi::Buffer<ffi::F32>>()   // out
                                  .Arg<ffi::Buffer<ffi::F32>>()   // lse
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dout
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dk
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dv
                                      ANNA_SOFTMAX_ATTRIBUTES);
