// The eager fast path of fastloss.torch: one C++ call from the Python function to the
// kernel and back, with the loss's autograd node in C++.
//
// Built against the installed torch at first use (fastloss/_torch_extension.py; never
// by `pip install`, so fastloss itself has no build dependency on torch).  The Python
// path (fastloss/torch.py: an autograd.Function around NumPy views) costs ~25-35 us a
// call, more than the kernel of a small head; here a call costs a few microseconds
// beyond torch's own autograd bookkeeping.
//
// `run` answers None for anything it does not compute exactly as the Python path does
// (another dtype, layout, device or shape, a target or weight needing a gradient, a
// large input, any kernel flag such as a label out of range): the Python path then
// takes the call as before, with its checks, errors and fall-backs to torch.  So this
// file holds no error messages of its own about the arguments and no second copy of
// the adapter's decisions; it runs a call the adapter has already mapped onto a plan.
//
// The node keeps what fastloss.torch's _FusedLoss keeps and answers as it does: the
// kernel's gradient is handed out once (unscaled for loss.backward()), a later backward
// (retain_graph=True) recomputes it from the saved input, a double backward
// (create_graph=True) differentiates torch's own formula (a Python callable of the
// plan), and an input modified in place after the loss raises autograd's error, or
// fastloss's message where torch's own backward would not read the input.

#include <torch/extension.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>

#include "_native_call.h"

