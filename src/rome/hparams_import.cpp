#include "rome_collapse/rome/hparams_import.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/fields.h"
#include "rome_collapse/util/structured_file.h"

namespace rc {
namespace fs = std::filesystem;
namespace {

// Fields of ROME's hparams/ROME/*.json and EasyEdit's hparams/ROME/*.yaml beyond the native ones.
const std::vector<std::string> kModuleFields = {"rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp",
                                                "attn_module_tmp",    "ln_f_module",      "lm_head_module"};
const std::vector<std::string> kImportedFields = {
    "layers",       "fact_token",     "context_template_length_params", "mom2_dataset", "mom2_n_samples",
    "mom2_dtype",   "stats_dir",      "alg_name",                       "model_name",   "device",
    "model_parallel", "fp16",         "max_length",                     "batch_size"};

// Collects what cannot be honoured, to be reported in one message.
struct Problems {
  std::vector<std::string> items;
  void add(const std::string& field, const std::string& why) { items.push_back(field + ": " + why); }
};

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

std::string format_layer(const std::string& pattern, int64_t layer) {
  std::string out = pattern;
  const size_t at = out.find("{}");
  if (at != std::string::npos) out.replace(at, 2, std::to_string(layer));
  return out;
}

void read_layers(const nlohmann::json& value, HparamsSettings& s, nlohmann::json& native, Problems& problems) {
  if (!value.is_array() || value.empty() || !std::all_of(value.begin(), value.end(), [](const auto& v) {
        return v.is_number_integer();
      })) {
    problems.add("layers", "expected a list of layer numbers, e.g. [17]");
  } else if (value.size() > 1) {
    problems.add("layers", value.dump() + " names " + std::to_string(value.size()) +
                               " layers; ROME edits one (give a one-element list; several layers are MEMIT's)");
  } else if (native.contains("layer") && native["layer"] != value[0]) {
    problems.add("layers", value.dump() + " disagrees with \"layer\": " + native["layer"].dump());
  } else {
    native["layer"] = value[0];
    s.layer_fields.push_back("layers");
  }
}

void read_template_lengths(const nlohmann::json& value, HparamsSettings& s, Problems& problems) {
  std::vector<std::pair<int64_t, int64_t>> lengths;
  bool ok = value.is_array() && !value.empty();
  for (const auto& pair : ok ? value : nlohmann::json::array()) {
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_integer() || !pair[1].is_number_integer() ||
        pair[0].get<int64_t>() < 1 || pair[1].get<int64_t>() < 1) {
      ok = false;
      break;
    }
    lengths.emplace_back(pair[0].get<int64_t>(), pair[1].get<int64_t>());
  }
  if (!ok) problems.add("context_template_length_params", "expected [[length, samples], ...] of positive integers");
  else s.template_lengths = lengths;
}

void read_string(const nlohmann::json& value, const std::string& key, std::string& out, Problems& problems) {
  if (value.is_string()) out = value.get<std::string>();
  else problems.add(key, "expected a string");
}

// One imported field; native fields are collected into `native` for read_fields.
void read_imported(const std::string& key, const nlohmann::json& value, HparamsSettings& s, nlohmann::json& native,
                   Problems& problems, const fs::path& base_dir) {
  std::string text;
  if (key == "layers") {
    read_layers(value, s, native, problems);
  } else if (key == "fact_token") {
    if (!value.is_string() || value.get<std::string>() != "subject_last")
      problems.add(key, value.dump() + ": only \"subject_last\" is supported (the key is the subject's last token)");
  } else if (key == "context_template_length_params") {
    read_template_lengths(value, s, problems);
  } else if (std::find(kModuleFields.begin(), kModuleFields.end(), key) != kModuleFields.end()) {
    read_string(value, key, text, problems);
    if (!text.empty()) s.module_names[key] = text;
  } else if (key == "mom2_dataset" || key == "mom2_dtype") {
    read_string(value, key, text, problems);
    s.statistics[key] = text;
  } else if (key == "mom2_n_samples") {
    if (value.is_number_integer() && value.get<int64_t>() > 0) s.statistics[key] = value;
    else problems.add(key, "expected a positive integer");
  } else if (key == "stats_dir") {
    read_string(value, key, text, problems);
    fs::path dir(text);
    s.statistics[key] = (dir.is_absolute() ? dir : (base_dir / dir).lexically_normal()).string();
  } else if (key == "alg_name") {
    if (!value.is_string() || lower(value.get<std::string>()) != "rome")
      problems.add(key, value.dump() + ": this tool runs ROME (and C-ROME through \"method\"), not other algorithms");
  } else if (key == "model_name") {
    read_string(value, key, s.model_name, problems);
  } else if (key == "device") {
    s.unused[key] = "the config's \"device\" (or --device) chooses cpu or cuda";
  } else if (key == "model_parallel" || key == "fp16") {
    if (value != false)
      problems.add(key, value.dump() + ": not supported" +
                            std::string(key == "fp16" ? " (set \"dtype\": \"float16\" in the config instead)" : ""));
    else s.unused[key] = "false, the tool's behaviour";
  } else if (key == "max_length") {
    if (value.is_number_integer() && value.get<int64_t>() > 0) s.max_length = value.get<int64_t>();
    else problems.add(key, "expected a positive integer");
  } else if (key == "batch_size") {
    if (value != 1) problems.add(key, value.dump() + ": ROME edits one request at a time (batch_size 1)");
    else s.unused[key] = "1, the tool's behaviour";
  }
}

void finish_format(HparamsSettings& s, const nlohmann::json& object) {
  if (object.contains("alg_name") || object.contains("model_name")) s.format = "easyedit";
  else if (std::any_of(kImportedFields.begin(), kImportedFields.end(), [&](const auto& k) { return object.contains(k); }) ||
           std::any_of(kModuleFields.begin(), kModuleFields.end(), [&](const auto& k) { return object.contains(k); }))
    s.format = "rome";
}

}  // namespace

