#include "rome_collapse/analysis/key_analysis.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include <ATen/ATen.h>
#include <Eigen/Dense>

#include "rome_collapse/io/npz.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/progress.h"

namespace rc {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

at::Tensor cpu_double(const at::Tensor& t) { return t.detach().to(at::kCPU).to(at::kDouble).contiguous(); }

double distance(const at::Tensor& a, const at::Tensor& b) { return (a - b).norm().item<double>(); }
double cosine(const at::Tensor& a, const at::Tensor& b) { return at::cosine_similarity(a, b, 0).item<double>(); }
double fraction_closed(double new_distance, double old_distance) {
  return old_distance > 0 ? 1.0 - new_distance / old_distance : kNaN;
}

nlohmann::json number(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); }

// {n, mean, median, min, max} over the finite values.
nlohmann::json describe(std::vector<double> values) {
  values.erase(std::remove_if(values.begin(), values.end(), [](double v) { return !std::isfinite(v); }), values.end());
  if (values.empty()) return {{"n", 0}, {"mean", nullptr}, {"median", nullptr}, {"min", nullptr}, {"max", nullptr}};
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  const size_t n = values.size();
  const double median = n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
  return {{"n", n}, {"mean", sum / n}, {"median", median}, {"min", values.front()}, {"max", values.back()}};
}

std::vector<double> to_vector(const at::Tensor& tensor) {
  at::Tensor flat = cpu_double(tensor).reshape(-1);
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

CloudStats cloud_stats(const KeySet& keys) {
  const at::Tensor k_u = cpu_double(keys.unprefixed_key), k_bar = cpu_double(keys.prefixed_key_mean);
  const at::Tensor all = cpu_double(keys.prefixed_keys);
  // The cloud is the prefixed templates T[1..]; with a single template it is T[0] alone.
  const at::Tensor cloud = all.size(0) > 1 ? all.slice(0, 1) : all;
  CloudStats s;
  s.cos_unprefixed_prefixed = cosine(k_u, k_bar);
  s.unprefixed_key_norm = k_u.norm().item<double>();
  s.prefixed_key_norm = k_bar.norm().item<double>();
  s.cloud_mean_key_norm = cloud.norm(2, {1}).mean().item<double>();
  s.cloud_mean_cos = at::cosine_similarity(cloud, k_bar.unsqueeze(0), 1).mean().item<double>();
  s.unprefixed_distance = distance(k_u, k_bar);
  const at::Tensor cloud_distances = (cloud - k_bar.unsqueeze(0)).norm(2, {1});
  s.cloud_mean_distance = cloud_distances.mean().item<double>();
  s.relative_distance = s.cloud_mean_distance > 0 ? s.unprefixed_distance / s.cloud_mean_distance : kNaN;
  s.cloud_share_closer = (cloud_distances < s.unprefixed_distance).to(at::kDouble).mean().item<double>();
  return s;
}

// A template's prefix text ("The company. {}" -> "The company.") as token ids without BOS; the
// trailing space is dropped so that the subject's tokens stay those of the bare prompt.
std::vector<int64_t> template_prefix_ids(const Tokenizer& tokenizer, const std::string& context) {
  std::string prefix = context.substr(0, context.find("{}"));
  while (!prefix.empty() && std::isspace(static_cast<unsigned char>(prefix.back()))) prefix.pop_back();
  if (prefix.empty()) return {};
  return tokenizer.encode(prefix, false);
}

}  // namespace

at::Tensor Pca::project(const at::Tensor& points) const {
  return at::matmul(cpu_double(points) - mean, components.t());
}

