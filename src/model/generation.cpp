#include "rome_collapse/model/generation.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/util/error.h"

namespace rc {

std::vector<int64_t> generate(const CausalLM& model, const std::vector<int64_t>& prompt,
                              const GenerationOptions& options) {
  if (prompt.empty()) throw InputError("generate: the prompt has no tokens (use BOS for an empty prompt)");
  at::NoGradGuard no_grad;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  std::vector<int64_t> sequence = prompt;
  std::vector<int64_t> generated;
  const int64_t context = model.config().max_positions;
  // A prompt that fills the context leaves no position for a new token: refuse it rather than
  // return nothing (or fail deep in the forward pass).
  if (static_cast<int64_t>(prompt.size()) >= context && options.max_new_tokens > 0)
    throw InputError("generate: the prompt has " + std::to_string(prompt.size()) + " tokens but the model's context is " +
                     std::to_string(context) + " positions, leaving no room for a new token (shorten the prompt)");
  // The prompt once, then one token per step against the growing KV cache.
  KVCache cache;
  at::Tensor next_input = at::tensor(sequence, at::kLong).unsqueeze(0).to(model.device());  // [1, T]
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    if (static_cast<int64_t>(sequence.size()) >= context) break;  // context full
    KVCache extended;
    ForwardOptions forward_options;
    forward_options.past = step == 0 ? nullptr : &cache;
    forward_options.record = &extended;
    forward_options.logits_at = {{0, next_input.size(1) - 1}};
    at::Tensor logits = model.forward(next_input, forward_options).logits[0].to(at::kFloat).cpu();  // [V]
    cache = std::move(extended);
    int64_t next;
    if (options.top_k <= 0) {
      next = logits.argmax().item<int64_t>();
    } else {
      auto [top_values, top_indices] = logits.topk(std::min<int64_t>(options.top_k, logits.size(0)));
      at::Tensor probs = at::softmax(top_values, -1);
      int64_t choice = at::multinomial(probs, 1, false, generator).item<int64_t>();
      next = top_indices[choice].item<int64_t>();
    }
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) != options.stop_ids.end()) break;
    generated.push_back(next);
    sequence.push_back(next);
    next_input = at::full({1, 1}, next, at::TensorOptions().dtype(at::kLong).device(model.device()));
  }
  return generated;
}

}  // namespace rc
