// The models `bench` times: the tiny reference models, stories260K, and seeded random weights in
// the shapes of the paper's models, each with the paper's hparams for it.
#include "bench_models.h"

#include <algorithm>

#include "rome_collapse/model/builtin_model.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/rome/templates.h"
#include "rome_collapse/util/error.h"

namespace rc::cli {
namespace {


// Seeded random weights in a real model's shape (model_shape); "gpt2-tiny" is the demo's, not a bench model.
bool is_random_shape(const std::string& name) {
  const auto& names = model_shape_names();
  return name != "gpt2-tiny" && std::find(names.begin(), names.end(), name) != names.end();
}

std::string random_shape_list() {
  std::string list;
  for (const auto& name : model_shape_names())
    if (is_random_shape(name)) list += (list.empty() ? "" : ", ") + name;
  return list;
}


}  // namespace

BenchModel make_model(const std::string& name, const std::filesystem::path& shared, int64_t steps_override,
                      const std::string& device, const std::string& dtype) {
  BenchModel bench;
  bench.name = name;
  auto& hp = bench.config.hparams;
  EditRequest request{"{} is a citizen of", "Leonardo", "Japan", "Italy"};
  auto need_shared = [&](const std::string& relative) {
    auto path = shared / relative;
    if (!std::filesystem::exists(path))
      throw InputError(path.string() + ": not found (bench model \"" + name + "\" needs ../shared; pass --shared DIR)");
    return path.string();
  };
  if (name == "tiny-gpt2" || name == "tiny-llama" || name == "tiny-gptj") {
    bench.loaded = load_model(need_shared("reference/" + name), need_shared("tokenizers/gpt2"), false, device, dtype);
    hp.layer = 1, hp.v_loss_layer = 3, hp.v_num_grad_steps = 20, hp.v_weight_decay = 0.5;
    bench.perplexity_texts = need_shared("data/me-ppl/ME-PPL_50.json");
  } else if (name == "stories260K") {
    bench.loaded = load_model(need_shared("models/stories260K/stories260K.bin"),
                              need_shared("models/stories260K/tok512.model"), std::nullopt, device, dtype);
    hp.layer = 2, hp.v_loss_layer = 4, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    request = {"{} loved to play with her", "Lily", "dog", "toys"};
  } else if (is_random_shape(name)) {
    // Seeded random weights in the real shapes, created on the device; the embedded byte-level
    // tokenizer drives them (ids < 1000), the vocabulary keeps the real size so that the LM head
    // costs what it really costs. Layers and steps: the paper's hparams (configs/).
    bench.loaded.tokenizer = builtin_demo_tokenizer();
    LoadOptions options;
    options.device = parse_device(device);
    options.dtype = parse_dtype(dtype);
    check_dtype_supported(options.dtype, options.device, dtype);
    bench.loaded.model = build_causal_lm(random_checkpoint(model_shape(name), 0, options.device), options);
    bench.loaded.model_path = "random:" + name;
    bench.loaded.tokenizer_path = "builtin:demo-gpt2";
    configure_threads(&bench.loaded.model->config());
    hp.v_num_grad_steps = 20, hp.v_weight_decay = 0.5;
    if (name == "gpt2-small") hp.layer = 5, hp.v_loss_layer = 11;
    if (name == "gpt2-xl") hp.layer = 17, hp.v_loss_layer = 47;
    if (name == "gptj-6b") hp.layer = 5, hp.v_loss_layer = 27;
    if (name == "llama2-7b") hp.layer = 5, hp.v_loss_layer = 31, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    // EasyEdit's hparams/ROME/{llama3-8b,qwen2.5-7b,mistral-7b}.yaml; Pythia as GPT-J (configs/).
    if (name == "llama3-8b" || name == "mistral-7b")
      hp.layer = 5, hp.v_loss_layer = 31, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    if (name == "qwen2.5-7b") hp.layer = 5, hp.v_loss_layer = 27, hp.v_num_grad_steps = 25, hp.v_weight_decay = 1e-3;
    if (name == "pythia-6.9b") hp.layer = 5, hp.v_loss_layer = 31;
  } else {
    throw InputError("bench: unknown model \"" + name + "\" (tiny-gpt2, tiny-llama, tiny-gptj, stories260K, " +
                     random_shape_list() + ")");
  }
  hp.early_stop_loss = -1;  // every edit runs all its steps, so the two paths do equal work
  if (steps_override > 0) hp.v_num_grad_steps = steps_override;
  bench.config.request = request;
  bench.config.templates.fixed = fixed_example_templates();
  bench.config.record_timings = true;
  bench.config.source = "bench:" + name;
  bench.config.device = device;
  return bench;
}


}  // namespace rc::cli
