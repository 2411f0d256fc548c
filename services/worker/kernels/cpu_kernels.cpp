// The engine's fused CPU kernels, registered as torch.ops.hopscope.*.
//
// On CPU a decode step of a small model is dominated, after the GEMMs, by memory traffic and by
// the fixed cost of many small ATen ops. These kernels remove both:
//   paged_decode_attention  one query per sequence against its context, read in place from the
//                           paged KV cache through the block table (the torch path first copies
//                           every sequence's blocks out: megabytes per layer at batch 32);
//   rope_and_cache_         rotary embedding of q and k inside the fused qkv projection, and the
//                           write of k and v into their cache slots, in one pass;
//   rms_norm, add_rms_norm_ RMSNorm, optionally fused with the residual add before it;
//   silu_and_mul            SwiGLU's silu(gate) * up.
// Arithmetic is in float whatever the storage dtype, as the reference implementation does it.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

// exp(x) in float, as Cephes' expf: x = n ln2 + r, a degree-6 polynomial for exp(r), times
// 2^n. About 1 ulp; unlike std::exp, loops using it vectorise (the rounding below avoids
// std::floor, which blocks gcc's vectoriser).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round: 1.5 * 2^23
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;  // ln2 in two parts, for precision
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// Rows per parallel task for row-wise kernels: small steps stay on one thread.
int64_t row_grain(int64_t row_elements) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_elements));
}

// ---------------------------------------------------------------------------------------------
// Decode attention over the paged cache.

// kHeadDim > 0 fixes the head size at compile time (unrolled, vectorised inner loops);
// 0 reads it at run time.
template <typename scalar_t, int kHeadDim>
void decode_attention(
    const scalar_t* q,        // [B, H, D], heads of D contiguous
    int64_t q_seq_stride,
    const scalar_t* k_cache,  // [KVH, S, D], rows of D contiguous
    const scalar_t* v_cache,
    int64_t cache_head_stride,
    int64_t cache_slot_stride,
    const int64_t* tables,  // [B, max_blocks]
    int64_t max_blocks,
    const int64_t* lens,  // [B]
    scalar_t* out,        // [B, H, D]
    int64_t num_seqs,
    int64_t num_heads,
    int64_t num_kv_heads,
    int64_t runtime_head_dim,
    int64_t block_size,
    float scale) {
  const int64_t D = kHeadDim > 0 ? kHeadDim : runtime_head_dim;
  const int64_t group = num_heads / num_kv_heads;
  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> query(group * D);
    std::vector<float> acc(group * D);
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / num_kv_heads;
      const int64_t h = item % num_kv_heads;
      const int64_t len = lens[b];
      const int64_t* table = tables + b * max_blocks;
      const scalar_t* k_head = k_cache + h * cache_head_stride;
      const scalar_t* v_head = v_cache + h * cache_head_stride;
      const scalar_t* q_group = q + b * q_seq_stride + h * group * D;
      for (int64_t i = 0; i < group * D; ++i) {
        query[i] = static_cast<float>(q_group[i]) * scale;
      }
      scores.resize(group * len);
      // Scores: every cached key row is read once, block by block, and scored against the
      // group's queries.
      for (int64_t start = 0; start < len; start += block_size) {
        const int64_t n = std::min(block_size, len - start);
        const int64_t first_row = table[start / block_size] * block_size * cache_slot_stride;
        const scalar_t* block_keys = k_head + first_row;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t* key = block_keys + i * cache_slot_stride;
          for (int64_t g = 0; g < group; ++g) {
            const float* qg = query.data() + g * D;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) {
              dot += qg[d] * static_cast<float>(key[d]);
            }
            scores[g * len + start + i] = dot;
          }
        }
      }
      // Softmax per query head.
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores.data() + g * len;
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < len; ++t) {
          max_score = std::max(max_score, s[t]);
        }
        float total = 0.f;
#pragma omp simd reduction(+ : total)
        for (int64_t t = 0; t < len; ++t) {
          s[t] = exp_approx(s[t] - max_score);
          total += s[t];
        }
        const float inv_total = 1.f / total;
        for (int64_t t = 0; t < len; ++t) {
          s[t] *= inv_total;
        }
      }
      // Weighted sum of the value rows: again one pass over the cache.
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = 0; start < len; start += block_size) {
        const int64_t n = std::min(block_size, len - start);
        const int64_t first_row = table[start / block_size] * block_size * cache_slot_stride;
        const scalar_t* block_values = v_head + first_row;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t* value = block_values + i * cache_slot_stride;
          for (int64_t g = 0; g < group; ++g) {
            const float p = scores[g * len + start + i];
            float* a = acc.data() + g * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) {
              a[d] += p * static_cast<float>(value[d]);
            }
          }
        }
      }
      scalar_t* out_group = out + (b * num_heads + h * group) * D;
      for (int64_t i = 0; i < group * D; ++i) {
        out_group[i] = static_cast<scalar_t>(acc[i]);
      }
    }
  });
}