std::vector<std::string> known_hparams_fields() {
  std::vector<std::string> names = field_names(RomeHparams{});
  names.insert(names.end(), kImportedFields.begin(), kImportedFields.end());
  names.insert(names.end(), kModuleFields.begin(), kModuleFields.end());
  return names;
}

HparamsSettings parse_hparams(const nlohmann::json& value, const std::string& where, const fs::path& base_dir) {
  HparamsSettings s;
  nlohmann::json object = value;
  std::string context = where;
  fs::path file_dir = base_dir;
  if (value.is_string()) {
    fs::path path(value.get<std::string>());
    if (!path.is_absolute()) path = (base_dir / path).lexically_normal();
    s.file = path.string();
    object = read_json_or_yaml(path);
    context = s.file;
    file_dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  }
  if (!object.is_object()) throw InputError(context + ": expected an object of hyper-parameters");
  const std::vector<std::string> native_names = field_names(RomeHparams{});
  const std::vector<std::string> known = known_hparams_fields();
  nlohmann::json native = nlohmann::json::object();
  std::vector<std::string> unknown;
  Problems problems;
  for (const auto& item : object.items()) {
    const std::string& key = item.key();
    if (std::find(native_names.begin(), native_names.end(), key) != native_names.end()) {
      if (key == "layer") s.layer_fields.push_back("layer");
      if (!native.contains(key)) native[key] = item.value();
      else if (native[key] != item.value()) problems.add(key, "given twice with different values");
    } else if (std::find(known.begin(), known.end(), key) == known.end()) {
      unknown.push_back(key);
    }
  }
  for (const auto& item : object.items())
    if (std::find(native_names.begin(), native_names.end(), item.key()) == native_names.end())
      read_imported(item.key(), item.value(), s, native, problems, file_dir);
  if (!unknown.empty() || !problems.items.empty()) {
    std::string message = unknown.empty() ? context + ": " : unknown_fields_message(context, unknown, known);
    if (!problems.items.empty()) {
      message += std::string(unknown.empty() ? "" : "; ") + "fields this tool cannot honour: ";
      for (size_t i = 0; i < problems.items.size(); ++i) message += (i ? "; " : "") + problems.items[i];
    }
    throw InputError(message);
  }
  read_fields(s.hparams, native, context);
  s.v_loss_layer_given = native.contains("v_loss_layer");
  if (!s.hparams.stats.empty()) {
    fs::path stats(s.hparams.stats);
    s.hparams.stats = (stats.is_absolute() ? stats : (file_dir / stats).lexically_normal()).string();
  }
  if (!s.model_name.empty() && fs::path(s.model_name).is_relative() && fs::exists(file_dir / s.model_name))
    s.model_name = (file_dir / s.model_name).lexically_normal().string();
  finish_format(s, object);
  return s;
}

