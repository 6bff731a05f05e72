// `rome-collapse generate` and `rome-collapse perplexity`: the model core on its own.
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "rome_collapse/eval/perplexity.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/model/generation.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/limits.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/progress.h"

namespace rc::cli {

int run_generate(const GenerateArgs& args) {
  check_text_size(args.prompt, "--prompt");  // before loading anything, let alone tokenizing
  LoadedModel loaded = load_model(args.model.model, args.model.tokenizer, args.model.add_bos, args.model.device,
                                  args.model.dtype);
  std::vector<int64_t> prompt = loaded.encode(args.prompt);
  if (prompt.empty()) {
    auto bos = loaded.tokenizer->bos_id() ? loaded.tokenizer->bos_id() : loaded.tokenizer->eos_id();  // GPT-2: <|endoftext|>
    if (!bos) throw InputError("generate: empty prompt and the tokenizer has no BOS token to start from");
    prompt.push_back(*bos);
  }
  GenerationOptions options;
  options.max_new_tokens = args.max_new_tokens;
  options.top_k = args.top_k;
  options.seed = args.seed;
  for (auto id : {loaded.tokenizer->eos_id(), loaded.tokenizer->bos_id()})
    if (id) options.stop_ids.push_back(*id);
  std::vector<int64_t> generated = generate(*loaded.model, prompt, options);
  // Decode with the prompt as context (a piece right after BOS loses its leading space, as
  // llama2.c prints it), then drop the prompt's own text.
  std::vector<int64_t> full = prompt;
  full.insert(full.end(), generated.begin(), generated.end());
  const std::string full_text = loaded.decode(full), prompt_text = loaded.decode(prompt);
  std::cout << (full_text.rfind(prompt_text, 0) == 0 ? full_text.substr(prompt_text.size()) : loaded.decode(generated))
            << std::flush;
  return kOk;
}

int run_perplexity(const PerplexityArgs& args) {
  LoadedModel loaded = load_model(args.model.model, args.model.tokenizer, args.model.add_bos, args.model.device,
                                  args.model.dtype);
  std::vector<std::string> texts = read_texts(args.texts);
  PerplexitySummary summary;
  try {
    ProgressReporter progress("perplexity", static_cast<int64_t>(texts.size()), "texts");
    summary = perplexity(*loaded.model,
                         perplexity_token_ids(*loaded.tokenizer, texts, loaded.model->config().max_positions),
                         args.batch_size, &progress);
  } catch (const InputError& e) {
    throw InputError(args.texts + ": " + e.what());
  }
  std::cout << json_text(to_json(summary, true)) << "\n";
  return kOk;
}

}  // namespace rc::cli
