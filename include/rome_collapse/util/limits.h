#pragma once
// The bound on a single text a user supplies (a prompt, subject, target, template or perplexity
// text), checked by every reader before it tokenizes anything. The other bounds, on hyper-parameters
// and templates, are the paper's settings' business and live in rome/limits.h.
#include <cstddef>
#include <string>

namespace rc {

namespace limits {
constexpr size_t kMaxTextBytes = 256 * 1024;  // a prompt, subject, target, template or text, before tokenizing
}  // namespace limits

// A text from an input within kMaxTextBytes; checked before it is tokenized.
void check_text_size(const std::string& text, const std::string& where);

}  // namespace rc
