#include "rome_collapse/rome/keys.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/rome/subject_boundary.h"
#include "rome_collapse/util/error.h"

namespace rc {

int64_t subject_last_index(const Tokenizer& tokenizer, bool add_bos, const std::string& text_with_placeholder,
                           const std::string& subject) {
  const size_t at = text_with_placeholder.find("{}");
  if (at == std::string::npos) throw InputError("prompt \"" + text_with_placeholder + "\" has no \"{}\"");
  std::vector<int64_t> ids = tokenizer.encode(text_with_placeholder.substr(0, at) + subject, add_bos);
  if (ids.empty()) throw InputError("subject \"" + subject + "\" encodes to no tokens");
  return static_cast<int64_t>(ids.size()) - 1;
}

void check_subject_boundary(const Tokenizer& tokenizer, bool add_bos, const std::string& text_with_placeholder,
                            const std::string& subject, const std::string& where) {
  const SubjectBoundaryCheck check = subject_boundary(tokenizer, add_bos, text_with_placeholder, subject, where);
  if (check.kind == SubjectBoundary::InsideWord) throw InputError(check.message);
}

KeySet key_set_from_rows(const at::Tensor& keys, const at::Tensor& outputs) {
  KeySet set;
  set.prefixed_keys = keys;
  set.prefixed_outputs = outputs;
  set.prefixed_key_mean = keys.mean(0);
  set.prefixed_output_mean = outputs.mean(0);
  set.unprefixed_key = keys[0];
  set.unprefixed_output = outputs[0];
  return set;
}

KeySet compute_keys(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos, const EditRequest& request,
                    const std::vector<std::string>& templates, int64_t layer, int64_t pad_id, int64_t position_offset) {
  at::NoGradGuard no_grad;
  std::vector<std::vector<int64_t>> rows;
  ForwardOptions options;
  options.intervention.layer = layer;
  options.stop_after_layer = layer;
  options.position_offset = position_offset;
  for (size_t i = 0; i < templates.size(); ++i) {
    const std::string with_placeholder = fill_placeholder(templates[i], request.prompt);
    rows.push_back(tokenizer.encode(fill_placeholder(with_placeholder, request.subject), add_bos));
    options.intervention.capture_at.push_back(
        {static_cast<int64_t>(i), subject_last_index(tokenizer, add_bos, with_placeholder, request.subject)});
  }
  ForwardOutput out = model.forward(pad_batch(rows, pad_id, model.device()), options);
  return key_set_from_rows(out.captured_keys, out.captured_outputs);
}

}  // namespace rc