void resolve_statistics(HparamsSettings& s, const std::string& where) {
  if (!s.hparams.mom2_adjustment || !s.hparams.stats.empty()) return;
  const auto& st = s.statistics;
  const std::string dataset = st.value("mom2_dataset", std::string("wikipedia"));
  const std::string dtype = st.value("mom2_dtype", std::string("float32"));
  const int64_t samples = st.value("mom2_n_samples", int64_t{100000});
  std::string module = "<rewrite module>";
  if (s.module_names.count("rewrite_module_tmp")) module = format_layer(s.module_names.at("rewrite_module_tmp"), s.hparams.layer);
  // ROME's layer_stats cache: STATS_DIR/<model>/<dataset>_stats/<module>_<dtype>_mom2_<samples>.npz
  const std::string file_name = module + "_" + dtype + "_mom2_" + std::to_string(samples) + ".npz";
  std::vector<std::string> looked;
  if (st.contains("stats_dir") && !s.model_name.empty()) {
    std::string slashes_replaced = s.model_name;
    std::replace(slashes_replaced.begin(), slashes_replaced.end(), '/', '_');
    for (const std::string& model : {fs::path(s.model_name).filename().string(), slashes_replaced}) {
      const fs::path candidate = fs::path(st["stats_dir"].get<std::string>()) / model / (dataset + "_stats") / file_name;
      if (fs::is_regular_file(candidate)) {
        s.hparams.stats = candidate.string();
        return;
      }
      looked.push_back(candidate.string());
    }
  }
  std::string message =
      where + ": mom2_adjustment is true, so the edit needs the second moment C of layer " +
      std::to_string(s.hparams.layer) + "'s rewrite-module inputs. ROME computes it from " + std::to_string(samples) +
      " " + dataset + " texts (" + dtype + ") and caches it; this tool reads it from a file: set \"stats\" in the " +
      "hparams to a .npz in ROME's layout (such as ROME's own " + dataset + "_stats/" + file_name + "), or make one with " +
      "`rome-collapse stats --model MODEL --layer " + std::to_string(s.hparams.layer) + " --corpus TEXTS --samples " +
      std::to_string(samples) + " --storage-dtype " + dtype + " --out FILE`, or set mom2_adjustment to false";
  if (!looked.empty()) {
    message += " (looked for";
    for (const auto& path : looked) message += " " + path;
    message += ")";
  }
  throw InputError(message);
}

void check_module_names(const CausalLM& model, const std::map<std::string, std::string>& module_names, int64_t layer,
                        const std::string& where) {
  if (module_names.empty()) return;
  const std::string rewrite = model.rewrite_weight_name(layer);  // "...mlp.c_proj.weight"
  const std::string rewrite_module = rewrite.substr(0, rewrite.rfind('.'));
  const std::vector<std::string> weights = model.weight_names();
  auto has_weights_under = [&](const std::string& module) {
    return std::any_of(weights.begin(), weights.end(), [&](const std::string& w) { return w.rfind(module + ".", 0) == 0; });
  };
  std::vector<std::string> problems;
  for (const auto& [field, pattern] : module_names) {
    const bool per_layer = field.size() > 4 && field.compare(field.size() - 4, 4, "_tmp") == 0;
    if (per_layer && pattern.find("{}") == std::string::npos) {
      problems.push_back(field + " \"" + pattern + "\": has no \"{}\" for the layer number");
      continue;
    }
    const std::string name = format_layer(pattern, layer);
    std::string expected;
    if (field == "rewrite_module_tmp" && name != rewrite_module) expected = "\"" + rewrite_module + "\", the module this tool rewrites";
    else if ((field == "layer_module_tmp" || field == "mlp_module_tmp") && rewrite_module.rfind(name + ".", 0) != 0)
      expected = "a module that contains " + rewrite_module;
    else if ((field == "attn_module_tmp" || field == "ln_f_module") && !has_weights_under(name))
      expected = "a module of this model (no weight is named " + name + ".*)";
    else if (field == "lm_head_module" && name != "lm_head" && !has_weights_under(name))
      expected = "this model's output head (no weight is named " + name + ".*)";
    if (!expected.empty())
      problems.push_back(field + " \"" + pattern + "\" gives \"" + name + "\" at layer " + std::to_string(layer) +
                         ", expected " + expected);
  }
  if (problems.empty()) return;
  std::string message = where + ": module names do not match this " + to_string(model.config().arch) + " model: ";
  for (size_t i = 0; i < problems.size(); ++i) message += (i ? "; " : "") + problems[i];
  throw InputError(message);
}

}  // namespace rc
