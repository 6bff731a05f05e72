// `rome-collapse stats`: the second moment C of a layer's rewrite-module inputs over a corpus, in
// ROME's .npz layout, with resumable checkpoints (like llama.cpp's imatrix).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "rome_collapse/analysis/key_statistics.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/model/loaded_model.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/progress.h"
#include "rome_collapse/util/run_guard.h"

namespace rc::cli {
namespace {

// Exit status of a run stopped by --stop-after-texts after writing its checkpoint (as if by SIGINT);
// a real signal gives 128 + its number (130 SIGINT, 143 SIGTERM).
constexpr int kInterruptedExit = 130;

std::string absolute_path(const std::string& path) {
  if (path.empty() || path.rfind("builtin:", 0) == 0) return path;
  std::error_code error;
  auto canonical = std::filesystem::weakly_canonical(path, error);
  return error ? path : canonical.string();
}

// The checkpoint and any temporary file a killed run left while writing it or the output.
void remove_checkpoint_files(const std::filesystem::path& out, const std::filesystem::path& partial) {
  std::error_code ignored;
  std::filesystem::remove(partial, ignored);
  const std::filesystem::path dir = out.has_parent_path() ? out.parent_path() : std::filesystem::path(".");
  const std::string out_temp = out.filename().string() + ".tmp.", partial_temp = partial.filename().string() + ".tmp.";
  for (const auto& entry : std::filesystem::directory_iterator(dir, ignored)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(out_temp, 0) == 0 || name.rfind(partial_temp, 0) == 0) std::filesystem::remove(entry.path(), ignored);
  }
}

}  // namespace