// In a named namespace: autograd names the node after its type, so grad_fn shows
// torch::autograd::CppNode<fastloss::FusedLoss>.
namespace fastloss {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

fastloss_native_entry run_kernel = nullptr;
std::string modified_input_message;   // "... {} ..." with {} = what needs the input

enum Reduction { NONE = 0, MEAN = 1, SUM = 2 };

// A loss call as the adapter mapped it: everything but the tensors.
struct Plan {
  int32_t family = 0, kernel = 0, cost = 1;
  std::string pointwise_params;
  int reduction = MEAN;
  double scale = 1.0;              // multiplies value and gradient (smooth_l1: 1 / beta)
  double label_smoothing = 0.0, z_loss = 0.0;
  bool has_ignore_index = false;
  int64_t ignore_index = 0;
  bool weighted_mean = false;      // "mean" over the summed class weights (torch's CE)
  bool reads_input = false;        // torch's backward of this loss reads the input
  bool nan_is_error = false;       // torch raises for NaN input: let the Python path
  PyObject* torch_loss = nullptr;  // torch_loss(input, target, weight): torch's formula
};

// Plans live as long as the process (the adapter makes a bounded number of them, one per
// loss and parameters): a node may outlive any Python object, and a backward reads its
// plan without the GIL, so a plan never moves once added.
constexpr int64_t max_plans = 4096;
Plan* plans[max_plans];
std::atomic<int64_t> n_plans{0};
std::mutex plans_mutex;

// Inputs beyond this go the Python way, whose gradient buffers are reused between calls
// (a fresh large tensor costs page faults of the order of the kernel's time).
constexpr int64_t max_input_bytes = 1 << 20;

bool plain(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided &&
         t.is_contiguous() && !t.is_conj() && !t.is_neg() && !t._is_zerotensor();
}

bool rows(const Plan& plan) {
  return plan.family == FASTLOSS_NATIVE_SPARSE_ROWS ||
         plan.family == FASTLOSS_NATIVE_DENSE_ROWS;
}

bool kernel_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

// Run the plan's kernel; false when the kernel raised a flag.
bool run_plan(const Plan& plan, const at::Tensor& input, const at::Tensor& target,
              const at::Tensor& weight, int64_t threads, at::Tensor* grad, at::Tensor* values,
              double* total, double* denominator) {
  fastloss_native_call call;
  std::memset(&call, 0, sizeof(call));
  call.abi = FASTLOSS_NATIVE_ABI;
  call.family = plan.family;
  call.kernel = plan.kernel;
  call.is_double = input.scalar_type() == at::kDouble;
  call.threads = static_cast<int32_t>(threads);
  call.cost = plan.cost;
  call.want_value = 1;
  call.y_pred = input.data_ptr();
  call.y_true = target.data_ptr();
  call.weight = weight.defined() ? weight.data_ptr() : nullptr;
  call.weight_len = weight.defined() ? weight.numel() : 0;
  call.grad = grad && grad->defined() ? grad->data_ptr() : nullptr;
  call.values = values && values->defined() ? values->data_ptr() : nullptr;
  if (rows(plan)) {
    call.n = input.size(0);
    call.classes = input.size(1);
  } else {
    call.n = input.numel();
  }
  call.pointwise_params = plan.pointwise_params.data();
  call.grad_scale = plan.reduction == MEAN ? 1.0 / static_cast<double>(call.n) : 1.0;
  call.label_smoothing = plan.label_smoothing;
  call.z_loss = plan.z_loss;
  call.ignore_index = plan.ignore_index;
  call.has_ignore_index = plan.has_ignore_index;
  call.weighted_mean = plan.weighted_mean && plan.reduction == MEAN;
  if (PyGILState_Check()) {
    pybind11::gil_scoped_release no_gil;   // other Python threads run meanwhile
    run_kernel(&call);
  } else {
    run_kernel(&call);   // a backward: autograd's engine runs without the GIL
  }
  *total = call.total;
  *denominator = call.denominator;
  return call.flags == 0;
}

// `v` rounded to float32 as a C cast on IEEE hardware rounds it (NumPy's astype): beyond
// the largest float32 by half an ulp or more, an infinity.  torch's scalar_tensor refuses
// a double out of float32's range ("cannot be converted without overflow"), and the
// C++ cast of such a value is undefined.
double as_float32(double v) {
  constexpr double rounds_to_infinity = 0x1.ffffffp127;   // FLT_MAX + half an ulp
  if (std::fabs(v) >= rounds_to_infinity) return std::copysign(INFINITY, v);
  return static_cast<double>(static_cast<float>(v));
}

// The loss's value from the kernel's sum, as the Python layer computes it.
double reduced(const Plan& plan, double total, double denominator, int64_t n) {
  double value = total;
  if (plan.reduction == MEAN) {
    if (plan.weighted_mean)
      value = denominator != 0 ? total / denominator : NAN;
    else
      value = total / static_cast<double>(n);
  }
  return value * plan.scale;
}

variable_list saved_input(AutogradContext* ctx, const Plan& plan, const char* what) {
  try {
    return ctx->get_saved_variables();
  } catch (const c10::Error& error) {
    std::string message = error.what_without_backtrace();
    if (plan.reads_input || message.find("inplace operation") == std::string::npos) throw;
    std::string text = modified_input_message;
    auto at = text.find("{}");
    if (at != std::string::npos) text.replace(at, 2, what);
    throw std::runtime_error(text);
  }
}

// The value and gradient of one kernel pass and the call's weight (undefined: none),
// handed to FusedLoss::apply as one argument that is not a tensor: autograd treats
// tensor arguments as the node's inputs (an output that is an input as a view of it;
// an undefined one as an error), and none of these is differentiated.
struct Computed {
  at::Tensor value, grad, weight;
};

struct FusedLoss : public torch::autograd::Function<FusedLoss> {
  static constexpr size_t n_arguments = 5;   // of forward, after ctx