at::Tensor paged_decode_attention(
    const at::Tensor& q,             // [B, H, D]
    const at::Tensor& k_cache,       // [KVH, S, D]
    const at::Tensor& v_cache,       // [KVH, S, D]
    const at::Tensor& block_tables,  // [B, max_blocks] int64
    const at::Tensor& context_lens,  // [B] int64
    int64_t block_size,
    double scale) {
  TORCH_CHECK(q.device().is_cpu(), "paged_decode_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.dim() == 3, "bad ranks");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && k_cache.strides() == v_cache.strides(),
              "K and V caches differ in shape or layout");
  TORCH_CHECK(k_cache.stride(2) == 1, "cache rows must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "q and cache dtypes differ");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && context_lens.scalar_type() == at::kLong,
              "block tables and lengths must be int64");
  const int64_t num_seqs = q.size(0), num_heads = q.size(1), head_dim = q.size(2);
  const int64_t num_kv_heads = k_cache.size(0);
  TORCH_CHECK(k_cache.size(2) == head_dim, "head_dim mismatch");
  TORCH_CHECK(num_heads % num_kv_heads == 0, "heads must be a multiple of kv heads");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == num_seqs, "block table shape");
  TORCH_CHECK(context_lens.numel() == num_seqs, "one context length per sequence");
  // q may be a view into the fused qkv projection: rows strided, heads packed.
  auto qc = q.stride(2) == 1 && q.stride(1) == head_dim ? q : q.contiguous();
  auto tables = block_tables.contiguous();
  auto lens = context_lens.contiguous();
  const int64_t max_blocks = tables.size(1);
  const int64_t num_slots = k_cache.size(1);
  const int64_t* len_data = lens.data_ptr<int64_t>();
  const int64_t* table_data = tables.data_ptr<int64_t>();
  for (int64_t b = 0; b < num_seqs; ++b) {  // the kernel trusts these from here on
    TORCH_CHECK(len_data[b] >= 1 && len_data[b] <= max_blocks * block_size,
                "context length outside the block table");
    const int64_t used_blocks = (len_data[b] + block_size - 1) / block_size;
    for (int64_t i = 0; i < used_blocks; ++i) {
      const int64_t block = table_data[b * max_blocks + i];
      TORCH_CHECK(block >= 0 && (block + 1) * block_size <= num_slots, "block outside the cache");
    }
  }
  auto out = at::empty({num_seqs, num_heads, head_dim}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, qc.scalar_type(), "paged_decode_attention", [&] {
        auto run = [&](auto kernel) {
          kernel(qc.data_ptr<scalar_t>(), qc.stride(0), k_cache.data_ptr<scalar_t>(),
                 v_cache.data_ptr<scalar_t>(), k_cache.stride(0), k_cache.stride(1), table_data,
                 max_blocks, len_data, out.data_ptr<scalar_t>(), num_seqs, num_heads,
                 num_kv_heads, head_dim, block_size, static_cast<float>(scale));
        };
        if (head_dim == 64) {
          run(decode_attention<scalar_t, 64>);
        } else if (head_dim == 128) {
          run(decode_attention<scalar_t, 128>);
        } else {
          run(decode_attention<scalar_t, 0>);
        }
      });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding and cache write.

template <typename scalar_t>
void rotate_row(scalar_t* x, const scalar_t* cos, const scalar_t* sin, int64_t D) {
  // x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[h:], x[:h]).
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = static_cast<float>(x[i]);
    const float b = static_cast<float>(x[i + half]);
    x[i] = static_cast<scalar_t>(a * static_cast<float>(cos[i]) - b * static_cast<float>(sin[i]));
    x[i + half] = static_cast<scalar_t>(b * static_cast<float>(cos[i + half]) +
                                        a * static_cast<float>(sin[i + half]));
  }
}

