#include "support/golden.h"

#include <algorithm>
#include <fstream>

#include <ATen/core/grad_mode.h>

#include "rome_collapse/model/causal_lm.h"

namespace rc::test {

const nlohmann::json& golden_reference() {
  static const nlohmann::json json = [] {
    std::ifstream in(shared_path("reference/golden_reference.json"));
    return nlohmann::json::parse(in);
  }();
  return json;
}

std::string reference_model_dir(const std::string& arch) { return shared_path("reference/tiny-" + arch).string(); }

at::Tensor json_to_tensor(const nlohmann::json& values) {
  std::vector<double> flat;
  std::vector<int64_t> shape;
  const nlohmann::json* level = &values;
  while (level->is_array()) {
    shape.push_back(static_cast<int64_t>(level->size()));
    if (level->empty()) break;
    level = &(*level)[0];
  }
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& node) {
    if (node.is_array())
      for (const auto& child : node) walk(child);
    else
      flat.push_back(node.get<double>());
  };
  walk(values);
  return at::tensor(flat, at::kDouble).reshape(shape);
}

void expect_ragged_rows_match_full_pass(const CausalLM& model, const std::vector<std::vector<int64_t>>& rows,
                                        const std::vector<int64_t>& starts, int64_t start_layer, int64_t past,
                                        const std::string& what) {
  at::NoGradGuard no_grad;
  const at::Tensor batch = pad_batch(rows, 0, model.device());
  KVCache cache;
  ForwardOptions full_options;
  full_options.record = &cache;
  full_options.keep_hidden_entering = start_layer;
  const ForwardOutput full = model.forward(batch, full_options);

  const int64_t n = static_cast<int64_t>(rows.size());
  int64_t window = 0;
  for (int64_t r = 0; r < n; ++r) window = std::max<int64_t>(window, rows[r].size() - starts[r]);
  std::vector<int64_t> columns, valid;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < window; ++j) columns.push_back(std::min<int64_t>(starts[r] + j, batch.size(1) - 1));
    for (int64_t p = 0; p < past; ++p) valid.push_back(p < starts[r]);
  }
  const at::Tensor column_index = at::tensor(columns, at::kLong).view({n, window}).to(model.device());
  KVCache past_cache;
  past_cache.keys.resize(cache.keys.size());
  past_cache.values.resize(cache.values.size());
  for (size_t l = static_cast<size_t>(start_layer); l < cache.keys.size(); ++l) {
    past_cache.keys[l] = cache.keys[l].slice(2, 0, past);
    past_cache.values[l] = cache.values[l].slice(2, 0, past);
  }
  ForwardOptions ragged;
  ragged.start_layer = start_layer;
  ragged.initial_hidden =
      full.hidden_entering.gather(1, column_index.unsqueeze(-1).expand({n, window, model.config().d_model}));
  ragged.row_positions = column_index;  // every real position is its own column
  ragged.past = &past_cache;
  ragged.past_valid = at::tensor(valid, at::kLong).view({n, past}).to(at::kBool).to(model.device());
  const at::Tensor logits = model.forward(batch.gather(1, column_index), ragged).logits;  // [n, window, V]
  for (int64_t r = 0; r < n; ++r) {
    const int64_t real = static_cast<int64_t>(rows[r].size()) - starts[r];
    EXPECT_TRUE(all_close_abs(logits[r].slice(0, 0, real), full.logits[r].slice(0, starts[r], rows[r].size()), 1e-5,
                              what + " ragged row " + std::to_string(r)));
  }
}

}  // namespace rc::test
