#pragma once
// Models named as researchers name them: a path, a Hugging Face hub-cache repo folder
// (models--org--name/), or a hub name ("gpt2", "openai-community/gpt2") looked up offline in the
// local hub cache. Nothing is downloaded.
#include <filesystem>
#include <string>
#include <vector>

namespace rc {

// Hub-cache roots in the order huggingface_hub uses them: $HF_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (only the first that is set).
std::vector<std::filesystem::path> hub_cache_roots();

// `name` as a local path when it exists (a repo folder models--org--name/ becomes its snapshot:
// refs/main, else its only snapshot); otherwise a hub name looked up in the cache: org/name exactly
// (models--org--name), a bare name as models--name or under any org (models--*--name; refused when
// several orgs have it). InputError listing every place it looked when nothing is found.
// `relative_to` (when not empty) is tried first for a relative path (a config's folder); `kind`
// names the thing in messages ("model", "tokenizer").
std::string resolve_model_location(const std::string& name, const std::filesystem::path& relative_to = {},
                                   const std::string& kind = "model");

}  // namespace rc
