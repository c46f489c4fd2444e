// The `anna` kind's 'cpu' loop plan: two XLA FFI targets that anna_jax/cpu_kernel.py builds and registers.
//
// anna_bucket_attend: Algorithm 1's bucket tables. Per (batch, head) and per hash table, every bucket holds the
// sum of the values and the count of the writers hashed into it; each reader adds what its buckets hold over
// the tables. Forward: writers are keys, readers are queries, the output is sum / count (zeros for a reader
// with no collision or a padded reader). Backward (the output is linear in the values): writers are queries
// carrying g_i / count_i, readers are keys, raw sums.
// direction 0: every valid writer counts for every reader. 1 (causal): writer j counts for reader i iff j <= i;
// the tokens are walked in order, writer i added before reader i reads. 2 (the transpose of 1): j >= i, walked
// backwards. So causal outputs are exact (no prefix-sum rounding) and nothing is ever dropped.
// A task is one (batch row, head); it builds up to `group_bytes` of tables at once, so each value row is read
// once per group. Shapes: ids (..., n, heads, tables) int32 in [0, num_ids), stored heads before tokens
// (cpu_kernel._ids_layout); values (..., n, heads, dim) float32 or bfloat16; out float32; valid (..., n) bool;
// counts (..., n, heads) int32.
// slots 0: bucket b of a table is row b of its table (num_ids rows). slots > 0 (a power of two >= 2 n, for code
// spaces far larger than n): a table is `slots` rows addressed by an open-addressed hash of the id (linear
// probing; each row remembers its id, so rows are exact, never shared by two ids); a reader whose id no writer
// wrote reads nothing. So any code space costs what n buckets cost.
//
// anna_hyperplane_codes: anna_jax/lsh.py's hyperplane codes, code = sum_z [x . w_z > 0] << z per table, summed in
// float32 in another order than XLA's matmul (so a vector within rounding of a hyperplane may fall either side).
//
// Both run their tasks on XLA's intra-op thread pool.

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernel_common.h"


namespace {

using anna_kernels::ParallelFor;
using anna_kernels::ToFloat;

template <typename Value>
struct Problem {
  const int32_t* read_ids;
  const int32_t* write_ids;
  const Value* values;
  const bool* read_valid;
  const bool* write_valid;
  float* out;
  int32_t* counts;
  int64_t n, heads, tables, dim, num_ids, direction;
  int64_t slots;  // 0: rows indexed by id; else hashed rows per table (a power of two)
  int64_t rows;  // rows per table: num_ids, or slots
  int shift;  // hashed rows: 64 - log2(slots)
  int64_t group;  // tables built together
  bool normalize;
};

// A thread's bucket tables: sums [table in group][row][dim], counts [table in group][row] and, for hashed rows,
// the id each row holds plus one (0: empty) [table in group][row], in one HugeBuffer.
class Tables {
 public:
  float* sums = nullptr;
  int32_t* counts = nullptr;
  uint32_t* keys = nullptr;

  // Room for `floats` sums, `ints` counts and `key_ints` keys, all zero; false if out of memory.
  bool Clear(size_t floats, size_t ints, size_t key_ints) {
    const size_t sum_bytes = floats * sizeof(float), count_bytes = ints * sizeof(int32_t);
    const size_t bytes = sum_bytes + count_bytes + key_ints * sizeof(uint32_t);
    char* memory = static_cast<char*>(buffer_.Reserve(bytes));
    if (memory == nullptr) return false;
    std::memset(memory, 0, bytes);
    sums = reinterpret_cast<float*>(memory);
    counts = reinterpret_cast<int32_t*>(memory + sum_bytes);
    keys = reinterpret_cast<uint32_t*>(memory + sum_bytes + count_bytes);
    return true;
  }

