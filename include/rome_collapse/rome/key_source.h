#pragma once
// What `check`, `keys` and `stats` need of a model, whatever its kind: the rewrite module's input
// (the key) and output at (row, position) pairs of one layer, the module's shapes and where it runs.
// A causal LM provides its MLP down-projection (GPT-2 c_proj, GPT-J fc_out, Llama down_proj); T5 the
// encoder's DenseReluDense.wo (the paper's Experiment 5). One implementation of each command serves
// both, so the decoder-vs-encoder comparison is the same command on two models.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/model/seq2seq_lm.h"

namespace rc {

struct LoadedModel;

class KeySource {
 public:
  virtual ~KeySource() = default;

  virtual int64_t layers() const = 0;
  virtual int64_t key_size() const = 0;          // F, the rewrite module's input width
  virtual int64_t context_length() const = 0;    // longest model input by default (T5: its pre-training 512)
  virtual c10::Device device() const = 0;
  virtual at::ScalarType dtype() const = 0;
  virtual std::string architecture() const = 0;  // for provenance ("GPT-2", "T5 encoder (relu, tied head)")
  virtual std::string rewrite_weight_name(int64_t layer) const = 0;

  // The model input for a text's token ids: T5 appends "</s>"; a causal LM takes them as they are.
  // Positions of the ids are positions of the input.
  virtual std::vector<int64_t> model_input(std::vector<int64_t> ids) const = 0;

  // Keys [N, F] and outputs [N, D] at `at` (row, position in `inputs`, which are model inputs) of
  // `layer`, from one forward pass stopped after that layer. position_offset shifts absolute
  // position ids; T5's relative positions make it a no-op there (the key does not change).
  virtual std::pair<at::Tensor, at::Tensor> capture(const std::vector<std::vector<int64_t>>& inputs,
                                                    const std::vector<TokenPosition>& at, int64_t layer,
                                                    int64_t position_offset) const = 0;
};

// The causal LM's rewrite module; rows are right-padded with pad_id (the causal mask hides it).
std::unique_ptr<KeySource> causal_key_source(const CausalLM& model, int64_t pad_id);
// T5's encoder MLP; `appended_eos` (the tokenizer's convention, else the config's EOS) ends every
// input, padding is masked out of the bidirectional attention.
std::unique_ptr<KeySource> t5_encoder_key_source(const Seq2SeqLM& model, std::optional<int64_t> appended_eos);
// The source of a loaded model: T5's encoder when it is one, else the causal LM.
std::unique_ptr<KeySource> make_key_source(const LoadedModel& loaded);

}  // namespace rc