Pca fit_pca(const at::Tensor& points, int64_t components) {
  const at::Tensor x = cpu_double(points);
  if (x.dim() != 2 || x.size(0) < 2) throw InputError("PCA needs at least two key vectors");
  const int64_t n = x.size(0), f = x.size(1);
  Pca pca;
  pca.mean = x.mean(0);
  const at::Tensor centered = (x - pca.mean).contiguous();
  // Row-major map of the centered points.
  using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const RowMatrix> X(centered.data_ptr<double>(), n, f);
  const bool dual = f > 2048 && f > n;  // the Gram matrix has the same non-zero spectrum
  Eigen::MatrixXd matrix = dual ? Eigen::MatrixXd(X * X.transpose() / double(n - 1))
                                : Eigen::MatrixXd(X.transpose() * X / double(n - 1));
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(matrix);
  if (solver.info() != Eigen::Success) throw NumericError("PCA: the eigen-decomposition did not converge");
  const double total = matrix.trace();
  const int64_t dims = matrix.rows();
  const int64_t count = std::min<int64_t>(components, dims);
  pca.components = at::zeros({count, f}, at::kDouble);
  for (int64_t c = 0; c < count; ++c) {
    const int64_t column = dims - 1 - c;  // eigenvalues ascend
    Eigen::VectorXd direction = dual ? Eigen::VectorXd(X.transpose() * solver.eigenvectors().col(column))
                                     : Eigen::VectorXd(solver.eigenvectors().col(column));
    const double norm = direction.norm();
    if (norm > 0) direction /= norm;
    Eigen::Index largest;
    direction.cwiseAbs().maxCoeff(&largest);
    if (direction[largest] < 0) direction = -direction;
    for (int64_t j = 0; j < f; ++j) pca.components[c][j] = direction[j];
    const double variance = std::max(0.0, solver.eigenvalues()[column]);
    pca.explained_variance.push_back(variance);
    pca.explained_variance_ratio.push_back(total > 0 ? variance / total : kNaN);
  }
  return pca;
}

