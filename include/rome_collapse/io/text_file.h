#pragma once
// Text collections for perplexity and statistics: ME-PPL JSON ([{"Text": ...}]), a JSON list of
// strings or {"text": ...} objects, JSONL with "text", or plain lines (blank lines skipped).
#include <filesystem>
#include <string>
#include <vector>

namespace rc {

// InputError naming the file (and record) for unreadable files or records without text.
std::vector<std::string> read_texts(const std::filesystem::path& path);

}  // namespace rc
