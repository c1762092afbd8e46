// XLA FFI handlers for a 3x3 / stride 1 / SAME (pad 1) float32 convolution,
// computed by oneDNN (the library PyTorch uses on CPU).
//
// Layouts are those of smsdd_jax/conv.py: activations NHWC, weights HWIO.
// The targets, called by smsdd_jax/onednn/__init__.py through jax.ffi:
//   OnednnConv3x3Fwd             y  = conv(x, w)
//   OnednnConv3x3BiasReluFwd     y  = relu(conv(x, w) + b)   (post-ops)
//   OnednnConv3x3BwdData         dx = conv_backward_data(dy, w)
//   OnednnConv3x3BwdWeights      dw = conv_backward_weights(x, dy)
//   OnednnConv3x3BwdWeightsBias  dw, db = the same, and sum(dy) over n, h, w
//   OnednnConv3x3BiasReluFwdBf16, OnednnConv3x3BwdDataBf16,
//   OnednnConv3x3BwdWeightsBiasBf16: the fused path's three in bfloat16 for
//                                training (float32 master weights in, float32
//                                dw and db out; see kFwdBiasReluBf16)
//   OnednnConv3x3FwdBf16, OnednnConv3x3BwdWeightsBf16: the plain conv's
//                                forward and weight gradient in bfloat16 (with
//                                BwdDataBf16: the unfused path, batch norm's)
//
// Why it is built this way:
//  * Creating a oneDNN primitive (descriptor dispatch + JIT code generation)
//    costs milliseconds, so each (op, shape) gets a Plan built once and kept
//    for the life of the process.
//  * Weights go through oneDNN's preferred (blocked) layout (format_tag::any)
//    with a reorder from/to HWIO. In training they change at every step; in
//    scores and maps the same weights come back call after call (a map runs
//    every layer once per chunk of ROIs), and a reorder of a few KB cost
//    ~40 us there, mostly waking oneDNN's threads: a 1/16-width map spent a
//    fifth of its conv time in them. So a plan keeps the reordered copy of
//    small weights (kKeepBytes) with the HWIO bytes it came from, and reorders
//    again only when those bytes differ (memcmp: a few KB, ~1 us). Larger
//    weights reorder into one shared staging buffer every call.
//  * Activations stay NHWC: oneDNN's brgemm convolutions run on NHWC
//    directly, and XLA's buffers are used in place, without copies.
//  * One process-wide mutex serialises the calls: each call already uses all
//    cores through oneDNN's own threads, and XLA may run independent custom
//    calls (a layer's dx and dw) concurrently; serialising avoids
//    oversubscription and makes the single stream and staging buffers safe.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;
using Clock = std::chrono::steady_clock;

// kFwdBiasRelu is relu(conv(x, w) + b) in one primitive (bias and a ReLU
// post-op: the output is written once instead of three times), and
// kBwdWeightsBias computes the bias gradient inside the weight-gradient
// kernel (no separate pass over dy).
// kPackedFwdBiasRelu is kFwdBiasRelu for inference on weights already in
// oneDNN's layout (PackedWeights), packed once when a model is loaded for
// scoring: a batch-1 forward spent ~12% of its time reordering them.
// kPackedFwdBiasReluBf16 is the same in bfloat16 (activations and weights;
// float32 bias and accumulation): AVX512-BF16 doubles the multiply rate.
// kFwdBiasReluBf16, kBwdDataBf16 and kBwdWeightsBiasBf16 are the fused
// training path's three in bfloat16 (activations, dy, dx and the weights
// inside the kernel; float32 accumulation), for bfloat16 training with
// float32 master weights: the weights come in as float32 HWIO and are cast by
// the reorder into oneDNN's layout that runs anyway (no separate cast pass),
// and dw, db come out in float32, accumulated there, so neither the optimizer
// nor the master weights ever see a bfloat16 rounding of a gradient.
// kFwdBf16 and kBwdWeightsBf16 are the same for the plain conv (no bias, no
// ReLU: batch norm sits between the conv and its ReLU), with kBwdDataBf16.
enum class Op {
  kFwd = 0, kBwdData = 1, kBwdWeights = 2, kFwdBiasRelu = 3, kBwdWeightsBias = 4,
  kPackedFwdBiasRelu = 5, kPackedFwdBiasReluBf16 = 6, kFwdBiasReluBf16 = 7,
  kBwdDataBf16 = 8, kBwdWeightsBiasBf16 = 9, kFwdBf16 = 10, kBwdWeightsBf16 = 11
};
const char* const kOpNames[] = {"fwd", "bwd_data", "bwd_weights", "fwd_bias_relu",
                                "bwd_weights_bias", "packed_fwd_bias_relu",
                                "packed_fwd_bias_relu_bf16", "fwd_bias_relu_bf16",
                                "bwd_data_bf16", "bwd_weights_bias_bf16", "fwd_bf16",
                                "bwd_weights_bf16"};