namespace {

// Step 1: every request's keys over all templates, C⁻¹k̄ and where kᵘ lies in the prefixed cloud.
void add_request_keys(const KeySource& source, const LoadedModel& loaded, const EditConfig& config,
                      const RequestSet& requests, const KeyRunContext& context, const KeyAnalysisOptions& options,
                      KeyAnalysis& analysis) {
  int64_t passes = 0;
  std::vector<KeySet> key_sets = compute_keys_batched(source, *loaded.tokenizer, loaded.add_bos, requests.requests,
                                                      context.templates, config.hparams.layer, 0,
                                                      options.max_batch_tokens, &passes, options.progress);
  analysis.forward_passes += passes;
  const SecondMoment* moment = context.second_moment ? &*context.second_moment : nullptr;
  for (size_t i = 0; i < requests.requests.size(); ++i) {
    RequestKeys r;
    static_cast<RequestIdentity&>(r) = identify_request(loaded, requests, i);
    r.keys = key_sets[i];
    const at::Tensor k_bar = cpu_double(r.keys.prefixed_key_mean);
    r.left_direction = moment ? cpu_double(solve_second_moment(*moment, k_bar, config.hparams.mom2_ridge)) : k_bar;
    r.stats = cloud_stats(r.keys);
    r.template_token_fraction_closed = kNaN;
    analysis.requests.push_back(std::move(r));
  }
}

// A template's joint tokenisation of a subject-first prompt, kept when it splits at the prefix
// boundary (its first P tokens, after BOS, are the prefix text's own).
struct TemplatedPrompt {
  int64_t template_index;
  std::vector<int64_t> ids;
  int64_t subject_index;
};

// What the position experiment feeds the model, tokenised once for every k.
struct PositionInputs {
  std::vector<size_t> first_indices;        // the subject-first requests' indices in the analysis
  std::vector<EditRequest> first_requests;  // those requests
  std::vector<std::vector<int64_t>> prefix_ids;  // per template: its prefix text's ids (no BOS)
  std::vector<std::vector<int64_t>> bare_ids;    // per subject-first request: the bare prompt's ids
  std::vector<int64_t> bos_count;                // ... and whether they start with BOS (0/1)
  std::vector<std::vector<TemplatedPrompt>> templated;
};

PositionInputs position_inputs(const LoadedModel& loaded, const RequestSet& requests,
                               const std::vector<std::string>& templates, const KeyAnalysis& analysis) {
  const Tokenizer& tokenizer = *loaded.tokenizer;
  PositionInputs in;
  for (size_t i = 0; i < analysis.requests.size(); ++i)
    if (analysis.requests[i].subject_first) {
      in.first_indices.push_back(i);
      in.first_requests.push_back(requests.requests[i]);
    }
  for (const std::string& context_template : templates)
    in.prefix_ids.push_back(template_prefix_ids(tokenizer, context_template));
  const size_t n = in.first_requests.size();
  in.bare_ids.resize(n);
  in.bos_count.resize(n);
  in.templated.resize(n);
  for (size_t q = 0; q < n; ++q) {
    const EditRequest& request = in.first_requests[q];
    in.bare_ids[q] = tokenizer.encode(fill_placeholder(request.prompt, request.subject), loaded.add_bos);
    const std::vector<int64_t>& bare = in.bare_ids[q];
    in.bos_count[q] = loaded.add_bos && tokenizer.bos_id() && !bare.empty() && bare[0] == *tokenizer.bos_id() ? 1 : 0;
    for (size_t t = 1; t < templates.size(); ++t) {
      const std::string with_placeholder = fill_placeholder(templates[t], request.prompt);
      std::vector<int64_t> ids = tokenizer.encode(fill_placeholder(with_placeholder, request.subject), loaded.add_bos);
      const auto& prefix = in.prefix_ids[t];
      const int64_t b = in.bos_count[q];
      if (prefix.empty() || ids.size() < prefix.size() + b + 1 || !std::equal(prefix.begin(), prefix.end(), ids.begin() + b))
        continue;
      in.templated[q].push_back({static_cast<int64_t>(t), std::move(ids),
                                 subject_last_index(tokenizer, loaded.add_bos, with_placeholder, request.subject)});
    }
  }
  return in;
}

// The experiment's prompts through the model: token identity, then per k the shifted and prefixed rows.
int64_t position_prompt_count(const PositionInputs& in, const std::vector<int64_t>& prefix_tokens) {
  int64_t count = 0;
  for (const auto& rows : in.templated) count += rows.empty() ? 0 : 1;
  for (int64_t k : prefix_tokens) {
    count += static_cast<int64_t>(in.first_requests.size());
    for (size_t q = 0; q < in.first_requests.size(); ++q) {
      for (size_t t = 1; t < in.prefix_ids.size(); ++t) count += static_cast<int64_t>(in.prefix_ids[t].size()) >= k ? 1 : 0;
      for (const TemplatedPrompt& row : in.templated[q])
        count += static_cast<int64_t>(in.prefix_ids[row.template_index].size()) >= k ? 1 : 0;
    }
  }
  return count;
}

// A templated prompt keeping the last k of its P prefix tokens (BOS stays).
KeyRow cut_templated(const PositionInputs& in, size_t q, const TemplatedPrompt& row, int64_t k) {
  const int64_t b = in.bos_count[q], p = static_cast<int64_t>(in.prefix_ids[row.template_index].size());
  KeyRow out;
  out.ids.assign(row.ids.begin(), row.ids.begin() + b);
  out.ids.insert(out.ids.end(), row.ids.begin() + b + (p - k), row.ids.end());
  out.position = row.subject_index - (p - k);
  return out;
}

// The bare prompt's ids with the last k tokens of template t's prefix text before them (BOS stays first).
KeyRow real_prefix_row(const PositionInputs& in, size_t q, size_t t, int64_t k, int64_t subject_last_index) {
  const std::vector<int64_t>& bare = in.bare_ids[q];
  const int64_t b = in.bos_count[q];
  KeyRow row;
  row.ids.assign(bare.begin(), bare.begin() + b);
  row.ids.insert(row.ids.end(), in.prefix_ids[t].end() - k, in.prefix_ids[t].end());
  row.ids.insert(row.ids.end(), bare.begin() + b, bare.end());
  row.position = subject_last_index + k;
  return row;
}

// Step 2: token identity alone, the templates' subject tokens at the first position without context.
void probe_template_tokens(const KeySource& source, const PositionInputs& in, int64_t layer,
                           const KeyAnalysisOptions& options, KeyAnalysis& analysis) {
  std::vector<KeyRow> rows;
  std::vector<size_t> owner;
  for (size_t q = 0; q < in.first_requests.size(); ++q)
    if (!in.templated[q].empty()) {
      rows.push_back(cut_templated(in, q, in.templated[q][0], 0));
      owner.push_back(q);
    }
  if (rows.empty()) return;
  CollectedKeys collected = collect_keys(source, rows, layer, 0, options.max_batch_tokens, options.progress);
  analysis.forward_passes += collected.forward_passes;
  for (size_t row = 0; row < rows.size(); ++row) {
    RequestKeys& r = analysis.requests[in.first_indices[owner[row]]];
    r.template_token_key = cpu_double(collected.keys[static_cast<int64_t>(row)]);
    r.template_token_fraction_closed =
        fraction_closed(distance(r.template_token_key, cpu_double(r.keys.prefixed_key_mean)), r.stats.unprefixed_distance);
  }
}

// The rows of both prefix arms for one k, each with its request, template and arm
// (0: real_prefix, 1: template_prefix).
struct PrefixRows {
  struct Owner {
    size_t request;
    int64_t template_index;
    int arm;
  };
  std::vector<KeyRow> rows;
  std::vector<Owner> owners;
};

PrefixRows prefix_rows(const PositionInputs& in, const KeyAnalysis& analysis, int64_t k) {
  PrefixRows out;
  for (size_t q = 0; q < in.first_requests.size(); ++q) {
    const int64_t index = analysis.requests[in.first_indices[q]].subject_last_index;
    for (size_t t = 1; t < in.prefix_ids.size(); ++t) {
      if (static_cast<int64_t>(in.prefix_ids[t].size()) < k) continue;
      out.rows.push_back(real_prefix_row(in, q, t, k, index));
      out.owners.push_back({q, static_cast<int64_t>(t), 0});
    }
    for (const TemplatedPrompt& row : in.templated[q]) {
      if (static_cast<int64_t>(in.prefix_ids[row.template_index].size()) < k) continue;
      out.rows.push_back(cut_templated(in, q, row, k));
      out.owners.push_back({q, row.template_index, 1});
    }
  }
  return out;
}

// One arm's keys for one request, averaged into its probe fields (NaN when no template fits).
struct ArmSummary {
  std::vector<at::Tensor> keys;
  std::vector<int64_t> templates;
  double distance = 0, fraction = 0, cos = 0;