 private:
  anna_kernels::HugeBuffer buffer_;
};

// The row of bucket `id` in table t - t0 of the group; -1 if hashed rows hold no such id (and `insert` is false).
template <typename Value>
inline int64_t Row(const Problem<Value>& p, Tables& tables, int64_t t, int32_t id, bool insert) {
  if (p.slots == 0) return t * p.rows + id;
  uint32_t* keys = tables.keys + t * p.rows;
  const uint32_t key = static_cast<uint32_t>(id) + 1;
  const uint64_t mask = static_cast<uint64_t>(p.slots) - 1;
  for (uint64_t s = (key * 0x9E3779B97F4A7C15ull) >> p.shift;; s = (s + 1) & mask) {  // Fibonacci hashing
    if (keys[s] == key) return t * p.rows + s;
    if (keys[s] == 0) {
      if (!insert) return -1;
      keys[s] = key;  // at most n ids per table in >= 2 n rows: a free row is always found
      return t * p.rows + s;
    }
  }
}

// Adds writer token i's value row (head h) to its buckets in tables [t0, t1). False on an id out of range.
template <typename Value, int64_t kDim>
inline bool Write(const Problem<Value>& p, int64_t b, int64_t h, int64_t i, int64_t t0, int64_t t1,
                  Tables& tables) {
  if (!p.write_valid[b * p.n + i]) return true;
  const int64_t dim = kDim ? kDim : p.dim;
  const Value* __restrict value = p.values + ((b * p.n + i) * p.heads + h) * dim;
  const int32_t* ids = p.write_ids + ((b * p.heads + h) * p.n + i) * p.tables;
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t id = ids[t];
    if (id < 0 || id >= p.num_ids) return false;
    const int64_t bucket = Row(p, tables, t - t0, id, true);
    float* __restrict row = tables.sums + bucket * dim;
    for (int64_t d = 0; d < dim; ++d) row[d] += ToFloat(value[d]);
    tables.counts[bucket] += 1;
  }
  return true;
}

// Reader token i (head h) adds its buckets of tables [t0, t1) to what earlier groups left in out and counts;
// after the last group it writes the final row (normalised, or zeros for a padded reader).
template <typename Value, int64_t kDim>
inline bool Read(const Problem<Value>& p, int64_t b, int64_t h, int64_t i, int64_t t0, int64_t t1,
                 Tables& tables, float* __restrict acc) {
  const int64_t dim = kDim ? kDim : p.dim;
  float local[kDim ? kDim : 1];  // a known width keeps the running sum in registers
  if (kDim) acc = local;
  const bool first = t0 == 0, last = t1 == p.tables;
  const int64_t token = (b * p.n + i) * p.heads + h;
  float* __restrict out = p.out + token * dim;
  const int32_t* ids = p.read_ids + ((b * p.heads + h) * p.n + i) * p.tables;
  int32_t count = first ? 0 : p.counts[token];
  for (int64_t d = 0; d < dim; ++d) acc[d] = first ? 0.0f : out[d];
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t id = ids[t];
    if (id < 0 || id >= p.num_ids) return false;
    const int64_t bucket = Row(p, tables, t - t0, id, false);
    if (bucket < 0) continue;  // no writer hashed here
    const float* __restrict row = tables.sums + bucket * dim;
    for (int64_t d = 0; d < dim; ++d) acc[d] += row[d];
    count += tables.counts[bucket];
  }
  float scale = 1.0f;
  if (last) {
    if (!p.read_valid[b * p.n + i]) count = 0, scale = 0.0f;
    else if (p.normalize) scale = count > 0 ? 1.0f / static_cast<float>(count) : 0.0f;
  }
  for (int64_t d = 0; d < dim; ++d) out[d] = acc[d] * scale;
  p.counts[token] = count;
  return true;
}

// One task: batch row b, head h, every group of tables. False on a bad id or no memory.
template <typename Value, int64_t kDim>
bool AttendTask(const Problem<Value>& p, int64_t task, Tables& tables, float* acc) {
  const int64_t b = task / p.heads, h = task % p.heads;
  for (int64_t t0 = 0; t0 < p.tables; t0 += p.group) {
    const int64_t t1 = std::min(p.tables, t0 + p.group);
    const size_t buckets = static_cast<size_t>((t1 - t0) * p.rows);
    if (!tables.Clear(buckets * p.dim, buckets, p.slots ? buckets : 0)) return false;
    bool ok = true;
    if (p.direction == 0) {
      for (int64_t i = 0; i < p.n; ++i) ok &= Write<Value, kDim>(p, b, h, i, t0, t1, tables);
      for (int64_t i = 0; i < p.n; ++i) ok &= Read<Value, kDim>(p, b, h, i, t0, t1, tables, acc);
    } else {  // writer i is added before reader i reads: j <= i walking forwards, j >= i backwards
      const int64_t step = p.direction == 1 ? 1 : -1;
      for (int64_t i = p.direction == 1 ? 0 : p.n - 1; 0 <= i && i < p.n; i += step) {
        ok &= Write<Value, kDim>(p, b, h, i, t0, t1, tables);
        ok &= Read<Value, kDim>(p, b, h, i, t0, t1, tables, acc);
      }
    }
    if (!ok) return false;
  }
  return true;
}