constexpr int kNumOps = sizeof(kOpNames) / sizeof(kOpNames[0]);

bool IsPacked(Op op) { return op == Op::kPackedFwdBiasRelu || op == Op::kPackedFwdBiasReluBf16; }
bool IsFwd(Op op) {
  return op == Op::kFwd || op == Op::kFwdBiasRelu || op == Op::kFwdBiasReluBf16 ||
         op == Op::kFwdBf16 || IsPacked(op);
}
bool IsBwdData(Op op) { return op == Op::kBwdData || op == Op::kBwdDataBf16; }
bool IsBwdWeights(Op op) {
  return op == Op::kBwdWeights || op == Op::kBwdWeightsBias || op == Op::kBwdWeightsBiasBf16 ||
         op == Op::kBwdWeightsBf16;
}
bool HasBias(Op op) {
  return op == Op::kFwdBiasRelu || op == Op::kBwdWeightsBias || IsPacked(op) ||
         op == Op::kFwdBiasReluBf16 || op == Op::kBwdWeightsBiasBf16;
}
// The activations' (and, but for the weight gradient, the weights') type
// inside the kernel.
Dt DataType(Op op) {
  return op == Op::kPackedFwdBiasReluBf16 || op == Op::kFwdBiasReluBf16 ||
                 op == Op::kBwdDataBf16 || op == Op::kBwdWeightsBiasBf16 ||
                 op == Op::kFwdBf16 || op == Op::kBwdWeightsBf16
             ? Dt::bf16
             : Dt::f32;
}

// x is (n, h, w, c); the weights are (3, 3, c, k); y is (n, h, w, k).
struct Shape {
  int64_t n, h, w, c, k;
  auto Key(Op op) const { return std::make_tuple(static_cast<int>(op), n, h, w, c, k); }
  bool Empty() const { return n == 0 || h == 0 || w == 0 || c == 0 || k == 0; }
};