  void add(const at::Tensor& key, int64_t template_index, const at::Tensor& k_bar, double base) {
    const double d = rc::distance(key, k_bar);
    distance += d;
    fraction += fraction_closed(d, base);
    cos += cosine(key, k_bar);
    keys.push_back(key);
    templates.push_back(template_index);
  }
  void write(int64_t features, at::Tensor& out_keys, std::vector<int64_t>& out_templates, double& out_distance,
             double& out_fraction, double& out_cos) const {
    const double m = static_cast<double>(keys.size());
    out_keys = keys.empty() ? at::zeros({0, features}, at::kDouble) : at::stack(keys, 0);
    out_templates = templates;
    out_distance = keys.empty() ? kNaN : distance / m;
    out_fraction = keys.empty() ? kNaN : fraction / m;
    out_cos = keys.empty() ? kNaN : cos / m;
  }
};

// One request's probe for one k from the shifted key and its rows among `rows`' keys.
void fill_probe(RequestKeys& r, size_t q, size_t p, int64_t k, const at::Tensor& shifted_key, const PrefixRows& rows,
                const at::Tensor& prefix_keys) {
  const at::Tensor k_bar = cpu_double(r.keys.prefixed_key_mean);
  const double base = r.stats.unprefixed_distance;
  PositionProbe& probe = r.probes[p];
  probe.prefix_tokens = k;
  probe.shifted_key = cpu_double(shifted_key);
  probe.shifted_distance = distance(probe.shifted_key, k_bar);
  probe.shifted_fraction_closed = fraction_closed(probe.shifted_distance, base);
  probe.shifted_cos = cosine(probe.shifted_key, k_bar);
  ArmSummary arms[2];
  for (size_t row = 0; row < rows.owners.size(); ++row)
    if (rows.owners[row].request == q)
      arms[rows.owners[row].arm].add(prefix_keys[static_cast<int64_t>(row)], rows.owners[row].template_index, k_bar, base);
  arms[0].write(k_bar.size(0), probe.real_prefix_keys, probe.real_prefix_templates, probe.real_prefix_distance,
                probe.real_prefix_fraction_closed, probe.real_prefix_cos);
  arms[1].write(k_bar.size(0), probe.template_prefix_keys, probe.template_prefix_templates,
                probe.template_prefix_distance, probe.template_prefix_fraction_closed, probe.template_prefix_cos);
}

// Step 3, per k: one batched pass for the shifted arm (position only) and one for both prefix arms
// (position and context).
void probe_prefix_tokens(const KeySource& source, const LoadedModel& loaded, const PositionInputs& in, int64_t layer,
                         size_t p, int64_t k, const KeyAnalysisOptions& options, KeyAnalysis& analysis) {
  int64_t passes = 0;
  std::vector<KeySet> shifted = compute_keys_batched(source, *loaded.tokenizer, loaded.add_bos, in.first_requests, {"{}"},
                                                     layer, k, options.max_batch_tokens, &passes, options.progress);
  analysis.forward_passes += passes;
  const PrefixRows rows = prefix_rows(in, analysis, k);
  at::Tensor prefix_keys;
  if (!rows.rows.empty()) {
    CollectedKeys collected = collect_keys(source, rows.rows, layer, 0, options.max_batch_tokens, options.progress);
    analysis.forward_passes += collected.forward_passes;
    prefix_keys = cpu_double(collected.keys);
  }
  for (size_t q = 0; q < in.first_requests.size(); ++q)
    fill_probe(analysis.requests[in.first_indices[q]], q, p, k, shifted[q].unprefixed_key, rows, prefix_keys);
}

// Step 4: PCA of the prefixed clouds of every request (T[1..]; every template if there is only one).
void fit_cloud_pca(KeyAnalysis& analysis) {
  std::vector<at::Tensor> cloud;
  for (const RequestKeys& r : analysis.requests) {
    const at::Tensor all = cpu_double(r.keys.prefixed_keys);
    cloud.push_back(all.size(0) > 1 ? all.slice(0, 1) : all);
  }
  const at::Tensor cloud_points = at::cat(cloud, 0);
  if (cloud_points.size(0) >= 2) analysis.pca = fit_pca(cloud_points, 2);
}

}  // namespace

