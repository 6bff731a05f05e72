#include "rome_collapse/rome/key_source.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/model/loaded_model.h"

namespace rc {
namespace {

class CausalKeySource final : public KeySource {
 public:
  CausalKeySource(const CausalLM& model, int64_t pad_id) : model_(model), pad_id_(pad_id) {}

  int64_t layers() const override { return model_.config().n_layers; }
  int64_t key_size() const override { return model_.config().d_ff; }
  int64_t context_length() const override { return model_.config().max_positions; }
  c10::Device device() const override { return model_.device(); }
  at::ScalarType dtype() const override { return model_.dtype(); }
  std::string architecture() const override { return to_string(model_.config().arch); }
  std::string rewrite_weight_name(int64_t layer) const override { return model_.rewrite_weight_name(layer); }
  std::vector<int64_t> model_input(std::vector<int64_t> ids) const override { return ids; }

  std::pair<at::Tensor, at::Tensor> capture(const std::vector<std::vector<int64_t>>& inputs,
                                            const std::vector<TokenPosition>& at, int64_t layer,
                                            int64_t position_offset) const override {
    at::NoGradGuard no_grad;
    ForwardOptions options;
    options.intervention.layer = layer;
    options.intervention.capture_at = at;
    options.stop_after_layer = layer;
    options.position_offset = position_offset;
    options.compute_logits = false;
    ForwardOutput out = model_.forward(pad_batch(inputs, pad_id_, model_.device()), options);
    return {out.captured_keys, out.captured_outputs};
  }

 private:
  const CausalLM& model_;
  int64_t pad_id_;
};

// T5 was pre-trained on inputs of 512 tokens; its relative positions accept longer ones.
constexpr int64_t kT5PretrainingLength = 512;

class T5EncoderKeySource final : public KeySource {
 public:
  T5EncoderKeySource(const Seq2SeqLM& model, int64_t eos) : model_(model), eos_(eos) {}

  int64_t layers() const override { return model_.config().encoder_layers; }
  int64_t key_size() const override { return model_.config().d_ff; }
  int64_t context_length() const override { return kT5PretrainingLength; }
  c10::Device device() const override { return model_.device(); }
  at::ScalarType dtype() const override { return model_.dtype(); }
  std::string architecture() const override { return model_.architecture() + " encoder"; }
  std::string rewrite_weight_name(int64_t layer) const override {
    return model_.rewrite_weight_name(Stack::Encoder, layer);
  }
  std::vector<int64_t> model_input(std::vector<int64_t> ids) const override {
    ids.push_back(eos_);
    return ids;
  }

  std::pair<at::Tensor, at::Tensor> capture(const std::vector<std::vector<int64_t>>& inputs,
                                            const std::vector<TokenPosition>& at, int64_t layer,
                                            int64_t /*position_offset: relative positions*/) const override {
    at::NoGradGuard no_grad;
    const at::Tensor ids = pad_batch(inputs, model_.config().pad_token_id, model_.device());
    at::Tensor mask = at::zeros(ids.sizes(), at::kLong);
    for (size_t row = 0; row < inputs.size(); ++row)
      mask[static_cast<int64_t>(row)].slice(0, 0, static_cast<int64_t>(inputs[row].size())).fill_(1);
    Seq2SeqForwardOptions options;
    options.intervention.stack = Stack::Encoder;
    options.intervention.layer = layer;
    options.intervention.capture_at = at;
    options.stop_after_encoder_layer = layer;
    Seq2SeqOutput out = model_.forward(ids, mask.to(model_.device()), at::Tensor(), options);
    return {out.captured_keys, out.captured_outputs};
  }

 private:
  const Seq2SeqLM& model_;
  int64_t eos_;
};

}  // namespace

std::unique_ptr<KeySource> causal_key_source(const CausalLM& model, int64_t pad_id) {
  return std::make_unique<CausalKeySource>(model, pad_id);
}

std::unique_ptr<KeySource> t5_encoder_key_source(const Seq2SeqLM& model, std::optional<int64_t> appended_eos) {
  return std::make_unique<T5EncoderKeySource>(model, appended_eos.value_or(model.config().eos_token_id));
}

std::unique_ptr<KeySource> make_key_source(const LoadedModel& loaded) {
  if (loaded.seq2seq) return t5_encoder_key_source(*loaded.seq2seq, loaded.tokenizer->appended_eos_id());
  return causal_key_source(*loaded.model, loaded.pad_id());
}

}  // namespace rc
