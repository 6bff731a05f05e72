#include "support/golden.h"

#include <fstream>

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

}  // namespace rc::test