template <typename Value>
ffi::Error BucketAttendTyped(ffi::ThreadPool& pool, ffi::Buffer<ffi::S32>& read_ids,
                             ffi::Buffer<ffi::S32>& write_ids, ffi::AnyBuffer& values,
                             ffi::Buffer<ffi::PRED>& read_valid, ffi::Buffer<ffi::PRED>& write_valid,
                             ffi::Result<ffi::Buffer<ffi::F32>>& out, ffi::Result<ffi::Buffer<ffi::S32>>& counts,
                             int64_t num_ids, int64_t slots, int64_t direction, bool normalize,
                             int64_t group_bytes) {
  const auto ids_dims = read_ids.dimensions();
  const auto value_dims = values.dimensions();
  const size_t rank = ids_dims.size();
  if (rank < 3 || value_dims.size() != rank || write_ids.dimensions().size() != rank || ids_dims[rank - 1] < 1)
    return ffi::Error::InvalidArgument("anna_bucket_attend: ids and values need equal rank >= 3, tables >= 1");
  for (size_t a = 0; a + 1 < rank; ++a)
    if (ids_dims[a] != value_dims[a] || write_ids.dimensions()[a] != ids_dims[a])
      return ffi::Error::InvalidArgument("anna_bucket_attend: ids and values disagree in shape");
  if (write_ids.dimensions()[rank - 1] != ids_dims[rank - 1] || num_ids < 1 || direction < 0 || direction > 2)
    return ffi::Error::InvalidArgument("anna_bucket_attend: bad tables, num_ids or direction");
  const int64_t n = ids_dims[rank - 3];
  if (slots < 0 || (slots & (slots - 1)) != 0 || (slots > 0 && slots < 2 * n))
    return ffi::Error::InvalidArgument("anna_bucket_attend: slots must be 0 or a power of two >= 2 n");
  if (read_valid.element_count() * ids_dims[rank - 2] != read_ids.element_count() / ids_dims[rank - 1] ||
      write_valid.element_count() != read_valid.element_count())
    return ffi::Error::InvalidArgument("anna_bucket_attend: valid must have shape (..., n)");
  Problem<Value> p;
  p.read_ids = read_ids.typed_data();
  p.write_ids = write_ids.typed_data();
  p.values = static_cast<const Value*>(values.untyped_data());
  p.read_valid = read_valid.typed_data();
  p.write_valid = write_valid.typed_data();
  p.out = out->typed_data();
  p.counts = counts->typed_data();
  p.n = ids_dims[rank - 3];
  p.heads = ids_dims[rank - 2];
  p.tables = ids_dims[rank - 1];
  p.dim = value_dims[rank - 1];
  p.num_ids = num_ids;
  p.slots = slots;
  p.rows = slots ? slots : num_ids;
  p.shift = 64;
  for (int64_t s = slots; s > 1; s >>= 1) --p.shift;
  p.direction = direction;
  p.normalize = normalize;
  const int64_t batch = p.n > 0 ? read_valid.element_count() / p.n : 0;
  if (batch == 0 || p.heads == 0) return ffi::Error::Success();
  // Tables per pass: as many as fit group_bytes (at least one).
  const int64_t table_bytes = p.rows * (p.dim + (slots ? 2 : 1)) * 4;
  p.group = std::max<int64_t>(1, std::min<int64_t>(p.tables, group_bytes / table_bytes));
  const int64_t num_tasks = batch * p.heads;

  const bool ok = ParallelFor(pool, num_tasks, [p](int64_t task) {
    thread_local Tables tables;
    thread_local std::vector<float> acc;
    acc.resize(p.dim);
    switch (p.dim) {  // the common head widths, unrolled
      case 64: return AttendTask<Value, 64>(p, task, tables, acc.data());
      case 128: return AttendTask<Value, 128>(p, task, tables, acc.data());
      default: return AttendTask<Value, 0>(p, task, tables, acc.data());
    }
  });
  if (!ok) return ffi::Error::InvalidArgument("anna_bucket_attend: a bucket id outside [0, num_ids), or no memory");
  return ffi::Error::Success();
}