int run_stats(const StatsArgs& args) {
  if (args.corpus.empty()) throw InputError("--corpus: give at least one text file");
  const at::ScalarType stored_dtype = args.dtype == "float64" ? at::kDouble : at::kFloat;
  if (args.dtype != "float32" && args.dtype != "float64")
    throw InputError("--dtype \"" + args.dtype + "\": expected float32 or float64");

  // One run per output at a time; taken first, so that a second run is refused before any work.
  const std::filesystem::path out = args.out;
  const RunLock lock(out.string() + ".lock", "statistics output " + out.string());
  remove_stale_temporaries(out.has_parent_path() ? out.parent_path() : std::filesystem::path("."));

  // T5 folders load as encoder-decoder models: C of the encoder's MLP keys.
  LoadedModel loaded = load_key_model(args.model.model, args.model.tokenizer, args.model.add_bos, args.model.device,
                                      args.model.dtype);
  const std::unique_ptr<KeySource> source = make_key_source(loaded);
  const int64_t d_ff = source->key_size();
  if (args.layer < 0 || args.layer >= source->layers())
    throw InputError("--layer " + std::to_string(args.layer) + ": out of range for " + loaded.model_path + " (" +
                     std::to_string(source->layers()) + (loaded.seq2seq ? " encoder layers)" : " layers)"));
  // CPU: one text per pass, padding to the longest text costs more than batching saves.
  const int64_t batch_size = args.batch_size > 0 ? args.batch_size : (args.model.device == "cuda" ? 16 : 1);
  // Room for the token a T5 input ends with ("</s>").
  const int64_t appended = static_cast<int64_t>(source->model_input({}).size());
  const int64_t context = source->context_length() - appended;
  const int64_t max_length = args.max_length > 0 ? args.max_length : context;
  if (max_length > context && !loaded.seq2seq)
    throw InputError("--max-length " + std::to_string(max_length) + ": more than the model's context of " +
                     std::to_string(context) + " tokens");

  std::vector<std::string> texts;
  nlohmann::json corpus_fingerprint = nlohmann::json::array();
  for (const auto& file : args.corpus) {
    std::vector<std::string> file_texts = read_texts(file);
    corpus_fingerprint.push_back({{"path", absolute_path(file)}, {"sha256", sha256_file(file)}});
    texts.insert(texts.end(), std::make_move_iterator(file_texts.begin()), std::make_move_iterator(file_texts.end()));
  }
  int64_t total = static_cast<int64_t>(texts.size());
  if (args.samples > 0 && args.samples < total) total = args.samples;
  if (args.samples > total)
    std::cerr << "stats: the corpus has only " << total << " texts (--samples " << args.samples << "); using all\n";

  // Everything that changes the running sum; a checkpoint resumes only under the same values and
  // the same model and tokenizer files (by content).
  const nlohmann::json fingerprint = {{"inputs", input_fingerprint({{"model", loaded.model_path},
                                                                    {"tokenizer", loaded.tokenizer_path}})},
                                      {"model", absolute_path(loaded.model_path)},
                                      {"tokenizer", absolute_path(loaded.tokenizer_path)},
                                      {"add_bos", loaded.add_bos},
                                      {"layer", args.layer},
                                      {"corpus", corpus_fingerprint},
                                      {"texts", total},
                                      {"max_length", max_length},
                                      {"batch_size", batch_size},
                                      {"device", args.model.device},
                                      {"compute_dtype", args.model.dtype}};
  const std::filesystem::path partial = checkpoint_path_for(out);
  const bool resuming = std::filesystem::exists(partial);
  SecondMomentCollector collector = resuming ? SecondMomentCollector::restore(partial, fingerprint, d_ff, source->device())
                                             : SecondMomentCollector(d_ff, source->device());
  if (collector.texts_done() > total || (collector.texts_done() % batch_size != 0 && collector.texts_done() != total))
    fail_input(partial.string(), "texts_done " + std::to_string(collector.texts_done()) +
                                     " is not a batch boundary of this run; delete it to start over");

  StopSignalScope signals;  // before the header line: tests wait for it before signalling
  std::cerr << "stats: " << loaded.model_path << " layer " << args.layer << " (" << source->rewrite_weight_name(args.layer)
            << " input, F = " << d_ff << "), " << total << " texts of at most " << max_length
            << " tokens, batch " << batch_size << " -> " << out.string() << "\n";
  if (resuming)
    std::cerr << "stats: resuming from " << partial.string() << " at text " << collector.texts_done() << " ("
              << collector.count() << " tokens so far)\n";

  int64_t tokens_this_run = 0, last_checkpoint = collector.texts_done();
  ProgressReporter progress("stats", total, "texts");
  progress.start_at(collector.texts_done());
  auto token_rate = [&] {
    const double elapsed = progress.elapsed();
    return std::to_string(tokens_this_run) + " tokens, " +
           std::to_string(static_cast<int64_t>(elapsed > 0 ? tokens_this_run / elapsed : 0)) + " tokens/s";
  };
  while (collector.texts_done() < total) {
    // Batches always start at multiples of batch_size, resumed or not: the same sums in the same order.
    const int64_t begin = collector.texts_done(), end = std::min(total, begin + batch_size);
    std::vector<std::vector<int64_t>> batch;
    for (int64_t i = begin; i < end; ++i) {
      std::vector<int64_t> ids = loaded.encode(texts[i]);
      if (static_cast<int64_t>(ids.size()) > max_length) ids.resize(max_length);
      batch.push_back(std::move(ids));
    }
    const at::Tensor keys = rewrite_keys_of_all_tokens(*source, batch, args.layer);  // [N, F]
    collector.add_keys(keys);
    collector.add_texts_done(end - begin);
    tokens_this_run += keys.size(0);

    const bool finished = collector.texts_done() >= total;
    const int signal = StopSignalScope::received();
    const bool stop = signal != 0 || (args.stop_after_texts > 0 && collector.texts_done() >= args.stop_after_texts);
    if (!finished && (stop || collector.texts_done() - last_checkpoint >= args.checkpoint_every)) {
      collector.save_checkpoint(partial, fingerprint);
      last_checkpoint = collector.texts_done();
    }
    progress.update(collector.texts_done(), token_rate());
    if (stop && !finished) {
      progress.finish(token_rate());
      const std::string why = signal != 0 ? StopSignalScope::name(signal) : "--stop-after-texts";
      std::cerr << "stats: stopped by " << why << " after " << collector.texts_done() << " of " << total
                << " texts; checkpoint written to " << partial.string()
                << "; run the same command again to resume\n";
      return signal != 0 ? 128 + signal : kInterruptedExit;
    }
  }
  progress.finish(token_rate());
  if (collector.count() == 0) throw InputError("--corpus: the texts encode to no tokens; nothing to collect");
  collector.write_second_moment(out, stored_dtype);
  remove_checkpoint_files(out, partial);
  const double elapsed = progress.elapsed();
  std::cerr << "stats: wrote " << out.string() << " (mom2.mom2 " << d_ff << "x" << d_ff << " " << args.dtype
            << ", count " << collector.count() << " tokens, sample_size " << collector.texts_done() << " texts) in "
            << short_duration(elapsed) << ", " << static_cast<int64_t>(elapsed > 0 ? tokens_this_run / elapsed : 0)
            << " tokens/s\n";
  return kOk;
}

}  // namespace rc::cli
