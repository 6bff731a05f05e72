#include "rome_collapse/analysis/key_statistics_run.h"

#include <algorithm>
#include <iostream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/analysis/key_statistics.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/rome/key_source.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/progress.h"
#include "rome_collapse/util/run_guard.h"

namespace rc {
namespace {

namespace fs = std::filesystem;

std::string absolute_path(const std::string& path) {
  if (path.empty() || path.rfind("builtin:", 0) == 0) return path;
  std::error_code error;
  auto canonical = fs::weakly_canonical(path, error);
  return error ? path : canonical.string();
}

// The checkpoint and any temporary file a killed run left while writing it or the output.
void remove_checkpoint_files(const fs::path& out, const fs::path& partial) {
  std::error_code ignored;
  fs::remove(partial, ignored);
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  const std::string out_temp = out.filename().string() + ".tmp.", partial_temp = partial.filename().string() + ".tmp.";
  for (const auto& entry : fs::directory_iterator(dir, ignored)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(out_temp, 0) == 0 || name.rfind(partial_temp, 0) == 0) fs::remove(entry.path(), ignored);
  }
}

// What a run reads and how it cuts it, settled before the first batch.
struct StatsPlan {
  std::vector<std::string> texts;
  int64_t total = 0, max_length = 0, batch_size = 0, d_ff = 0;
  nlohmann::json fingerprint;  // everything that changes the running sum
};

// Lengths and batch size from the model, checked against the run's options.
void plan_lengths(StatsPlan& plan, const KeyStatisticsRun& run, const LoadedModel& loaded, const KeySource& source) {
  plan.d_ff = source.key_size();
  if (run.layer < 0 || run.layer >= source.layers())
    throw InputError("--layer " + std::to_string(run.layer) + ": out of range for " + loaded.model_path + " (" +
                     std::to_string(source.layers()) + (loaded.seq2seq ? " encoder layers)" : " layers)"));
  // CPU: one text per pass, padding to the longest text costs more than batching saves.
  plan.batch_size = run.batch_size > 0 ? run.batch_size : (run.device == "cuda" ? 16 : 1);
  // Room for the token a T5 input ends with ("</s>").
  const int64_t appended = static_cast<int64_t>(source.model_input({}).size());
  const int64_t context = source.context_length() - appended;
  plan.max_length = run.max_length > 0 ? run.max_length : context;
  if (plan.max_length > context && !loaded.seq2seq)
    throw InputError("--max-length " + std::to_string(plan.max_length) + ": more than the model's context of " +
                     std::to_string(context) + " tokens");
}

StatsPlan plan_run(const KeyStatisticsRun& run, const LoadedModel& loaded, const KeySource& source) {
  StatsPlan plan;
  plan_lengths(plan, run, loaded, source);
  nlohmann::json corpus_fingerprint = nlohmann::json::array();
  for (const auto& file : run.corpus) {
    std::vector<std::string> file_texts = read_texts(file);
    corpus_fingerprint.push_back({{"path", absolute_path(file)}, {"sha256", sha256_file(file)}});
    plan.texts.insert(plan.texts.end(), std::make_move_iterator(file_texts.begin()),
                      std::make_move_iterator(file_texts.end()));
  }
  plan.total = static_cast<int64_t>(plan.texts.size());
  if (run.samples > 0 && run.samples < plan.total) plan.total = run.samples;
  if (run.samples > plan.total)
    std::cerr << "stats: the corpus has only " << plan.total << " texts (--samples " << run.samples << "); using all\n";
  // A checkpoint resumes only under the same values and the same model and tokenizer files (by content).
  plan.fingerprint = {{"inputs", input_fingerprint({{"model", loaded.model_path}, {"tokenizer", loaded.tokenizer_path}})},
                      {"model", absolute_path(loaded.model_path)},
                      {"tokenizer", absolute_path(loaded.tokenizer_path)},
                      {"add_bos", loaded.add_bos},
                      {"layer", run.layer},
                      {"corpus", corpus_fingerprint},
                      {"texts", plan.total},
                      {"max_length", plan.max_length},
                      {"batch_size", plan.batch_size},
                      {"device", run.device},
                      {"compute_dtype", run.compute_dtype}};
  return plan;
}

// Texts [begin, end) encoded and cut at max_length.
std::vector<std::vector<int64_t>> encode_batch(const LoadedModel& loaded, const StatsPlan& plan, int64_t begin,
                                               int64_t end) {
  std::vector<std::vector<int64_t>> batch;
  for (int64_t i = begin; i < end; ++i) {
    std::vector<int64_t> ids = loaded.encode(plan.texts[i]);
    if (static_cast<int64_t>(ids.size()) > plan.max_length) ids.resize(plan.max_length);
    batch.push_back(std::move(ids));
  }
  return batch;
}

// The batches from where the collector stands to the end, or to a stop (checkpoint written, exit
// status returned); 0 when every text is in.
int collect_batches(SecondMomentCollector& collector, const KeyStatisticsRun& run, const StatsPlan& plan,
                    const LoadedModel& loaded, const KeySource& source, ResumableRun& guard, ProgressReporter& progress,
                    int64_t& tokens_this_run) {
  const fs::path partial = checkpoint_path_for(run.out);
  int64_t last_checkpoint = collector.texts_done();
  auto token_rate = [&] {
    const double elapsed = progress.elapsed();
    return std::to_string(tokens_this_run) + " tokens, " +
           std::to_string(static_cast<int64_t>(elapsed > 0 ? tokens_this_run / elapsed : 0)) + " tokens/s";
  };
  while (collector.texts_done() < plan.total) {
    // Batches always start at multiples of batch_size, resumed or not: the same sums in the same order.
    const int64_t begin = collector.texts_done(), end = std::min(plan.total, begin + plan.batch_size);
    const at::Tensor keys = rewrite_keys_of_all_tokens(source, encode_batch(loaded, plan, begin, end), run.layer);
    collector.add_keys(keys);  // [N, F]
    collector.add_texts_done(end - begin);
    tokens_this_run += keys.size(0);

    const bool finished = collector.texts_done() >= plan.total;
    const bool stop = guard.stop_requested(collector.texts_done(), run.stop_after_texts);
    if (!finished && (stop || collector.texts_done() - last_checkpoint >= run.checkpoint_every)) {
      collector.save_checkpoint(partial, plan.fingerprint);
      last_checkpoint = collector.texts_done();
    }
    progress.update(collector.texts_done(), token_rate());
    if (stop && !finished) {
      progress.finish(token_rate());
      std::cerr << "stats: stopped by " << guard.stop_cause("--stop-after-texts") << " after "
                << collector.texts_done() << " of " << plan.total << " texts; checkpoint written to "
                << partial.string() << "; run the same command again to resume\n";
      return guard.stop_exit_code(kStatsInterruptedExit);
    }
  }
  progress.finish(token_rate());
  return 0;
}

}  // namespace