ffi::Error BucketAttend(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> read_ids, ffi::Buffer<ffi::S32> write_ids,
                        ffi::AnyBuffer values, ffi::Buffer<ffi::PRED> read_valid,
                        ffi::Buffer<ffi::PRED> write_valid, ffi::Result<ffi::Buffer<ffi::F32>> out,
                        ffi::Result<ffi::Buffer<ffi::S32>> counts, int64_t num_ids, int64_t slots,
                        int64_t direction, bool normalize, int64_t group_bytes) {
  if (values.element_type() == ffi::DataType::F32)
    return BucketAttendTyped<float>(pool, read_ids, write_ids, values, read_valid, write_valid, out, counts,
                                    num_ids, slots, direction, normalize, group_bytes);
  if (values.element_type() == ffi::DataType::BF16)
    return BucketAttendTyped<uint16_t>(pool, read_ids, write_ids, values, read_valid, write_valid, out, counts,
                                       num_ids, slots, direction, normalize, group_bytes);
  return ffi::Error::InvalidArgument("anna_bucket_attend: values must be float32 or bfloat16");
}

// Hyperplane codes (anna_jax/lsh.py's 'hyperplane' family): code = sum_z [x . w_z > 0] << z per table. A task
// is a block of kHashBlock tokens of one batch row, all heads (their rows lie side by side in memory); a register
// tile of kTileTokens tokens x kTileOut projections is accumulated while the head's weights stream from cache.
// kTileOut floats are one SIMD register: wider vectors are split into several, and the tile's accumulators then
// spill (on an AVX2 machine 16-float lanes ran 10x slower than 8: 7 against 74 GFLOP/s, 2026-12-03).
#if defined(__AVX512F__)
constexpr int64_t kTileOut = 16;
#else
constexpr int64_t kTileOut = 8;
#endif
constexpr int64_t kHashBlock = 64, kTileTokens = 8;
typedef float Lanes __attribute__((vector_size(kTileOut * sizeof(float))));

template <typename Input>
struct Hashing {
  const Input* x;  // (batch, n, heads, dim)
  const float* weights;  // (heads, dim, padded): projection (t, z) in column t * hashes + z, zeros after
  int32_t* codes;  // (batch, n, heads, tables), stored heads before tokens
  int64_t n, heads, dim, tables, hashes, padded;
};

// Codes of tokens [i, i + rows) of batch row b, head h. y: kTileTokens * padded floats; tile: kTileTokens * dim.
template <typename Input>
void HashTile(const Hashing<Input>& p, int64_t b, int64_t h, int64_t i, int64_t rows, float* y, float* tile) {
  const float* xs[kTileTokens];  // the tile's rows in float32 (bfloat16 ones converted into `tile`)
  for (int64_t a = 0; a < kTileTokens; ++a) {
    const Input* x = p.x + ((b * p.n + i + std::min(a, rows - 1)) * p.heads + h) * p.dim;  // a partial tile
    if constexpr (std::is_same_v<Input, float>) {                                         // repeats its last
      xs[a] = x;
    } else {
      for (int64_t d = 0; d < p.dim; ++d) tile[a * p.dim + d] = ToFloat(x[d]);
      xs[a] = tile + a * p.dim;
    }
  }
  const float* weights = p.weights + h * p.dim * p.padded;
  for (int64_t o = 0; o < p.padded; o += kTileOut) {
    Lanes acc[kTileTokens] = {};
    for (int64_t d = 0; d < p.dim; ++d) {
      Lanes w;
      std::memcpy(&w, weights + d * p.padded + o, sizeof(w));
      for (int64_t a = 0; a < kTileTokens; ++a) acc[a] += xs[a][d] * w;
    }
    for (int64_t a = 0; a < kTileTokens; ++a) std::memcpy(y + a * p.padded + o, &acc[a], sizeof(acc[a]));
  }
  for (int64_t a = 0; a < rows; ++a) {
    int32_t* codes = p.codes + ((b * p.heads + h) * p.n + i + a) * p.tables;
    const float* ya = y + a * p.padded;
    for (int64_t t = 0; t < p.tables; ++t) {
      int32_t code = 0;
      for (int64_t z = 0; z < p.hashes; ++z) code |= static_cast<int32_t>(ya[t * p.hashes + z] > 0.0f) << z;
      codes[t] = code;
    }
  }
}

