// XLA FFI handlers for a 3x3 / stride 1 / SAME (pad 1) float32 convolution,
// computed by oneDNN (the library PyTorch uses on CPU).
//
// Layouts are those of smsdd_jax/conv.py: activations NHWC, weights HWIO.
// Three targets, called by smsdd_jax/onednn/__init__.py through jax.ffi:
//   OnednnConv3x3Fwd         y  = conv(x, w)
//   OnednnConv3x3BwdData     dx = conv_backward_data(dy, w)
//   OnednnConv3x3BwdWeights  dw = conv_backward_weights(x, dy)
//
// Why it is built this way:
//  * Creating a oneDNN primitive (descriptor dispatch + JIT code generation)
//    costs milliseconds, so each (op, shape) gets a Plan built once and kept
//    for the life of the process.
//  * Weights go through oneDNN's preferred (blocked) layout (format_tag::any)
//    with a reorder from/to HWIO on every call: they change at every step, so
//    only the staging buffer is reused, never its contents.
//  * Activations stay NHWC: oneDNN's brgemm convolutions run on NHWC
//    directly, and XLA's buffers are used in place, without copies.
//  * One process-wide mutex serialises the calls: each call already uses all
//    cores through oneDNN's own threads, and XLA may run independent custom
//    calls (a layer's dx and dw) concurrently; serialising avoids
//    oversubscription and makes the single stream and staging buffers safe.

#include <algorithm>
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
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

enum class Op { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };
const char* const kOpNames[] = {"fwd", "bwd_data", "bwd_weights"};

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

// Everything one (op, shape) needs, built once.
struct Plan {
  dnnl::primitive conv;
  memory::desc act_in, act_out;  // NHWC descs of the two activations
  memory::desc conv_w, user_w;   // oneDNN's weights layout, and HWIO
  memory::desc conv_scratch, reorder_scratch;
  dnnl::primitive w_reorder;     // HWIO <-> conv_w; unused when they match
  bool reorder_w = false;
  std::string impl;              // oneDNN's implementation name, for reports
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

memory::desc Act(int64_t n, int64_t h, int64_t w, int64_t c) {
  return memory::desc({n, c, h, w}, Dt::f32, Tag::nhwc);
}

memory::desc Weights(const Shape& s, Tag tag) {
  return memory::desc({s.k, s.c, 3, 3}, Dt::f32, tag);
}

dnnl::primitive_attr UserScratchpad() {
  // The scratchpad is passed in at execution, from a reused buffer.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc FwdPd(const dnnl::engine& eng, const Shape& s) {
  return {eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
          Act(s.n, s.h, s.w, s.c), Weights(s, Tag::any), Act(s.n, s.h, s.w, s.k),
          kStrides, kPad, kPad, UserScratchpad()};
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
  dnnl::reorder::primitive_desc rpd(eng, from, eng, to, UserScratchpad());
  p.w_reorder = dnnl::reorder(rpd);
  p.reorder_scratch = rpd.scratchpad_desc();
}

std::unique_ptr<Plan> MakePlan(Op op, const Shape& s, const dnnl::engine& eng) {
  auto p = std::make_unique<Plan>();
  p->user_w = Weights(s, Tag::hwio);
  memory::desc x = Act(s.n, s.h, s.w, s.c), y = Act(s.n, s.h, s.w, s.k);
  auto fwd = FwdPd(eng, s);
  if (op == Op::kFwd) {
    p->act_in = x, p->act_out = y;
    Finish(*p, dnnl::convolution_forward(fwd), fwd, fwd.weights_desc(), false, eng);
  } else if (op == Op::kBwdData) {
    p->act_in = y, p->act_out = x;
    dnnl::convolution_backward_data::primitive_desc pd(
        eng, dnnl::algorithm::convolution_direct, x, Weights(s, Tag::any), y,
        kStrides, kPad, kPad, fwd, UserScratchpad());
    Finish(*p, dnnl::convolution_backward_data(pd), pd, pd.weights_desc(), false, eng);
  } else {
    p->act_in = x, p->act_out = y;  // Both inputs here: x and dy.
    dnnl::convolution_backward_weights::primitive_desc pd(
        eng, dnnl::algorithm::convolution_direct, x, Weights(s, Tag::any), y,
        kStrides, kPad, kPad, fwd, UserScratchpad());
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

void ReorderWeights(Runtime& rt, const Plan& p, memory& from, memory& to) {
  memory scratch(p.reorder_scratch, rt.eng, ScratchPtr(rt, p));
  p.w_reorder.execute(rt.strm, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                {DNNL_ARG_SCRATCHPAD, scratch}});
}

// The weights in the conv's layout: HWIO in place, or the staging buffer.
memory ConvWeights(Runtime& rt, const Plan& p, float* hwio) {
  void* ptr = p.reorder_w ? rt.weights.Get(p.conv_w.get_size()) : hwio;
  return memory(p.conv_w, rt.eng, ptr);
}

// Runs op; a/b are its two input buffers in the order of the FFI targets
// (fwd: x, w; bwd_data: dy, w; bwd_weights: x, dy), out its result.
void Run(Op op, const Shape& s, float* a, float* b, float* out) {
  Runtime& rt = Rt();
  std::lock_guard<std::mutex> lock(rt.mu);
  Plan& p = GetPlan(rt, op, s);
  if (op == Op::kBwdWeights) {
    memory x(p.act_in, rt.eng, a), dy(p.act_out, rt.eng, b);
    memory scratch(p.conv_scratch, rt.eng, ScratchPtr(rt, p));
    memory dw_user(p.user_w, rt.eng, out), dw = ConvWeights(rt, p, out);
    p.conv.execute(rt.strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy},
                             {DNNL_ARG_DIFF_WEIGHTS, dw},
                             {DNNL_ARG_SCRATCHPAD, scratch}});
    if (p.reorder_w) ReorderWeights(rt, p, dw, dw_user);
  } else {
    memory in(p.act_in, rt.eng, a), res(p.act_out, rt.eng, out);
    memory w_user(p.user_w, rt.eng, b), w = ConvWeights(rt, p, b);
    if (p.reorder_w) ReorderWeights(rt, p, w_user, w);
    int in_arg = op == Op::kFwd ? DNNL_ARG_SRC : DNNL_ARG_DIFF_DST;
    int out_arg = op == Op::kFwd ? DNNL_ARG_DST : DNNL_ARG_DIFF_SRC;
    memory scratch(p.conv_scratch, rt.eng, ScratchPtr(rt, p));
    p.conv.execute(rt.strm, {{in_arg, in}, {DNNL_ARG_WEIGHTS, w}, {out_arg, res},
                             {DNNL_ARG_SCRATCHPAD, scratch}});
  }
  rt.strm.wait();
}

