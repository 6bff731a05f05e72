#pragma once
// Upper bounds on every size and count a user supplies, checked before any work starts (the README
// lists them under "Hostile inputs"). Each is far above what the paper or a real run uses, and low
// enough that a typo (1e9 steps, a 10 MB prompt) is refused in milliseconds instead of running
// for hours or exhausting memory.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "rome_collapse/rome/hparams.h"
#include "rome_collapse/util/limits.h"

namespace rc {

struct TemplateSpec;

namespace limits {
constexpr int64_t kMaxGradSteps = 10'000;        // hparams.v_num_grad_steps (paper: 20-25)
constexpr int64_t kMaxTemplates = 256;           // context templates, given or generated (paper: 21)
constexpr int64_t kMaxTemplateTokens = 1'024;    // length of a generated template (paper: 5 and 10)
constexpr int64_t kMaxSeedWords = 100;           // context_templates.generate.seed_words (paper: 5)
constexpr int64_t kMaxTopK = 1'000'000;          // context_templates.generate.top_k
constexpr double kMaxFactor = 1e6;               // clamp_norm_factor, v_lr, v_weight_decay, kl_factor, mom2_ridge
}  // namespace limits

// Hyper-parameters in range: positive where zero would make the edit a silent no-op
// (clamp_norm_factor 0 clips delta to nothing), non-negative weights, and the bounds above.
// InputError "<where>.<field>: ..." naming the bound.
void check_hparams(const RomeHparams& hparams, const std::string& where);

// Template counts and lengths within the bounds (given templates and the generation settings).
void check_template_spec(const TemplateSpec& spec, const std::string& where);

}  // namespace rc
