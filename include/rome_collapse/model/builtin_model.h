#pragma once
// The embedded default: "builtin:demo-gpt2" is a 4-layer GPT-2 with seeded random weights and a
// small byte-level BPE vocabulary built from an embedded word list, so the demo runs on a fresh
// machine with nothing downloaded. Random, yet it shows the paper's first-token anomaly.
#include <memory>
#include <string>

#include "rome_collapse/model/loaded_model.h"

namespace rc {

bool is_builtin_model(const std::string& path);
// "builtin:demo-gpt2"; InputError for an unknown builtin name.
LoadedModel load_builtin_model(const std::string& name, std::optional<bool> add_bos, const std::string& device,
                               const std::string& dtype);
// The demo tokenizer alone (byte-level BPE over the embedded words).
std::unique_ptr<Tokenizer> builtin_demo_tokenizer();

}  // namespace rc
