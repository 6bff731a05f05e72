// `rome-collapse stats`: the second moment C of a layer's rewrite-module inputs over a corpus, in
// ROME's .npz layout, with resumable checkpoints (like llama.cpp's imatrix): parse, call
// analysis/key_statistics_run.h.
#include "commands.h"
#include "rome_collapse/analysis/key_statistics_run.h"

namespace rc::cli {

int run_stats(const StatsArgs& args) { return collect_key_statistics(args); }

}  // namespace rc::cli