// A growable 64-byte aligned buffer, reused across calls (under the mutex).
class Staging {
 public:
  void* Get(size_t bytes) {
    if (bytes > cap_) {
      std::free(ptr_);
      cap_ = (bytes + 4095) / 4096 * 4096;
      ptr_ = std::aligned_alloc(64, cap_);
      if (ptr_ == nullptr) {
        cap_ = 0;
        throw std::bad_alloc();
      }
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t cap_ = 0;
};

// Everything one (op, shape) needs, built once; and where its time went.
struct Plan {
  dnnl::primitive conv;
  memory::desc act_in, act_out;  // NHWC descs of the two activations
  memory::desc conv_w, user_w;   // oneDNN's weights layout, and HWIO
  memory::desc bias;             // (k,), for the ops with a bias
  memory::desc conv_scratch, reorder_scratch;
  dnnl::primitive w_reorder;     // HWIO <-> conv_w; unused when they match
  bool reorder_w = false;
  std::string impl;              // oneDNN's implementation name, for reports
  int64_t calls = 0;
  double conv_s = 0, reorder_s = 0;  // Summed over calls, for SmsddOnednnStats.
  // Small input weights (WeightsIn): reordered copies, each with the HWIO
  // bytes it was made from (several layers share a shape, so a plan). The
  // oldest is replaced first.
  struct Kept {
    std::vector<char> from;  // Empty: nothing kept.
    Staging to;
  };
  std::vector<Kept> kept;
  size_t kept_next = 0;
};

struct Runtime {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::mutex mu;
  std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t>,
           std::unique_ptr<Plan>> plans;
  Staging weights, scratch;
};

// Never destroyed: XLA may still run a handler while the process exits.
Runtime& Rt() {
  static Runtime* rt = new Runtime();
  return *rt;
}

const memory::dims kStrides{1, 1}, kPad{1, 1};

memory::desc Act(int64_t n, int64_t h, int64_t w, int64_t c, Dt dt = Dt::f32) {
  return memory::desc({n, c, h, w}, dt, Tag::nhwc);
}

memory::desc Weights(const Shape& s, Tag tag, Dt dt = Dt::f32) {
  return memory::desc({s.k, s.c, 3, 3}, dt, tag);
}

memory::desc Bias(const Shape& s) { return memory::desc({s.k}, Dt::f32, Tag::x); }

dnnl::primitive_attr Attr(bool relu = false) {
  // The scratchpad is passed in at execution, from a reused buffer.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  return attr;
}

dnnl::convolution_forward::primitive_desc FwdPd(
    const dnnl::engine& eng, const Shape& s, bool bias_relu,
    dnnl::prop_kind prop = dnnl::prop_kind::forward_training,
    const memory::desc& weights = memory::desc(), Dt dt = Dt::f32) {
  const auto algo = dnnl::algorithm::convolution_direct;
  memory::desc w = weights.is_zero() ? Weights(s, Tag::any, dt) : weights;
  if (bias_relu) {
    return {eng, prop, algo, Act(s.n, s.h, s.w, s.c, dt), w, Bias(s),
            Act(s.n, s.h, s.w, s.k, dt), kStrides, kPad, kPad, Attr(true)};
  }
  return {eng, prop, algo, Act(s.n, s.h, s.w, s.c, dt), w,
          Act(s.n, s.h, s.w, s.k, dt), kStrides, kPad, kPad, Attr()};
}

// The layout packed weights are kept in: what the batch-1 inference
// primitive of this layer asks for (any batch then runs on it, so one packed
// copy serves every batch size).
memory::desc PackedWeights(const dnnl::engine& eng, const Shape& s, Dt dt) {
  Shape one = s;
  one.n = 1;
  return FwdPd(eng, one, true, dnnl::prop_kind::forward_inference, memory::desc(), dt)
      .weights_desc();
}

// Fills the fields every op shares; to_user: the reorder goes conv_w -> HWIO.
void Finish(Plan& p, dnnl::primitive conv, const dnnl::primitive_desc_base& pd,
            const memory::desc& conv_w, bool to_user, const dnnl::engine& eng) {
  p.conv = std::move(conv);
  p.conv_w = conv_w;
  p.conv_scratch = pd.scratchpad_desc();
  p.impl = pd.impl_info_str();
  p.reorder_w = conv_w != p.user_w;
  if (!p.reorder_w) return;
  const memory::desc& from = to_user ? conv_w : p.user_w;
  const memory::desc& to = to_user ? p.user_w : conv_w;
  dnnl::reorder::primitive_desc rpd(eng, from, eng, to, Attr());
  p.w_reorder = dnnl::reorder(rpd);
  p.reorder_scratch = rpd.scratchpad_desc();
}

std::unique_ptr<Plan> MakePlan(Op op, const Shape& s, const dnnl::engine& eng) {
  auto p = std::make_unique<Plan>();
  // Float32 HWIO for every op but the packed ones: in bfloat16 training too
  // (the master weights; the reorder to conv_w casts them).
  p->user_w = Weights(s, Tag::hwio);
  p->bias = Bias(s);
  Dt dt = DataType(op);
  memory::desc x = Act(s.n, s.h, s.w, s.c, dt), y = Act(s.n, s.h, s.w, s.k, dt);
  const auto algo = dnnl::algorithm::convolution_direct;
  if (IsPacked(op)) {
    auto fwd = FwdPd(eng, s, true, dnnl::prop_kind::forward_inference,
                     PackedWeights(eng, s, dt), dt);
    p->act_in = x, p->act_out = y;
    p->user_w = fwd.weights_desc();  // The caller's buffer is already in it: no reorder.
    Finish(*p, dnnl::convolution_forward(fwd), fwd, fwd.weights_desc(), false, eng);
  } else if (IsFwd(op)) {
    auto fwd = FwdPd(eng, s, HasBias(op), dnnl::prop_kind::forward_training, memory::desc(), dt);
    p->act_in = x, p->act_out = y;
    Finish(*p, dnnl::convolution_forward(fwd), fwd, fwd.weights_desc(), false, eng);
  } else if (IsBwdData(op)) {
    p->act_in = y, p->act_out = x;
    dnnl::convolution_backward_data::primitive_desc pd(
        eng, algo, x, Weights(s, Tag::any, dt), y, kStrides, kPad, kPad,
        FwdPd(eng, s, false, dnnl::prop_kind::forward_training, memory::desc(), dt), Attr());
    Finish(*p, dnnl::convolution_backward_data(pd), pd, pd.weights_desc(), false, eng);
  } else {
    p->act_in = x, p->act_out = y;  // Both inputs here: x and dy.
    // The gradients stay float32 (Weights', Bias' default) whatever dt is.
    auto hint = FwdPd(eng, s, HasBias(op), dnnl::prop_kind::forward_training, memory::desc(), dt);
    auto pd = HasBias(op)
        ? dnnl::convolution_backward_weights::primitive_desc(
              eng, algo, x, Weights(s, Tag::any), Bias(s), y, kStrides, kPad, kPad, hint,
              Attr())
        : dnnl::convolution_backward_weights::primitive_desc(
              eng, algo, x, Weights(s, Tag::any), y, kStrides, kPad, kPad, hint, Attr());
    Finish(*p, dnnl::convolution_backward_weights(pd), pd, pd.diff_weights_desc(), true,
           eng);
  }
  return p;
}

Plan& GetPlan(Runtime& rt, Op op, const Shape& s) {
  auto it = rt.plans.find(s.Key(op));
  if (it == rt.plans.end()) {  // Built before inserting: a failed build leaves no slot.
    it = rt.plans.emplace(s.Key(op), MakePlan(op, s, rt.eng)).first;
  }
  return *it->second;
}

// One scratch buffer serves the conv and the weights reorder (they run one
// after the other), sized for the larger so that it never moves in between.
void* ScratchPtr(Runtime& rt, const Plan& p) {
  size_t bytes = std::max(p.conv_scratch.get_size(),
                          p.reorder_w ? p.reorder_scratch.get_size() : size_t{0});
  return rt.scratch.Get(std::max<size_t>(bytes, 1));
}

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void ReorderWeights(Runtime& rt, Plan& p, memory& from, memory& to) {
  auto t = Clock::now();
  memory scratch(p.reorder_scratch, rt.eng, ScratchPtr(rt, p));
  p.w_reorder.execute(rt.strm, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                {DNNL_ARG_SCRATCHPAD, scratch}});
  rt.strm.wait();
  p.reorder_s += Since(t);
}

void Execute(Runtime& rt, Plan& p, std::unordered_map<int, memory> args) {
  auto t = Clock::now();
  args.insert({DNNL_ARG_SCRATCHPAD, memory(p.conv_scratch, rt.eng, ScratchPtr(rt, p))});
  p.conv.execute(rt.strm, args);
  rt.strm.wait();
  p.conv_s += Since(t);
  ++p.calls;
}

// Input weights up to this size keep their reordered copy in their plan
// (see the top of the file); VGG16's largest at 1/16 width is 37 KB, and at
// full width the reorder is a small share of a layer's time.
constexpr size_t kKeepBytes = size_t{1} << 20;
// Copies kept per plan: VGG16 has at most 3 layers of one shape (block5's).
constexpr size_t kKeptPerPlan = 4;

// The weight gradient's buffer in the conv's layout: the caller's HWIO
// buffer in place, or the staging buffer (reordered into HWIO after).
memory ConvWeights(Runtime& rt, const Plan& p, void* hwio) {
  void* ptr = p.reorder_w ? rt.weights.Get(p.conv_w.get_size()) : hwio;
  return memory(p.conv_w, rt.eng, ptr);
}

// The weights an op reads, in the conv's layout: the caller's HWIO buffer in
// place, or reordered: small ones into the plan's kept copy, redone only when
// the HWIO bytes differ from those it was made from; larger ones into the
// staging buffer, every call.
memory WeightsIn(Runtime& rt, Plan& p, void* hwio) {
  if (!p.reorder_w) return memory(p.conv_w, rt.eng, hwio);
  memory from(p.user_w, rt.eng, hwio);
  const size_t bytes = p.user_w.get_size();
  if (bytes > kKeepBytes) {
    memory to(p.conv_w, rt.eng, rt.weights.Get(p.conv_w.get_size()));
    ReorderWeights(rt, p, from, to);
    return to;
  }
  const char* src = static_cast<const char*>(hwio);
  for (Plan::Kept& k : p.kept) {
    if (k.from.size() == bytes && std::memcmp(k.from.data(), src, bytes) == 0) {
      return memory(p.conv_w, rt.eng, k.to.Get(p.conv_w.get_size()));
    }
  }
  if (p.kept.empty()) p.kept.reserve(kKeptPerPlan);  // Never moved: no copies of Staging.
  if (p.kept.size() < kKeptPerPlan) p.kept.emplace_back();
  Plan::Kept& k = p.kept[p.kept_next++ % p.kept.size()];
  k.from.clear();  // A reorder that throws leaves nothing kept.
  memory to(p.conv_w, rt.eng, k.to.Get(p.conv_w.get_size()));
  ReorderWeights(rt, p, from, to);
  k.from.assign(src, src + bytes);
  return to;
}

// The buffers of one call, in the order of the FFI targets' arguments:
// fwd: x, w, [b] -> y;  bwd_data: dy, w -> dx;  bwd_weights: x, dy -> dw, [db].
struct Buffers {
  void *a, *b, *bias, *out, *out_bias;
};

void Run(Op op, const Shape& s, const Buffers& buf) {
  Runtime& rt = Rt();
  std::lock_guard<std::mutex> lock(rt.mu);
  Plan& p = GetPlan(rt, op, s);
  if (IsBwdWeights(op)) {
    memory x(p.act_in, rt.eng, buf.a), dy(p.act_out, rt.eng, buf.b);
    memory dw_user(p.user_w, rt.eng, buf.out), dw = ConvWeights(rt, p, buf.out);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
    if (HasBias(op)) args.insert({DNNL_ARG_DIFF_BIAS, memory(p.bias, rt.eng, buf.out_bias)});
    Execute(rt, p, std::move(args));
    if (p.reorder_w) ReorderWeights(rt, p, dw, dw_user);
    return;
  }
  memory in(p.act_in, rt.eng, buf.a), res(p.act_out, rt.eng, buf.out);
  memory w = WeightsIn(rt, p, buf.b);
  bool fwd = IsFwd(op);
  std::unordered_map<int, memory> args{{fwd ? DNNL_ARG_SRC : DNNL_ARG_DIFF_DST, in},
                                       {DNNL_ARG_WEIGHTS, w},
                                       {fwd ? DNNL_ARG_DST : DNNL_ARG_DIFF_SRC, res}};
  if (HasBias(op)) args.insert({DNNL_ARG_BIAS, memory(p.bias, rt.eng, buf.bias)});
  Execute(rt, p, std::move(args));
}

template <typename B>
bool Dims(const B& buf, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  auto d = buf.dimensions();
  return d.size() == 4 && d[0] == d0 && d[1] == d1 && d[2] == d2 && d[3] == d3;
}

template <typename B>
bool Dims(const B& buf, int64_t d0) {
  auto d = buf.dimensions();
  return d.size() == 1 && d[0] == d0;
}

// Runs op unless the shapes XLA passed disagree (ok), and turns C++
// exceptions into FFI errors (an exception must not cross the C boundary
// into XLA). Zero-sized convolutions, which oneDNN refuses, give zeros.
ffi::Error Call(Op op, const Shape& s, bool ok, const Buffers& buf,
                std::initializer_list<std::pair<void*, size_t>> outs) {
  std::string name = std::string("onednn conv3x3 ") + kOpNames[static_cast<int>(op)];
  if (!ok) return ffi::Error::InvalidArgument(name + ": inconsistent shapes");
  if (s.Empty()) {
    for (auto [ptr, bytes] : outs) std::memset(ptr, 0, bytes);
    return ffi::Error::Success();
  }
  try {
    Run(op, s, buf);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(name + ": " + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32, 4>;
using OutF32 = ffi::ResultBuffer<ffi::F32, 4>;
using F32Vec = ffi::Buffer<ffi::F32, 1>;
using OutF32Vec = ffi::ResultBuffer<ffi::F32, 1>;

Shape FromX(const F32& x, int64_t k) {
  auto d = x.dimensions();
  return {d[0], d[1], d[2], d[3], k};
}

ffi::Error Fwd(F32 x, F32 w, OutF32 y) {
  Shape s = FromX(x, w.dimensions()[3]);
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(*y, s.n, s.h, s.w, s.k);
  return Call(Op::kFwd, s, ok, {x.typed_data(), w.typed_data(), nullptr, y->typed_data(), nullptr},
              {{y->untyped_data(), y->size_bytes()}});
}

ffi::Error FwdBiasRelu(F32 x, F32 w, F32Vec b, OutF32 y) {
  Shape s = FromX(x, w.dimensions()[3]);
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(b, s.k) && Dims(*y, s.n, s.h, s.w, s.k);
  return Call(Op::kFwdBiasRelu, s, ok,
              {x.typed_data(), w.typed_data(), b.typed_data(), y->typed_data(), nullptr},
              {{y->untyped_data(), y->size_bytes()}});
}

ffi::Error PackedFwdBiasRelu(F32 x, F32 w, F32Vec b, OutF32 y) {
  Shape s = FromX(x, w.dimensions()[3]);
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(b, s.k) && Dims(*y, s.n, s.h, s.w, s.k);
  return Call(Op::kPackedFwdBiasRelu, s, ok,
              {x.typed_data(), w.typed_data(), b.typed_data(), y->typed_data(), nullptr},
              {{y->untyped_data(), y->size_bytes()}});
}

using BF16Act = ffi::Buffer<ffi::BF16, 4>;
using OutBF16Act = ffi::ResultBuffer<ffi::BF16, 4>;

ffi::Error PackedFwdBiasReluBf16(BF16Act x, BF16Act w, F32Vec b, OutBF16Act y) {
  auto d = x.dimensions();
  Shape s{d[0], d[1], d[2], d[3], w.dimensions()[3]};
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(b, s.k) && Dims(*y, s.n, s.h, s.w, s.k);
  return Call(Op::kPackedFwdBiasReluBf16, s, ok,
              {x.untyped_data(), w.untyped_data(), b.typed_data(), y->untyped_data(), nullptr},
              {{y->untyped_data(), y->size_bytes()}});
}

// The bfloat16 training three: activations bf16, weights float32 HWIO,
// gradients of the weights and bias float32.
ffi::Error FwdBiasReluBf16(BF16Act x, F32 w, F32Vec b, OutBF16Act y) {
  auto d = x.dimensions();
  Shape s{d[0], d[1], d[2], d[3], w.dimensions()[3]};
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(b, s.k) && Dims(*y, s.n, s.h, s.w, s.k);
  return Call(Op::kFwdBiasReluBf16, s, ok,
              {x.untyped_data(), w.typed_data(), b.typed_data(), y->untyped_data(), nullptr},
              {{y->untyped_data(), y->size_bytes()}});
}

ffi::Error BwdDataBf16(BF16Act dy, F32 w, OutBF16Act dx) {
  auto d = dy.dimensions();
  Shape s{d[0], d[1], d[2], w.dimensions()[2], d[3]};
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(*dx, s.n, s.h, s.w, s.c);
  return Call(Op::kBwdDataBf16, s, ok,
              {dy.untyped_data(), w.typed_data(), nullptr, dx->untyped_data(), nullptr},
              {{dx->untyped_data(), dx->size_bytes()}});
}

ffi::Error BwdWeightsBiasBf16(BF16Act x, BF16Act dy, OutF32 dw, OutF32Vec db) {
  auto d = x.dimensions();
  Shape s{d[0], d[1], d[2], d[3], dy.dimensions()[3]};
  bool ok = Dims(dy, s.n, s.h, s.w, s.k) && Dims(*dw, 3, 3, s.c, s.k) && Dims(*db, s.k);
  return Call(Op::kBwdWeightsBiasBf16, s, ok,
              {x.untyped_data(), dy.untyped_data(), nullptr, dw->typed_data(), db->typed_data()},
              {{dw->untyped_data(), dw->size_bytes()}, {db->untyped_data(), db->size_bytes()}});
}

// The plain conv's two (bwd_data is BwdDataBf16): weights float32 HWIO in,
// their gradient float32 out, accumulated in float32 by oneDNN.
ffi::Error FwdBf16(BF16Act x, F32 w, OutBF16Act y) {
  auto d = x.dimensions();
  Shape s{d[0], d[1], d[2], d[3], w.dimensions()[3]};
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(*y, s.n, s.h, s.w, s.k);
  return Call(Op::kFwdBf16, s, ok,
              {x.untyped_data(), w.typed_data(), nullptr, y->untyped_data(), nullptr},
              {{y->untyped_data(), y->size_bytes()}});
}

ffi::Error BwdWeightsBf16(BF16Act x, BF16Act dy, OutF32 dw) {
  auto d = x.dimensions();
  Shape s{d[0], d[1], d[2], d[3], dy.dimensions()[3]};
  bool ok = Dims(dy, s.n, s.h, s.w, s.k) && Dims(*dw, 3, 3, s.c, s.k);
  return Call(Op::kBwdWeightsBf16, s, ok,
              {x.untyped_data(), dy.untyped_data(), nullptr, dw->typed_data(), nullptr},
              {{dw->untyped_data(), dw->size_bytes()}});
}

ffi::Error BwdData(F32 dy, F32 w, OutF32 dx) {
  auto d = dy.dimensions();
  Shape s{d[0], d[1], d[2], w.dimensions()[2], d[3]};
  bool ok = Dims(w, 3, 3, s.c, s.k) && Dims(*dx, s.n, s.h, s.w, s.c);
  return Call(Op::kBwdData, s, ok,
              {dy.typed_data(), w.typed_data(), nullptr, dx->typed_data(), nullptr},
              {{dx->untyped_data(), dx->size_bytes()}});
}

ffi::Error BwdWeights(F32 x, F32 dy, OutF32 dw) {
  Shape s = FromX(x, dy.dimensions()[3]);
  bool ok = Dims(dy, s.n, s.h, s.w, s.k) && Dims(*dw, 3, 3, s.c, s.k);
  return Call(Op::kBwdWeights, s, ok,
              {x.typed_data(), dy.typed_data(), nullptr, dw->typed_data(), nullptr},
              {{dw->untyped_data(), dw->size_bytes()}});
}

ffi::Error BwdWeightsBias(F32 x, F32 dy, OutF32 dw, OutF32Vec db) {
  Shape s = FromX(x, dy.dimensions()[3]);
  bool ok = Dims(dy, s.n, s.h, s.w, s.k) && Dims(*dw, 3, 3, s.c, s.k) && Dims(*db, s.k);
  return Call(Op::kBwdWeightsBias, s, ok,
              {x.typed_data(), dy.typed_data(), nullptr, dw->typed_data(), db->typed_data()},
              {{dw->untyped_data(), dw->size_bytes()}, {db->untyped_data(), db->size_bytes()}});
}

}  // namespace

// The library is built with hidden visibility (nothing of oneDNN's C++ or of
// the FFI templates leaks out); these declarations export the entry points.
#define SMSDD_EXPORT __attribute__((visibility("default")))
extern "C" {
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3Fwd(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdData(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdWeights(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BiasReluFwd(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdWeightsBias(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3PackedBiasReluFwd(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3PackedBiasReluFwdBf16(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BiasReluFwdBf16(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdDataBf16(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdWeightsBiasBf16(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3FwdBf16(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdWeightsBf16(XLA_FFI_CallFrame* frame);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3Fwd, Fwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BwdData, BwdData,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BwdWeights, BwdWeights,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BiasReluFwd, FwdBiasRelu,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32Vec>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BwdWeightsBias, BwdWeightsBias,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Ret<F32Vec>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3PackedBiasReluFwd, PackedFwdBiasRelu,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32Vec>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OnednnConv3x3PackedBiasReluFwdBf16, PackedFwdBiasReluBf16,
    ffi::Ffi::Bind().Arg<BF16Act>().Arg<BF16Act>().Arg<F32Vec>().Ret<BF16Act>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OnednnConv3x3BiasReluFwdBf16, FwdBiasReluBf16,
    ffi::Ffi::Bind().Arg<BF16Act>().Arg<F32>().Arg<F32Vec>().Ret<BF16Act>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BwdDataBf16, BwdDataBf16,
                              ffi::Ffi::Bind().Arg<BF16Act>().Arg<F32>().Ret<BF16Act>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OnednnConv3x3BwdWeightsBiasBf16, BwdWeightsBiasBf16,
    ffi::Ffi::Bind().Arg<BF16Act>().Arg<BF16Act>().Ret<F32>().Ret<F32Vec>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3FwdBf16, FwdBf16,
                              ffi::Ffi::Bind().Arg<BF16Act>().Arg<F32>().Ret<BF16Act>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BwdWeightsBf16, BwdWeightsBf16,
                              ffi::Ffi::Bind().Arg<BF16Act>().Arg<BF16Act>().Ret<F32>());

// Plain C helpers for the Python side (ctypes).
extern "C" {

SMSDD_EXPORT const char* SmsddOnednnVersion() {
  static std::string text = [] {
    const dnnl_version_t* v = dnnl_version();
    std::ostringstream os;
    os << "oneDNN " << v->major << "." << v->minor << "." << v->patch
       << " (cpu runtime " << v->cpu_runtime << ")";
    return os.str();
  }();
  return text.c_str();
}

// Creates the engine; returns "" on success, else the reason.
SMSDD_EXPORT const char* SmsddOnednnInit() {
  try {
    Rt();
    return "";
  } catch (const std::exception& e) {
    static std::string err;
    err = e.what();
    return err.c_str();
  }
}

// The most capable instruction set oneDNN will dispatch to here (the CPU's,
// capped by ONEDNN_MAX_CPU_ISA), by the name oneDNN's implementations carry
// ("avx512_core_bf16": native bfloat16 dot products).
SMSDD_EXPORT const char* SmsddOnednnIsa() {
  using dnnl::cpu_isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case cpu_isa::sse41: return "sse41";
    case cpu_isa::avx: return "avx";
    case cpu_isa::avx2: return "avx2";
    case cpu_isa::avx2_vnni: return "avx2_vnni";
    case cpu_isa::avx2_vnni_2: return "avx2_vnni_2";
    case cpu_isa::avx512_core: return "avx512_core";
    case cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case cpu_isa::avx512_core_fp16: return "avx512_core_fp16";
    case cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case cpu_isa::avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "unknown";
  }
}

// Builds (or finds) the plan of op (one of kOpNames) for x (n, h, w, c) and
// k output channels, without running it, and returns its implementation's
// name ("error: ..." where oneDNN has none): lets the Python side say which
// kernels a step will run when it traces the step, before any data.
SMSDD_EXPORT const char* SmsddOnednnPlanImpl(const char* op_name, int64_t n, int64_t h,
                                             int64_t w, int64_t c, int64_t k) {
  static std::string text;
  Runtime& rt = Rt();
  std::lock_guard<std::mutex> lock(rt.mu);
  int op = static_cast<int>(std::find_if(kOpNames, kOpNames + kNumOps, [&](const char* x) {
                              return std::strcmp(x, op_name) == 0;
                            }) - kOpNames);
  if (op == kNumOps) return text = std::string("error: no op ") + op_name, text.c_str();
  Shape s{n, h, w, c, k};
  if (s.Empty()) return text = "error: empty shape", text.c_str();
  try {
    text = GetPlan(rt, static_cast<Op>(op), s).impl;
  } catch (const std::exception& e) {
    text = std::string("error: ") + e.what();
  }
  return text.c_str();
}

SMSDD_EXPORT int64_t SmsddOnednnNumPlans() {
  Runtime& rt = Rt();
  std::lock_guard<std::mutex> lock(rt.mu);
  return static_cast<int64_t>(rt.plans.size());
}

// One line per cached plan: "op n h w c k impl", for reports.
SMSDD_EXPORT const char* SmsddOnednnPlans() {
  static std::string text;
  Runtime& rt = Rt();
  std::lock_guard<std::mutex> lock(rt.mu);
  std::ostringstream os;
  for (const auto& [key, plan] : rt.plans) {
    os << kOpNames[std::get<0>(key)] << " " << std::get<1>(key) << " " << std::get<2>(key)
       << " " << std::get<3>(key) << " " << std::get<4>(key) << " " << std::get<5>(key)
       << " " << plan->impl << (plan->reorder_w ? " (weights reordered)" : "") << "\n";
  }
  text = os.str();
  return text.c_str();
}

// Packs float32 HWIO weights (3, 3, c, k) of a layer seen at h x w into the
// layout of OnednnConv3x3PackedBiasReluFwd (bf16 = 0) or of its bfloat16
// twin (bf16 = 1), into `out` of `out_bytes`. Returns "" on success, else
// why not (the packed layout needs another size than a (3, 3, c, k) array
// of its type, so it cannot stand in for one; or an error).
SMSDD_EXPORT const char* SmsddOnednnPack(int64_t h, int64_t w, int64_t c, int64_t k, int bf16,
                                         const float* hwio, void* out, int64_t out_bytes) {
  static std::string err;
  try {
    Runtime& rt = Rt();
    std::lock_guard<std::mutex> lock(rt.mu);
    Shape s{1, h, w, c, k};
    Dt dt = bf16 ? Dt::bf16 : Dt::f32;
    memory::desc packed = PackedWeights(rt.eng, s, dt), user = Weights(s, Tag::hwio);
    size_t want = Weights(s, Tag::hwio, dt).get_size();
    if (packed.get_size() != want || want != static_cast<size_t>(out_bytes)) {
      err = "packed layout is " + std::to_string(packed.get_size()) + " bytes, HWIO " +
            std::to_string(want);
      return err.c_str();
    }
    memory from(user, rt.eng, const_cast<float*>(hwio)), to(packed, rt.eng, out);
    dnnl::reorder(from, to).execute(rt.strm, from, to);
    rt.strm.wait();
    return "";
  } catch (const std::exception& e) {
    err = e.what();
    return err.c_str();
  }
}

// One line per plan that ran: "op n h w c k calls conv_ms reorder_ms", the
// time summed since the last reset (each call waits for its stream, so the
// times are the kernels' own); reset=1 zeroes them after reading.
SMSDD_EXPORT const char* SmsddOnednnStats(int reset) {
  static std::string text;
  Runtime& rt = Rt();
  std::lock_guard<std::mutex> lock(rt.mu);
  std::ostringstream os;
  for (auto& [key, plan] : rt.plans) {
    if (plan->calls) {
      os << kOpNames[std::get<0>(key)] << " " << std::get<1>(key) << " " << std::get<2>(key)
         << " " << std::get<3>(key) << " " << std::get<4>(key) << " " << std::get<5>(key)
         << " " << plan->calls << " " << plan->conv_s * 1e3 << " " << plan->reorder_s * 1e3
         << "\n";
    }
    if (reset) plan->calls = 0, plan->conv_s = plan->reorder_s = 0;
  }
  text = os.str();
  return text.c_str();
}

}  // extern "C"