// qkv: [T, (H + 2 * KVH) * D]; rotates q and k in place and writes k and v to their slots.
void rope_and_cache_(
    at::Tensor& qkv,
    const at::Tensor& cos,  // [T, D]
    const at::Tensor& sin,
    at::Tensor& k_cache,  // [KVH, S, D]
    at::Tensor& v_cache,
    const at::Tensor& slots,  // [T] int64
    int64_t num_heads,
    int64_t num_kv_heads) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.dim() == 2 && qkv.is_contiguous(), "qkv layout");
  const int64_t num_tokens = qkv.size(0);
  const int64_t D = k_cache.size(2);
  TORCH_CHECK(qkv.size(1) == (num_heads + 2 * num_kv_heads) * D, "qkv width");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == num_tokens &&
                  cos.size(-1) == D && sin.sizes() == cos.sizes(),
              "cos/sin shape");
  TORCH_CHECK(k_cache.stride(2) == 1 && k_cache.strides() == v_cache.strides() &&
                  k_cache.size(0) == num_kv_heads,
              "cache layout");
  TORCH_CHECK(qkv.scalar_type() == k_cache.scalar_type() &&
                  cos.scalar_type() == qkv.scalar_type() && slots.scalar_type() == at::kLong,
              "dtypes");
  TORCH_CHECK(slots.numel() == num_tokens, "one slot per token");
  auto slot_index = slots.contiguous();
  const int64_t* slot_data = slot_index.data_ptr<int64_t>();
  const int64_t num_slots = k_cache.size(1);
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slot_data[t] >= 0 && slot_data[t] < num_slots, "slot outside the cache");
  }
  const int64_t width = qkv.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rope_and_cache_",
                                  [&] {
    scalar_t* data = qkv.data_ptr<scalar_t>();
    const scalar_t* cos_data = cos.data_ptr<scalar_t>();
    const scalar_t* sin_data = sin.data_ptr<scalar_t>();
    scalar_t* k_data = k_cache.data_ptr<scalar_t>();
    scalar_t* v_data = v_cache.data_ptr<scalar_t>();
    const int64_t head_stride = k_cache.stride(0), slot_stride = k_cache.stride(1);
    at::parallel_for(0, num_tokens, row_grain(width), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        scalar_t* row = data + t * width;
        const scalar_t* c = cos_data + t * D;
        const scalar_t* s = sin_data + t * D;
        for (int64_t head = 0; head < num_heads + num_kv_heads; ++head) {
          rotate_row(row + head * D, c, s, D);
        }
        for (int64_t h = 0; h < num_kv_heads; ++h) {
          const scalar_t* k = row + (num_heads + h) * D;
          const scalar_t* v = row + (num_heads + num_kv_heads + h) * D;
          const int64_t offset = h * head_stride + slot_data[t] * slot_stride;
          std::copy(k, k + D, k_data + offset);
          std::copy(v, v + D, v_data + offset);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// RMSNorm, and the residual add fused before it.

template <typename scalar_t>
void rms_norm_row(const scalar_t* x, const scalar_t* weight, scalar_t* out, int64_t n, float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    sum += v * v;
  }
  const float inv = 1.f / std::sqrt(sum / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) {
    // Normalised in float, cast to the storage dtype, then scaled: the reference's order.
    const scalar_t normed = static_cast<scalar_t>(static_cast<float>(x[i]) * inv);
    out[i] = static_cast<scalar_t>(static_cast<float>(weight[i]) * static_cast<float>(normed));
  }
}

void check_norm_args(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "x must be [T, H]");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous(),
              "weight must be [H]");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "dtypes differ");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_args(x, weight);
  auto out = at::empty_like(x);
  const int64_t rows = x.size(0), n = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        rms_norm_row(x_data + r * n, w, o + r * n, n, static_cast<float>(eps));
      }
    });
  });
  return out;
}

// residual += x; returns rms_norm(residual).
at::Tensor add_rms_norm_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight,
                         double eps) {
  check_norm_args(residual, weight);
  TORCH_CHECK(x.sizes() == residual.sizes() && x.is_contiguous() &&
                  x.scalar_type() == residual.scalar_type(),
              "x must match the residual");
  auto out = at::empty_like(residual);
  const int64_t rows = residual.size(0), n = residual.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, residual.scalar_type(), "add_rms_norm_", [&] {
        scalar_t* res = residual.data_ptr<scalar_t>();
        const scalar_t* x_data = x.data_ptr<scalar_t>();
        const scalar_t* w = weight.data_ptr<scalar_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            scalar_t* row = res + r * n;
            const scalar_t* add = x_data + r * n;
            for (int64_t i = 0; i < n; ++i) {
              row[i] = static_cast<scalar_t>(static_cast<float>(row[i]) +
                                             static_cast<float>(add[i]));
            }
            rms_norm_row(row, w, o + r * n, n, static_cast<float>(eps));
          }
        });
      });
  return out;
}

// ---------------------------------------------------------------------------------------------
// SwiGLU activation: x = [gate | up] per row -> silu(gate) * up.

template <typename scalar_t>
void silu_and_mul_row(const scalar_t* gate, scalar_t* out, int64_t n) {
  const scalar_t* up = gate + n;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = static_cast<float>(gate[i]);
    // silu rounded to the storage dtype before the product, as torch computes it.
    const scalar_t act = static_cast<scalar_t>(g / (1.f + exp_approx(-g)));
    out[i] = static_cast<scalar_t>(static_cast<float>(act) * static_cast<float>(up[i]));
  }
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0,
              "x must be [T, 2 * I]");
  const int64_t rows = x.size(0), n = x.size(1) / 2;
  auto out = at::empty({rows, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul", [&] {
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(2 * n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        silu_and_mul_row(x_data + r * 2 * n, o + r * n, n);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(hopscope, m) {
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor context_lens, int block_size, float scale) -> Tensor");
  m.def(
      "rope_and_cache_(Tensor(a!) qkv, Tensor cos, Tensor sin, Tensor(b!) k_cache, "
      "Tensor(c!) v_cache, Tensor slots, int num_heads, int num_kv_heads) -> ()");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm_(Tensor(a!) residual, Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_and_mul(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(hopscope, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
  m.impl("rope_and_cache_", &rope_and_cache_);
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm_", &add_rms_norm_);
  m.impl("silu_and_mul", &silu_and_mul);
}
