#pragma once
// Keys: the rewrite module's input at the subject's last token.
//   k̄ (prefixed_key_mean): mean over the context templates applied to the prompt (T[0] included)
//   kᵘ (unprefixed_key):   the bare prompt's key
// and the module outputs at the same positions (W k + b).
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "rome_collapse/io/request.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/text/tokenizer.h"

namespace rc {

// index = len(encode(prefix + subject)) - 1, prefix = the text before "{}" (BOS counted when added).
int64_t subject_last_index(const Tokenizer& tokenizer, bool add_bos, const std::string& text_with_placeholder,
                           const std::string& subject);

// InputError when the subject ends inside a word of the prompt ("Leonard" in "Leonardo is"):
// the key would be read at a token the prompt does not contain (subject_boundary.h; a subject
// merged with punctuation passes). The message shows both token sequences.
void check_subject_boundary(const Tokenizer& tokenizer, bool add_bos, const std::string& text_with_placeholder,
                            const std::string& subject, const std::string& where);

struct KeySet {
  at::Tensor prefixed_keys;         // [n_templates, F]
  at::Tensor prefixed_outputs;      // [n_templates, D]
  at::Tensor prefixed_key_mean;     // k̄ [F]
  at::Tensor prefixed_output_mean;  // [D]
  at::Tensor unprefixed_key;        // kᵘ [F] (template 0)
  at::Tensor unprefixed_output;     // [D]
};

// Keys from captured rows (row i = template i).
KeySet key_set_from_rows(const at::Tensor& keys, const at::Tensor& outputs);

// One batched forward over the templates applied to the request, stopped after `layer`;
// position_offset shifts the position ids (the position-encoding analysis).
KeySet compute_keys(const CausalLM& model, const Tokenizer& tokenizer, bool add_bos, const EditRequest& request,
                    const std::vector<std::string>& templates, int64_t layer, int64_t pad_id,
                    int64_t position_offset = 0);

}  // namespace rc
