#include "rome_collapse/eval/edit_metrics.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/util/error.h"

namespace rc {

TargetScore score_target(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos, const std::string& prompt,
                         const std::string& target) {
  at::NoGradGuard no_grad;
  const std::vector<int64_t> prompt_ids = tokenizer.encode(prompt, add_bos);
  const std::vector<int64_t> ids = tokenizer.encode(prompt + " " + target, add_bos);
  const int64_t prompt_length = static_cast<int64_t>(prompt_ids.size());
  const int64_t total = static_cast<int64_t>(ids.size());
  if (prompt_length < 1 || total <= prompt_length)
    throw InputError("target \"" + target + "\" adds no tokens after the prompt \"" + prompt + "\"");
  ForwardOptions options;
  for (int64_t position = prompt_length - 1; position < total - 1; ++position) options.logits_at.push_back({0, position});
  at::Tensor log_probs =
      at::log_softmax(model.forward(at::tensor(ids, at::kLong).unsqueeze(0).to(model.device()), options).logits.to(at::kFloat),
                      -1).cpu();  // [|t|, V]
  TargetScore score;
  double sum = 0;
  int64_t correct = 0;
  for (int64_t j = 0; j < log_probs.size(0); ++j) {
    const int64_t token = ids[prompt_length + j];
    const int64_t predicted = log_probs[j].argmax().item<int64_t>();
    score.target_tokens.push_back(token);
    score.predicted.push_back(predicted);
    sum += log_probs[j][token].item<double>();
    correct += predicted == token;
  }
  score.mean_logprob = sum / double(log_probs.size(0));
  score.token_accuracy = double(correct) / double(log_probs.size(0));
  return score;
}

}  // namespace rc