  // The pass already ran (its result is in `computed`): forward records it.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, int64_t plan_index, int64_t threads,
                            Computed& computed) {
    ctx->save_for_backward({input, target});
    ctx->saved_data["grad"] = std::move(computed.grad);
    ctx->saved_data["weight"] = std::move(computed.weight);
    ctx->saved_data["plan"] = plan_index;
    ctx->saved_data["threads"] = threads;
    return std::move(computed.value);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const Plan& plan = *plans[ctx->saved_data["plan"].toInt()];
    at::Tensor grad_output = grad_outputs[0];
    at::Tensor weight = ctx->saved_data["weight"].toTensor();
    variable_list result(n_arguments);
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the kernel's gradient is a constant; a gradient of the
      // gradient must come from a graph of torch's own formula at the input
      auto saved = saved_input(ctx, plan, "a double backward (create_graph=True)");
      at::Tensor value;
      {
        pybind11::gil_scoped_acquire gil;
        pybind11::object weight_arg = weight.defined() ? pybind11::cast(weight)
                                                       : pybind11::none();
        pybind11::object loss = pybind11::reinterpret_borrow<pybind11::object>(
            plan.torch_loss)(saved[0], saved[1], weight_arg);
        value = loss.cast<at::Tensor>();
      }
      result[0] = torch::autograd::grad({value}, {saved[0]}, {grad_output},
                                        /*retain_graph=*/true, /*create_graph=*/true)[0];
      return result;
    }
    at::Tensor grad;
    auto kept = ctx->saved_data.find("grad");
    if (kept != ctx->saved_data.end() && kept->second.isTensor() &&
        kept->second.toTensor().defined()) {
      if (plan.reads_input) {
        // torch's backward reads the input here: raise torch's error if it was
        // modified in place (unpacking checks), as torch.nn.functional does
        (void)ctx->get_saved_variables();
      }
      grad = kept->second.toTensor();
      ctx->saved_data.erase(kept);   // handed out once: the node keeps no reference
    } else {
      // the kernel's gradient went to an earlier backward: compute it again
      auto saved = saved_input(ctx, plan, "a backward after the first one");
      grad = at::empty_like(saved[0]);
      at::Tensor values;
      double total, denominator;
      if (!run_plan(plan, saved[0], saved[1], weight, ctx->saved_data["threads"].toInt(),
                    &grad, plan.reduction == NONE ? &values : nullptr, &total,
                    &denominator))
        throw std::runtime_error("fastloss: the kernel refused a backward it had computed");
      if (plan.reduction == NONE) values = at::Tensor();
    }
    if (grad_output.dim() == 0) {
      if (plan.scale == 1.0 && grad_output.item<double>() == 1.0) {
        result[0] = grad;
        return result;
      }
    } else if (grad_output.dim() < grad.dim()) {
      grad_output = grad_output.unsqueeze(-1);   // one upstream gradient per row
    }
    if (plan.scale != 1.0) grad_output = grad_output * plan.scale;
    result[0] = grad.mul_(grad_output);
    return result;
  }
};

// The checks of the call's tensors: true when the kernel reads them as they are.
bool readable(const Plan& plan, const at::Tensor& input, const at::Tensor& target,
              const at::Tensor& weight) {
  if (!plain(input) || !kernel_float(input) || input.numel() == 0 ||
      input.numel() * input.element_size() > max_input_bytes || !plain(target) ||
      target.requires_grad())
    return false;
  if (rows(plan)) {
    if (input.dim() != 2) return false;
    if (plan.family == FASTLOSS_NATIVE_SPARSE_ROWS
            ? (target.scalar_type() != at::kLong || target.dim() != 1 ||
               target.size(0) != input.size(0))
            : (target.scalar_type() != input.scalar_type() ||
               !target.sizes().equals(input.sizes())))
      return false;
    if (weight.defined() &&
        (weight.dim() != 1 || weight.size(0) != input.size(1)))
      return false;
  } else {
    if (target.scalar_type() != input.scalar_type() || !target.sizes().equals(input.sizes()))
      return false;
    if (weight.defined() &&
        (input.dim() < 1 || weight.dim() > 1 ||
         (weight.numel() != 1 && weight.numel() != input.size(-1))))
      return false;
  }
  if (weight.defined() &&
      (!plain(weight) || weight.scalar_type() != input.scalar_type() ||
       weight.requires_grad()))
    return false;
  return true;
}