template <typename B>
bool Dims(const B& buf, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  auto d = buf.dimensions();
  return d.size() == 4 && d[0] == d0 && d[1] == d1 && d[2] == d2 && d[3] == d3;
}

// Checks the shapes XLA passed, runs op and turns C++ exceptions into FFI
// errors (an exception must not cross the C boundary into XLA).
template <typename A, typename B, typename R>
ffi::Error Call(Op op, const Shape& s, A a, B b, R out) {
  bool ok = op == Op::kFwd ? Dims(b, 3, 3, s.c, s.k) && Dims(*out, s.n, s.h, s.w, s.k)
          : op == Op::kBwdData ? Dims(b, 3, 3, s.c, s.k) && Dims(*out, s.n, s.h, s.w, s.c)
          : Dims(b, s.n, s.h, s.w, s.k) && Dims(*out, 3, 3, s.c, s.k);
  if (!ok) {
    return ffi::Error::InvalidArgument(std::string("onednn conv3x3 ") + kOpNames[static_cast<int>(op)] +
                                       ": inconsistent shapes");
  }
  if (s.Empty()) {  // oneDNN refuses zero-sized convolutions; the result is zeros.
    std::memset(out->untyped_data(), 0, out->size_bytes());
    return ffi::Error::Success();
  }
  try {
    Run(op, s, a.typed_data(), b.typed_data(), out->typed_data());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn conv3x3 ") + kOpNames[static_cast<int>(op)] +
                                ": " + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32, 4>;
using OutF32 = ffi::ResultBuffer<ffi::F32, 4>;

Shape FromX(const F32& x, int64_t k) {
  auto d = x.dimensions();
  return {d[0], d[1], d[2], d[3], k};
}

ffi::Error Fwd(F32 x, F32 w, OutF32 y) {
  return Call(Op::kFwd, FromX(x, w.dimensions()[3]), x, w, y);
}

ffi::Error BwdData(F32 dy, F32 w, OutF32 dx) {
  auto d = dy.dimensions();
  Shape s{d[0], d[1], d[2], w.dimensions()[2], d[3]};
  return Call(Op::kBwdData, s, dy, w, dx);
}

ffi::Error BwdWeights(F32 x, F32 dy, OutF32 dw) {
  return Call(Op::kBwdWeights, FromX(x, dy.dimensions()[3]), x, dy, dw);
}

}  // namespace

// The library is built with hidden visibility (nothing of oneDNN's C++ or of
// the FFI templates leaks out); these declarations export the entry points.
#define SMSDD_EXPORT __attribute__((visibility("default")))
extern "C" {
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3Fwd(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdData(XLA_FFI_CallFrame* frame);
SMSDD_EXPORT XLA_FFI_Error* OnednnConv3x3BwdWeights(XLA_FFI_CallFrame* frame);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3Fwd, Fwd,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BwdData, BwdData,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv3x3BwdWeights, BwdWeights,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>());

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

}  // extern "C"