KeyAnalysis analyze_keys(const LoadedModel& loaded, const EditConfig& config, const RequestSet& requests,
                         const KeyRunContext& context, const KeyAnalysisOptions& options) {
  check_subject_boundaries(loaded, requests);
  const auto start = std::chrono::steady_clock::now();
  const std::unique_ptr<KeySource> source = make_key_source(loaded);
  const int64_t layer = config.hparams.layer;
  KeyAnalysis analysis;
  analysis.templates = context.templates;
  analysis.prefix_tokens = options.prefix_tokens;
  ProgressReporter* progress = options.progress;
  if (progress) progress->set_total(static_cast<int64_t>(requests.requests.size() * context.templates.size()));
  add_request_keys(*source, loaded, config, requests, context, options, analysis);

  // The first-token experiment, on the subject-first requests only.
  const PositionInputs inputs = position_inputs(loaded, requests, context.templates, analysis);
  for (size_t i : inputs.first_indices) analysis.requests[i].probes.resize(options.prefix_tokens.size());
  if (progress) progress->set_total(progress->total() + position_prompt_count(inputs, options.prefix_tokens));
  if (!inputs.first_requests.empty()) {
    probe_template_tokens(*source, inputs, layer, options, analysis);
    for (size_t p = 0; p < options.prefix_tokens.size(); ++p)
      probe_prefix_tokens(*source, loaded, inputs, layer, p, options.prefix_tokens[p], options, analysis);
  }
  if (progress) progress->finish();

  fit_cloud_pca(analysis);
  analysis.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return analysis;
}