// The loss of `plan` over the tensors, or None when the Python path must take the call.
pybind11::object run(int64_t plan_index, const at::Tensor& input, const at::Tensor& target,
                     const c10::optional<at::Tensor>& weight_arg, int64_t threads) {
  if (run_kernel == nullptr || plan_index < 0 || plan_index >= n_plans.load())
    return pybind11::none();
  const Plan& plan = *plans[plan_index];
  at::Tensor weight = weight_arg.has_value() ? *weight_arg : at::Tensor();
  if (!readable(plan, input, target, weight)) return pybind11::none();
  bool want_grad = at::GradMode::is_enabled() && input.requires_grad();
  at::Tensor grad, values;
  if (want_grad) grad = at::empty_like(input);
  if (plan.reduction == NONE) {
    values = rows(plan)
                 ? at::empty({input.size(0)}, input.options().requires_grad(false))
                 : at::empty_like(input, input.options().requires_grad(false));
  }
  double total, denominator;
  if (!run_plan(plan, input, target, weight, threads, want_grad ? &grad : nullptr, &values,
                &total, &denominator))
    return pybind11::none();
  at::Tensor value;
  if (plan.reduction == NONE) {
    if (plan.scale != 1.0) values.mul_(plan.scale);
    if (plan.nan_is_error && values.isnan().any().item<bool>()) return pybind11::none();
    value = values;
  } else {
    double v = reduced(plan, total, denominator,
                       rows(plan) ? input.size(0) : input.numel());
    if (plan.nan_is_error && std::isnan(v)) return pybind11::none();
    if (input.scalar_type() == at::kFloat) v = as_float32(v);
    value = at::scalar_tensor(v, input.options().requires_grad(false));
  }
  if (!want_grad) return pybind11::cast(value);
  Computed computed{std::move(value), std::move(grad), weight};
  return pybind11::cast(FusedLoss::apply(input, target, plan_index, threads, computed));
}

int64_t add_plan(int32_t family, int32_t kernel, int32_t cost, pybind11::bytes params,
                 int reduction, double scale, double label_smoothing, double z_loss,
                 pybind11::object ignore_index, bool weighted_mean, bool reads_input,
                 bool nan_is_error, pybind11::object torch_loss) {
  std::lock_guard<std::mutex> lock(plans_mutex);
  int64_t index = n_plans.load();
  if (index >= max_plans) return -1;   // the Python path takes these calls
  Plan& plan = *(plans[index] = new Plan());
  plan.family = family;
  plan.kernel = kernel;
  plan.cost = cost;
  plan.pointwise_params = params;
  plan.reduction = reduction;
  plan.scale = scale;
  plan.label_smoothing = label_smoothing;
  plan.z_loss = z_loss;
  plan.has_ignore_index = !ignore_index.is_none();
  plan.ignore_index = plan.has_ignore_index ? ignore_index.cast<int64_t>() : 0;
  plan.weighted_mean = weighted_mean;
  plan.reads_input = reads_input;
  plan.nan_is_error = nan_is_error;
  plan.torch_loss = torch_loss.release().ptr();   // kept for the life of the process
  n_plans.store(index + 1);
  return index;
}

void init(pybind11::capsule entry, int abi, std::string message) {
  if (abi != FASTLOSS_NATIVE_ABI)
    throw std::runtime_error("fastloss: the kernels' C entry has another ABI version");
  run_kernel = reinterpret_cast<fastloss_native_entry>(
      PyCapsule_GetPointer(entry.ptr(), "fastloss_native_run"));
  if (run_kernel == nullptr) throw pybind11::error_already_set();
  modified_input_message = std::move(message);
}

}  // namespace fastloss

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastloss.torch's eager fast path (built at first use)";
  m.def("init", &fastloss::init, "Bind the kernels' C entry (a PyCapsule) and the messages.");
  m.def("add_plan", &fastloss::add_plan, "Register a loss call; its index, or -1 when full.");
  m.def("run", &fastloss::run, "The loss of a plan over tensors, or None.",
        pybind11::arg("plan"), pybind11::arg("input"), pybind11::arg("target"),
        pybind11::arg("weight"), pybind11::arg("threads"));
  m.attr("abi") = FASTLOSS_NATIVE_ABI;
}