template <typename Input>
ffi::Error HyperplaneCodesTyped(ffi::ThreadPool& pool, ffi::AnyBuffer& x, ffi::Buffer<ffi::F32>& projections,
                                ffi::Result<ffi::Buffer<ffi::S32>>& codes) {
  const auto x_dims = x.dimensions();
  const auto w_dims = projections.dimensions();
  const size_t rank = x_dims.size();
  if (rank < 3 || w_dims.size() != 4 || w_dims[0] != x_dims[rank - 2] || w_dims[2] != x_dims[rank - 1] ||
      w_dims[3] > 31)
    return ffi::Error::InvalidArgument("anna_hyperplane_codes: x (..., n, heads, dim) and projections "
                                       "(heads, tables, dim, hashes <= 31) disagree");
  const int64_t n = x_dims[rank - 3], heads = x_dims[rank - 2], dim = x_dims[rank - 1];
  const int64_t tables = w_dims[1], hashes = w_dims[3];
  const int64_t padded = (tables * hashes + kTileOut - 1) / kTileOut * kTileOut;
  const int64_t batch = n * heads * dim > 0 ? x.element_count() / (n * heads * dim) : 0;
  if (batch == 0 || tables == 0) return ffi::Error::Success();
  std::vector<float> weights(heads * dim * padded, 0.0f);
  const float* w = projections.typed_data();
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = 0; t < tables; ++t)
      for (int64_t d = 0; d < dim; ++d)
        for (int64_t z = 0; z < hashes; ++z)
          weights[(h * dim + d) * padded + t * hashes + z] = w[((h * tables + t) * dim + d) * hashes + z];
  const Hashing<Input> p{static_cast<const Input*>(x.untyped_data()), weights.data(), codes->typed_data(),
                         n, heads, dim, tables, hashes, padded};
  const int64_t blocks = (n + kHashBlock - 1) / kHashBlock;
  ParallelFor(pool, batch * blocks, [p, blocks](int64_t task) {
    const int64_t b = task / blocks, i0 = task % blocks * kHashBlock, i1 = std::min(p.n, i0 + kHashBlock);
    thread_local std::vector<float> y, tile;
    y.resize(kTileTokens * p.padded);
    tile.resize(kTileTokens * p.dim);
    for (int64_t i = i0; i < i1; i += kTileTokens)
      for (int64_t h = 0; h < p.heads; ++h)
        HashTile(p, b, h, i, std::min(kTileTokens, i1 - i), y.data(), tile.data());
    return true;
  });
  return ffi::Error::Success();
}

ffi::Error HyperplaneCodes(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::F32> projections,
                           ffi::Result<ffi::Buffer<ffi::S32>> codes) {
  if (x.element_type() == ffi::DataType::F32) return HyperplaneCodesTyped<float>(pool, x, projections, codes);
  if (x.element_type() == ffi::DataType::BF16) return HyperplaneCodesTyped<uint16_t>(pool, x, projections, codes);
  return ffi::Error::InvalidArgument("anna_hyperplane_codes: x must be float32 or bfloat16");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AnnaBucketAttend, BucketAttend,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // read_ids
                                  .Arg<ffi::Buffer<ffi::S32>>()   // write_ids
                                  .Arg<ffi::AnyBuffer>()          // values at the writers: f32 or bf16
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // read_valid
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // write_valid
                                  .Ret<ffi::Buffer<ffi::F32>>()   // out (at the readers)
                                  .Ret<ffi::Buffer<ffi::S32>>()   // counts (at the readers)
                                  .Attr<int64_t>("num_ids")
                                  .Attr<int64_t>("slots")
                                  .Attr<int64_t>("direction")
                                  .Attr<bool>("normalize")
                                  .Attr<int64_t>("group_bytes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AnnaHyperplaneCodes, HyperplaneCodes,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // x: f32 or bf16
                                  .Arg<ffi::Buffer<ffi::F32>>()   // projections
                                  .Ret<ffi::Buffer<ffi::S32>>());  // codes