int collect_key_statistics(const KeyStatisticsRun& run) {
  if (run.corpus.empty()) throw InputError("--corpus: give at least one text file");
  if (run.storage_dtype != "float32" && run.storage_dtype != "float64")
    throw InputError("--dtype \"" + run.storage_dtype + "\": expected float32 or float64");
  const at::ScalarType stored_dtype = run.storage_dtype == "float64" ? at::kDouble : at::kFloat;
  // One run per output at a time; taken first, so that a second run is refused before any work.
  const fs::path& out = run.out;
  ResumableRun guard(out.string() + ".lock", "statistics output " + out.string(),
                     out.has_parent_path() ? out.parent_path() : fs::path("."));
  // T5 folders load as encoder-decoder models: C of the encoder's MLP keys.
  LoadedModel loaded = load_key_model(run.model, run.tokenizer, run.add_bos, run.device, run.compute_dtype);
  const std::unique_ptr<KeySource> source = make_key_source(loaded);
  const StatsPlan plan = plan_run(run, loaded, *source);
  const fs::path partial = checkpoint_path_for(out);
  const bool resuming = fs::exists(partial);
  SecondMomentCollector collector = resuming
                                        ? SecondMomentCollector::restore(partial, plan.fingerprint, plan.d_ff, source->device())
                                        : SecondMomentCollector(plan.d_ff, source->device());
  if (collector.texts_done() > plan.total ||
      (collector.texts_done() % plan.batch_size != 0 && collector.texts_done() != plan.total))
    fail_input(partial.string(), "texts_done " + std::to_string(collector.texts_done()) +
                                     " is not a batch boundary of this run; delete it to start over");

  guard.watch_signals();  // before the header line: tests wait for it before signalling
  std::cerr << "stats: " << loaded.model_path << " layer " << run.layer << " (" << source->rewrite_weight_name(run.layer)
            << " input, F = " << plan.d_ff << "), " << plan.total << " texts of at most " << plan.max_length
            << " tokens, batch " << plan.batch_size << " -> " << out.string() << "\n";
  if (resuming)
    std::cerr << "stats: resuming from " << partial.string() << " at text " << collector.texts_done() << " ("
              << collector.count() << " tokens so far)\n";
  ProgressReporter progress("stats", plan.total, "texts");
  progress.start_at(collector.texts_done());
  int64_t tokens_this_run = 0;
  if (const int stopped = collect_batches(collector, run, plan, loaded, *source, guard, progress, tokens_this_run))
    return stopped;
  if (collector.count() == 0) throw InputError("--corpus: the texts encode to no tokens; nothing to collect");
  collector.write_second_moment(out, stored_dtype);
  remove_checkpoint_files(out, partial);
  const double elapsed = progress.elapsed();
  std::cerr << "stats: wrote " << out.string() << " (mom2.mom2 " << plan.d_ff << "x" << plan.d_ff << " "
            << run.storage_dtype << ", count " << collector.count() << " tokens, sample_size " << collector.texts_done()
            << " texts) in " << short_duration(elapsed) << ", "
            << static_cast<int64_t>(elapsed > 0 ? tokens_this_run / elapsed : 0) << " tokens/s\n";
  return 0;
}

}  // namespace rc