namespace {

nlohmann::json arm_json(const std::vector<int64_t>& templates, double distance, double fraction, double cos) {
  if (templates.empty()) return nullptr;  // no template's prefix has k tokens
  return {{"templates", templates},
          {"distance", number(distance)},
          {"fraction_closed", number(fraction)},
          {"cos_to_prefixed_mean", number(cos)}};
}

nlohmann::json probe_json(const PositionProbe& probe) {
  return {{"prefix_tokens", probe.prefix_tokens},
          {"shifted_positions",
           {{"distance", number(probe.shifted_distance)},
            {"fraction_closed", number(probe.shifted_fraction_closed)},
            {"cos_to_prefixed_mean", number(probe.shifted_cos)}}},
          {"real_prefix", arm_json(probe.real_prefix_templates, probe.real_prefix_distance,
                                   probe.real_prefix_fraction_closed, probe.real_prefix_cos)},
          {"template_prefix", arm_json(probe.template_prefix_templates, probe.template_prefix_distance,
                                       probe.template_prefix_fraction_closed, probe.template_prefix_cos)}};
}

nlohmann::json request_row(const RequestKeys& r, size_t index) {
  nlohmann::json probes = nullptr;
  if (!r.probes.empty()) {
    probes = nlohmann::json::array();
    for (const PositionProbe& probe : r.probes) probes.push_back(probe_json(probe));
  }
  const CloudStats& s = r.stats;
  nlohmann::json row = identity_json(r, index);
  row.update({{"cos_unprefixed_prefixed", number(s.cos_unprefixed_prefixed)},
              {"unprefixed_key_norm", s.unprefixed_key_norm},
              {"prefixed_key_norm", s.prefixed_key_norm},
              {"cloud_mean_key_norm", s.cloud_mean_key_norm},
              {"cloud_mean_cos", number(s.cloud_mean_cos)},
              {"unprefixed_distance", s.unprefixed_distance},
              {"cloud_mean_distance", s.cloud_mean_distance},
              {"relative_distance", number(s.relative_distance)},
              {"cloud_share_closer", s.cloud_share_closer},
              {"template_tokens_fraction_closed",
               r.subject_first ? number(r.template_token_fraction_closed) : nlohmann::json()},
              {"position_experiment", probes}});
  return row;
}

// One request's keys in the PCA plane, for the figures.
nlohmann::json pca_row(const Pca& pca, const RequestKeys& r, size_t index) {
  auto point = [&](const at::Tensor& key) -> nlohmann::json { return to_vector(pca.project(key)); };
  const at::Tensor all = cpu_double(r.keys.prefixed_keys);
  nlohmann::json prefixed = nlohmann::json::array();
  const at::Tensor projected = pca.project(all.size(0) > 1 ? all.slice(0, 1) : all);
  for (int64_t j = 0; j < projected.size(0); ++j) prefixed.push_back(to_vector(projected[j]));
  nlohmann::json shifted = nlohmann::json::object(), real = nlohmann::json::object(), templated = nlohmann::json::object();
  for (const PositionProbe& probe : r.probes) {
    shifted[std::to_string(probe.prefix_tokens)] = point(probe.shifted_key);
    if (probe.real_prefix_keys.size(0) > 0) real[std::to_string(probe.prefix_tokens)] = point(probe.real_prefix_keys.mean(0));
    if (probe.template_prefix_keys.size(0) > 0)
      templated[std::to_string(probe.prefix_tokens)] = point(probe.template_prefix_keys.mean(0));
  }
  return {{"index", index},
          {"subject_first", r.subject_first},
          {"label", fill_placeholder(r.request.prompt, r.request.subject)},
          {"prefixed", prefixed},
          {"unprefixed", point(r.keys.unprefixed_key)},
          {"prefixed_mean", point(r.keys.prefixed_key_mean)},
          {"shifted", shifted},
          {"real_prefix_mean", real},
          {"template_prefix_mean", templated},
          {"template_tokens", r.template_token_key.defined() ? point(r.template_token_key) : nlohmann::json()}};
}

// The per-request numbers of one group (subject first or later), summarised by describe().
struct RequestGroup {
  std::vector<double> relative_distance, cos, norm_ratio, share_closer;
  std::vector<std::vector<double>> shifted, real, templated;  // per k (subject-first only)
  std::vector<double> template_tokens;

  explicit RequestGroup(size_t prefix_token_count)
      : shifted(prefix_token_count), real(prefix_token_count), templated(prefix_token_count) {}

  void add(const RequestKeys& r) {
    const CloudStats& s = r.stats;
    relative_distance.push_back(s.relative_distance);
    cos.push_back(s.cos_unprefixed_prefixed);
    norm_ratio.push_back(s.prefixed_key_norm > 0 ? s.unprefixed_key_norm / s.prefixed_key_norm : kNaN);
    share_closer.push_back(s.cloud_share_closer);
    if (r.subject_first) template_tokens.push_back(r.template_token_fraction_closed);
    for (size_t p = 0; p < r.probes.size(); ++p) {
      shifted[p].push_back(r.probes[p].shifted_fraction_closed);
      real[p].push_back(r.probes[p].real_prefix_fraction_closed);
      templated[p].push_back(r.probes[p].template_prefix_fraction_closed);
    }
  }

  nlohmann::json to_json(const std::vector<int64_t>& prefix_tokens, bool with_probes) const {
    nlohmann::json out = {{"requests", relative_distance.size()},
                          {"relative_distance", describe(relative_distance)},
                          {"cos_unprefixed_prefixed", describe(cos)},
                          {"unprefixed_to_prefixed_norm_ratio", describe(norm_ratio)},
                          {"cloud_share_closer", describe(share_closer)}};
    if (!with_probes) return out;
    nlohmann::json probes = nlohmann::json::array();
    for (size_t p = 0; p < prefix_tokens.size(); ++p)
      probes.push_back({{"prefix_tokens", prefix_tokens[p]},
                        {"shifted_positions_fraction_closed", describe(shifted[p])},
                        {"real_prefix_fraction_closed", describe(real[p])},
                        {"template_prefix_fraction_closed", describe(templated[p])}});
    out["position_experiment"] = probes;
    out["template_tokens_fraction_closed"] = describe(template_tokens);
    return out;
  }
};

}  // namespace

