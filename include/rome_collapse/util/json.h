#pragma once
// The one way the tool reads JSON: every reader (config.json, safetensors headers, tokenizers,
// datasets, texts, edit and batch configs, run journals) parses through parse_json, which refuses
// what nlohmann::json would accept but the tool must not: nesting deeper than kMaxJsonDepth (a
// 100,000-level value overflows the stack of any recursive code that later prints or walks it) and
// a key given twice in one object (nlohmann keeps the last one silently).
#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace rc {

// Far above any real file (config.json, tokenizer.json, datasets nest fewer than 10 levels).
constexpr int kMaxJsonDepth = 64;

// Parses `text`; InputError "<where>: <label>: <why>" when it is not valid JSON, nests deeper than
// kMaxJsonDepth or repeats a key in one object. `where` names the file (and line, record ...).
nlohmann::json parse_json(std::string_view text, const std::string& where, const std::string& label = "not valid JSON");

// A value as it may appear in a message: its JSON text cut to about `max_bytes`
// ("[[[[[[[[… (200000 bytes)"), so that a hostile value never floods a message.
std::string json_excerpt(const nlohmann::json& value, size_t max_bytes = 64);

}  // namespace rc
