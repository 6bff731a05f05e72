#pragma once
// A model with its tokenizer and BOS convention: what every command starts from.
#include <memory>
#include <optional>
#include <string>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/model/seq2seq_lm.h"
#include "rome_collapse/text/tokenizer.h"

namespace rc {

struct LoadedModel {
  std::unique_ptr<CausalLM> model;       // null for an encoder-decoder model
  std::unique_ptr<Seq2SeqLM> seq2seq;    // T5, from load_key_model only (keys, check, stats)
  std::unique_ptr<Tokenizer> tokenizer;
  bool add_bos = false;            // effective BOS convention for prompts
  std::string model_path, tokenizer_path;

  std::vector<int64_t> encode(const std::string& text) const { return tokenizer->encode(text, add_bos); }
  // Text of ids the model produced. A model may have more rows than its tokenizer has tokens
  // (padded vocabularies); an id beyond the tokenizer is an InputError naming both (a tokenizer
  // that does not belong to the model), not a failure inside the tokenizer.
  std::string decode(const std::vector<int64_t>& ids) const;
  int64_t pad_id() const;          // T5: its pad id; else EOS of the tokenizer (then of the model), else 0
  int64_t layers() const;
  std::string architecture() const;  // "GPT-2", "Llama", "T5 (relu, tied head)", ...
};

// tokenizer_path empty: the model's directory (for a llama2.c file, the directory holding it).
// device: "cpu" or "cuda"; dtype: "float32", "float64", "bfloat16", "float16".
LoadedModel load_model(const std::string& model_path, const std::string& tokenizer_path,
                       std::optional<bool> add_bos, const std::string& device, const std::string& dtype);

// load_model for the commands that need only keys (keys, check, stats): a Hugging Face T5 folder
// loads as an encoder-decoder model (`seq2seq`, `model` null); anything else as load_model does.
// Other commands use load_model, which refuses T5 naming what supports it.
LoadedModel load_key_model(const std::string& model_path, const std::string& tokenizer_path,
                           std::optional<bool> add_bos, const std::string& device, const std::string& dtype);

c10::Device parse_device(const std::string& device);
at::ScalarType parse_dtype(const std::string& dtype);
// InputError when this libtorch cannot run matrix products of `dtype` on `device`.
void check_dtype_supported(at::ScalarType dtype, c10::Device device, const std::string& name);

}  // namespace rc