nlohmann::json to_json(const KeyAnalysis& analysis, const LoadedModel& loaded, const EditConfig& config,
                       const RequestSet& requests) {
  const bool has_pca = analysis.pca.components.defined();
  nlohmann::json rows = nlohmann::json::array(), pca_rows = nlohmann::json::array();
  RequestGroup first(analysis.prefix_tokens.size()), later(analysis.prefix_tokens.size());
  for (size_t i = 0; i < analysis.requests.size(); ++i) {
    const RequestKeys& r = analysis.requests[i];
    (r.subject_first ? first : later).add(r);
    rows.push_back(request_row(r, i));
    if (has_pca) pca_rows.push_back(pca_row(analysis.pca, r, i));
  }
  nlohmann::json out;
  out["schema_version"] = 1;
  out["command"] = "keys";
  out["layer"] = config.hparams.layer;
  out["prefix_tokens"] = analysis.prefix_tokens;
  out["requests"] = rows;
  out["summary"] = {{"subject_first", first.to_json(analysis.prefix_tokens, true)},
                    {"subject_later", later.to_json(analysis.prefix_tokens, false)},
                    {"skipped", requests.skipped.size()}};
  out["skipped_records"] = requests.skipped;
  if (has_pca)
    out["pca"] = {{"fit_on", "prefixed keys (templates 1..) of every request"},
                  {"method", "Eigen SelfAdjointEigenSolver on the covariance"},
                  {"explained_variance", analysis.pca.explained_variance},
                  {"explained_variance_ratio", analysis.pca.explained_variance_ratio},
                  {"requests", pca_rows}};
  else
    out["pca"] = nullptr;
  out["context_templates"] = analysis.templates;
  out["timings_s"] = {{"keys_and_analysis", analysis.seconds}, {"forward_passes", analysis.forward_passes}};
  out["provenance"] = key_run_provenance(loaded, config, requests);
  return out;
}

std::map<std::string, std::string> npz_members(const KeyAnalysis& analysis) {
  const int64_t r = static_cast<int64_t>(analysis.requests.size());
  const int64_t k = static_cast<int64_t>(analysis.prefix_tokens.size());
  if (r == 0) throw std::logic_error("npz_members: no requests");
  std::vector<at::Tensor> unprefixed, prefixed, means, left;
  std::vector<int64_t> first, index;
  const int64_t f = analysis.requests[0].keys.unprefixed_key.size(0);
  at::Tensor shifted = at::full({r, k, f}, kNaN, at::kFloat);
  at::Tensor real = at::full({r, k, f}, kNaN, at::kFloat);
  at::Tensor templated = at::full({r, k, f}, kNaN, at::kFloat);
  at::Tensor template_tokens = at::full({r, f}, kNaN, at::kFloat);
  for (int64_t i = 0; i < r; ++i) {
    const RequestKeys& q = analysis.requests[i];
    unprefixed.push_back(q.keys.unprefixed_key.to(at::kCPU).to(at::kFloat));
    prefixed.push_back(q.keys.prefixed_keys.to(at::kCPU).to(at::kFloat));
    means.push_back(q.keys.prefixed_key_mean.to(at::kCPU).to(at::kFloat));
    left.push_back(q.left_direction.to(at::kFloat));
    first.push_back(q.subject_first ? 1 : 0);
    index.push_back(q.subject_last_index);
    for (size_t p = 0; p < q.probes.size(); ++p) {
      shifted[i][static_cast<int64_t>(p)].copy_(q.probes[p].shifted_key);
      if (q.probes[p].real_prefix_keys.size(0) > 0)
        real[i][static_cast<int64_t>(p)].copy_(q.probes[p].real_prefix_keys.mean(0));
      if (q.probes[p].template_prefix_keys.size(0) > 0)
        templated[i][static_cast<int64_t>(p)].copy_(q.probes[p].template_prefix_keys.mean(0));
    }
    if (q.template_token_key.defined()) template_tokens[i].copy_(q.template_token_key);
  }
  std::map<std::string, std::string> members;
  members["unprefixed_keys"] = serialize_npy(at::stack(unprefixed, 0).contiguous());
  members["prefixed_keys"] = serialize_npy(at::stack(prefixed, 0).contiguous());
  members["prefixed_key_mean"] = serialize_npy(at::stack(means, 0).contiguous());
  members["c_inv_kbar"] = serialize_npy(at::stack(left, 0).contiguous());
  members["subject_first"] = serialize_npy(at::tensor(first, at::kLong).to(at::kBool));
  members["subject_last_index"] = serialize_npy(at::tensor(index, at::kLong));
  members["prefix_tokens"] = serialize_npy(at::tensor(analysis.prefix_tokens.empty() ? std::vector<int64_t>{}
                                                                                     : analysis.prefix_tokens,
                                                      at::kLong));
  members["shifted_keys"] = serialize_npy(shifted.contiguous());
  members["real_prefix_key_mean"] = serialize_npy(real.contiguous());
  members["template_prefix_key_mean"] = serialize_npy(templated.contiguous());
  members["template_token_keys"] = serialize_npy(template_tokens.contiguous());
  if (analysis.pca.components.defined()) {
    members["pca_mean"] = serialize_npy(analysis.pca.mean.contiguous());
    members["pca_components"] = serialize_npy(analysis.pca.components.contiguous());
  }
  members["context_templates"] = serialize_npy_string(nlohmann::json(analysis.templates).dump());
  return members;
}

