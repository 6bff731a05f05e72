#include "rome_collapse/rome/templates.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "rome_collapse/model/generation.h"
#include "rome_collapse/util/error.h"

namespace rc {

std::vector<std::string> generate_context_templates(const LoadedModel& loaded, const TemplateGeneration& generation) {
  if (generation.seed_words.empty()) throw InputError("context_templates.generate.seed_words: empty");
  std::vector<std::string> templates = {"{}"};
  uint64_t sample_seed = generation.seed;
  for (const auto& [length, samples] : generation.lengths) {
    const int64_t per_word = samples / static_cast<int64_t>(generation.seed_words.size());
    for (const auto& word : generation.seed_words) {
      std::vector<int64_t> prompt = loaded.encode(word);
      for (int64_t s = 0; s < per_word; ++s) {
        GenerationOptions options;
        options.max_new_tokens = std::max<int64_t>(0, length - static_cast<int64_t>(prompt.size()));
        options.top_k = generation.top_k;
        options.seed = sample_seed++;  // one seed per sample: the list does not depend on batching
        std::vector<int64_t> sequence = prompt;
        std::vector<int64_t> generated = generate(*loaded.model, prompt, options);
        sequence.insert(sequence.end(), generated.begin(), generated.end());
        std::string text = loaded.decode(sequence);
        text.erase(std::remove_if(text.begin(), text.end(), [](char c) { return c == '{' || c == '}'; }), text.end());
        templates.push_back(text + ". {}");
      }
    }
  }
  return templates;
}

void validate_templates(const std::vector<std::string>& templates, const std::string& where) {
  if (templates.empty()) throw InputError(where + ": no templates");
  if (templates[0] != "{}") throw InputError(where + "[0]: the first template must be \"{}\" (the bare prompt)");
  for (size_t i = 0; i < templates.size(); ++i) {
    const size_t at = templates[i].find("{}");
    if (at == std::string::npos || templates[i].find("{}", at + 2) != std::string::npos)
      throw InputError(where + "[" + std::to_string(i) + "]: must contain exactly one \"{}\": \"" + excerpt(templates[i]) + "\"");
  }
}

TemplateSpec parse_template_spec(const nlohmann::json& json, const std::string& where) {
  TemplateSpec spec;
  if (json.is_array()) {
    for (size_t i = 0; i < json.size(); ++i) {
      if (!json[i].is_string()) throw InputError(where + "[" + std::to_string(i) + "]: expected a string");
      spec.fixed.push_back(json[i].get<std::string>());
    }
    validate_templates(spec.fixed, where);
    return spec;
  }
  if (!json.is_object() || !json.contains("generate") || json.size() != 1)
    throw InputError(where + ": expected a list of templates or {\"generate\": {...}}");
  spec.generate = true;
  const auto& g = json["generate"];
  const std::string gwhere = where + ".generate";
  if (!g.is_object()) throw InputError(gwhere + ": expected an object");
  try {
    for (const auto& item : g.items()) {
      const std::string& key = item.key();
      if (key == "seed_words") {
        spec.generation.seed_words = item.value().get<std::vector<std::string>>();
      } else if (key == "lengths") {
        spec.generation.lengths.clear();
        for (const auto& pair : item.value()) {
          if (!pair.is_array() || pair.size() != 2) throw InputError(gwhere + ".lengths: expected [[length, samples], ...]");
          spec.generation.lengths.emplace_back(pair[0].get<int64_t>(), pair[1].get<int64_t>());
        }
      } else if (key == "top_k") {
        spec.generation.top_k = item.value().get<int64_t>();
      } else if (key == "seed") {
        spec.generation.seed = item.value().get<uint64_t>();
      } else {
        throw InputError(gwhere + ": unknown field \"" + excerpt(key) + "\"");
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError(gwhere + ": " + e.what());
  }
  if (spec.generation.top_k < 1) throw InputError(gwhere + ".top_k: must be at least 1");
  return spec;
}

std::vector<std::string> resolve_templates(const LoadedModel& loaded, const TemplateSpec& spec) {
  return spec.generate ? generate_context_templates(loaded, spec.generation) : spec.fixed;
}

const std::vector<std::string>& fixed_example_templates() {
  static const std::vector<std::string> templates = {
    "{}", "The company. {}", "Therefore, it. {}", "Because of this. {}", "I think. {}", "You can. {}",
    "The first time. {}", "Therefore we. {}", "Because the. {}", "I was. {}", "You know. {}",
    "The new building is located in the heart of. {}", "Therefore, the government has decided to. {}",
    "Because of the weather, the game was postponed until. {}", "I have been working on this for a. {}",
    "You may also like the following articles about. {}", "The results of the study were published in. {}",
    "Therefore, he is considered one of the best. {}", "Because it is so cheap, many people. {}",
    "I would like to thank everyone who helped. {}", "You will find the answer at the end of. {}"};
  return templates;
}

}  // namespace rc
