#include "rome_collapse/analysis/key_statistics.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "rome_collapse/io/npz.h"
#include "rome_collapse/rome/covariance.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/json.h"
#include "rome_collapse/util/run_guard.h"

namespace rc {
namespace {

constexpr char kCheckpointFormat[] = "rome_collapse.stats_checkpoint.v1";

}  // namespace

at::Tensor rewrite_keys_of_all_tokens(const KeySource& source, const std::vector<std::vector<int64_t>>& sequences,
                                      int64_t layer) {
  std::vector<std::vector<int64_t>> inputs;
  std::vector<TokenPosition> at;
  for (const auto& sequence : sequences) {
    if (sequence.empty()) continue;
    const int64_t row = static_cast<int64_t>(inputs.size());
    inputs.push_back(source.model_input(sequence));
    for (int64_t position = 0; position < static_cast<int64_t>(inputs.back().size()); ++position)
      at.push_back({row, position});
  }
  if (inputs.empty()) return at::empty({0, source.key_size()}, at::TensorOptions().dtype(source.dtype()));
  return source.capture(inputs, at, layer, 0).first;  // [N, F]
}

SecondMomentCollector::SecondMomentCollector(int64_t dim, c10::Device device)
    : dim_(dim), sum_(at::zeros({dim, dim}, at::TensorOptions().dtype(at::kDouble).device(device))) {}

void SecondMomentCollector::add_keys(const at::Tensor& keys) {
  TORCH_CHECK(keys.dim() == 2 && keys.size(1) == dim_, "add_keys: expected [N, ", dim_, "] keys, got ", keys.sizes());
  if (keys.size(0) == 0) return;
  at::NoGradGuard no_grad;
  const at::Tensor k = keys.detach().to(sum_.device(), at::kDouble);  // [N, F]
  sum_.addmm_(k.t(), k);  // Σ k kᵀ, [F, F]
  count_ += keys.size(0);
}

at::Tensor SecondMomentCollector::sum() const { return sum_.cpu(); }

void SecondMomentCollector::save_checkpoint(const std::filesystem::path& path, const nlohmann::json& fingerprint) const {
  write_npz(path, {{"mom2_sum", serialize_npy(sum())},
                   {"count", serialize_npy(at::scalar_tensor(count_, at::kLong))},
                   {"texts_done", serialize_npy(at::scalar_tensor(texts_done_, at::kLong))},
                   {"fingerprint", serialize_npy_string(fingerprint.dump())},
                   {"format", serialize_npy_string(kCheckpointFormat)}});
}

SecondMomentCollector SecondMomentCollector::restore(const std::filesystem::path& path,
                                                     const nlohmann::json& fingerprint, int64_t dim,
                                                     c10::Device device) {
  const std::string file = path.string();
  const std::string start_over = "; delete " + file + " to start over";
  auto members = read_npz(path);
  for (const char* key : {"format", "fingerprint", "mom2_sum", "count", "texts_done"})
    if (!members.count(key))
      fail_input(file, std::string("missing member '") + key + "': not a stats checkpoint" + start_over);
  if (members.at("format").string() != kCheckpointFormat)
    fail_input(file, "member 'format' is \"" + members.at("format").string() + "\", expected \"" + kCheckpointFormat +
                         "\"" + start_over);
  nlohmann::json stored;
  try {
    stored = parse_json(members.at("fingerprint").string(), file + ": member 'fingerprint'");
  } catch (const InputError& e) {
    throw InputError(e.what() + start_over);
  }
  if (stored != fingerprint) {
    std::string differing;
    for (const std::string& line : fingerprint_differences(stored, fingerprint))
      differing += (differing.empty() ? "" : "; ") + line;
    fail_input(file, "this partial statistics file belongs to another run (differs in: " + differing +
                         "); rerun with the same options to resume it, or delete " + file + " to start over");
  }
  auto scalar = [&](const char* key) {
    const NpyArray& array = members.at(key);
    if (array.numel() != 1 || array.descr.substr(1) != "i8")
      throw InputError(array.where + ": expected a 0-d int64 array" + start_over);
    return array.tensor().reshape({}).item<int64_t>();
  };
  const NpyArray& sum = members.at("mom2_sum");
  if (sum.descr.substr(1) != "f8" || sum.shape != std::vector<int64_t>{dim, dim})
    throw InputError(sum.where + ": expected float64 [" + std::to_string(dim) + ", " + std::to_string(dim) + "]" +
                     start_over);
  SecondMomentCollector collector(dim, device);
  collector.sum_ = sum.tensor().to(device);
  collector.count_ = scalar("count");
  collector.texts_done_ = scalar("texts_done");
  if (collector.count_ < 0 || collector.texts_done_ < 0)
    fail_input(file, "negative count or texts_done" + start_over);
  return collector;
}

void SecondMomentCollector::write_second_moment(const std::filesystem::path& path, at::ScalarType stored_dtype) const {
  write_second_moment_npz(path, sum(), count_, texts_done_, stored_dtype);
}

std::filesystem::path checkpoint_path_for(const std::filesystem::path& out) {
  return std::filesystem::path(out.string() + ".partial.npz");
}

}  // namespace rc