std::string format_key_summary(const KeyAnalysis& analysis) {
  std::string text;
  char line[512];
  std::snprintf(line, sizeof line, "%4s  %-40s %5s %9s %8s %10s\n", "#", "request (subject)", "first", "rel.dist",
                "cos", "|ku|/|kbar|");
  text += line;
  for (size_t i = 0; i < analysis.requests.size(); ++i) {
    const RequestKeys& r = analysis.requests[i];
    const std::string label = table_label(r.request);
    std::snprintf(line, sizeof line, "%4zu  %-40s %5s %9.3f %8.3f %10.3f\n", i, label.c_str(),
                  r.subject_first ? "yes" : "no", r.stats.relative_distance, r.stats.cos_unprefixed_prefixed,
                  r.stats.unprefixed_key_norm / r.stats.prefixed_key_norm);
    text += line;
  }
  // Mean fraction of ‖kᵘ − k̄‖ closed per k, over subject-first requests.
  bool any = false;
  for (size_t p = 0; p < analysis.prefix_tokens.size(); ++p) {
    std::vector<double> shifted, real, templated;
    for (const RequestKeys& r : analysis.requests)
      if (p < r.probes.size()) {
        shifted.push_back(r.probes[p].shifted_fraction_closed);
        real.push_back(r.probes[p].real_prefix_fraction_closed);
        templated.push_back(r.probes[p].template_prefix_fraction_closed);
      }
    if (shifted.empty()) continue;
    if (!any) {
      text += "first-token experiment (subject-first requests): share of ||ku - kbar|| closed\n";
      std::snprintf(line, sizeof line, "  %4s %22s %22s %26s\n", "k", "positions shifted by k", "k real prefix tokens",
                    "k prefix tokens, templated");
      text += line;
      any = true;
    }
    auto mean = [](const std::vector<double>& v) {
      double s = 0;
      int n = 0;
      for (double x : v)
        if (std::isfinite(x)) s += x, ++n;
      return n ? s / n : kNaN;
    };
    std::snprintf(line, sizeof line, "  %4lld %22.3f %22.3f %26.3f\n", static_cast<long long>(analysis.prefix_tokens[p]),
                  mean(shifted), mean(real), mean(templated));
    text += line;
  }
  if (!any) text += "no subject-first requests: the first-token experiment was not run\n";
  double token_sum = 0;
  int token_n = 0;
  for (const RequestKeys& r : analysis.requests)
    if (r.subject_first && std::isfinite(r.template_token_fraction_closed))
      token_sum += r.template_token_fraction_closed, ++token_n;
  if (token_n > 0) {
    std::snprintf(line, sizeof line, "  the templates' subject tokens at the first position, no context: %.3f\n",
                  token_sum / token_n);
    text += line;
  }
  if (analysis.pca.components.defined() && analysis.pca.explained_variance_ratio.size() >= 2) {
    std::snprintf(line, sizeof line, "PCA of the prefixed keys: explained variance %.3f, %.3f\n",
                  analysis.pca.explained_variance_ratio[0], analysis.pca.explained_variance_ratio[1]);
    text += line;
  }
  return text;
}

}  // namespace rc
