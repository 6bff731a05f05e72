#include "rome_collapse/io/dataset.h"

#include <set>

#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

using json = nlohmann::json;

// A dataset record's request that normalize_request refuses for any reason (even an oversized field)
// is unusable, not malformed: the file reads, and a run that selects the record reports why.
EditRequest usable_request(const EditRequest& request, const std::string& where) {
  try {
    return normalize_request(request, where);
  } catch (const InputError& e) {
    throw UnusableRequest(e.what());
  }
}

// A required string; ROME's {"str": ...} objects and (EasyEdit) one-element-or-longer lists,
// whose first entry is the answer, are accepted where `allow_list`.
std::string text_field(const json& record, const char* key, const std::string& where, bool allow_list = false) {
  if (!record.contains(key)) throw InputError(where + ": missing field \"" + key + "\"");
  const json& value = record[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("str") && value["str"].is_string()) return value["str"].get<std::string>();
  if (allow_list && value.is_array() && !value.empty() && value[0].is_string()) return value[0].get<std::string>();
  throw InputError(where + ": field \"" + key + "\": expected a string");
}

// A string or a list of strings (EasyEdit allows both for prompts).
std::vector<std::string> text_list(const json& value, const std::string& where) {
  if (value.is_string()) return {value.get<std::string>()};
  if (!value.is_array()) throw InputError(where + ": expected a string or a list of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < value.size(); ++i) {
    if (!value[i].is_string()) throw InputError(where + "[" + std::to_string(i) + "]: expected a string");
    out.push_back(value[i].get<std::string>());
  }
  return out;
}

std::vector<LocalityPrompt> zip_locality(const std::vector<std::string>& prompts, const std::vector<std::string>& answers,
                                         const std::string& where) {
  std::vector<LocalityPrompt> out;
  if (answers.size() != prompts.size() && answers.size() != 1)
    throw InputError(where + ": " + std::to_string(prompts.size()) + " locality prompts but " +
                     std::to_string(answers.size()) + " ground truths");
  for (size_t i = 0; i < prompts.size(); ++i) out.push_back({prompts[i], answers.size() == 1 ? answers[0] : answers[i]});
  return out;
}

EditRecord counterfact_rome(const json& record, const std::string& where) {
  // contains() first: operator[] of a const json on a missing key is undefined (an assertion failure
  // in debug builds), and a record may lack the field when the format is forced.
  if (!record.contains("requested_rewrite")) throw InputError(where + ": missing field \"requested_rewrite\"");
  if (!record["requested_rewrite"].is_object()) throw InputError(where + ": field \"requested_rewrite\": expected an object");
  const json& rewrite = record["requested_rewrite"];
  const std::string rw = where + ": requested_rewrite";
  EditRecord out;
  out.request.prompt = text_field(rewrite, "prompt", rw);
  out.request.subject = text_field(rewrite, "subject", rw);
  out.request.target_new = text_field(rewrite, "target_new", rw);
  out.request.target_true = text_field(rewrite, "target_true", rw);
  out.request = usable_request(out.request, rw);
  if (record.contains("paraphrase_prompts"))
    out.paraphrases = text_list(record["paraphrase_prompts"], where + ": paraphrase_prompts");
  if (record.contains("neighborhood_prompts"))
    for (const auto& prompt : text_list(record["neighborhood_prompts"], where + ": neighborhood_prompts"))
      out.neighbourhood.push_back({prompt, out.request.target_true});  // CounterFact: neighbours keep the true object
  return out;
}

EditRecord easyedit(const json& record, const std::string& where) {
  EditRecord out;
  out.request.prompt = text_field(record, "prompt", where);
  out.request.subject = text_field(record, "subject", where);
  out.request.target_new = text_field(record, "target_new", where, true);
  if (record.contains("ground_truth") && !record["ground_truth"].is_null())
    out.request.target_true = text_field(record, "ground_truth", where, true);
  out.request = usable_request(out.request, where);
  if (record.contains("rephrase_prompt") && !record["rephrase_prompt"].is_null())
    out.paraphrases = text_list(record["rephrase_prompt"], where + ": rephrase_prompt");
  if (record.contains("locality_prompt") && !record["locality_prompt"].is_null()) {
    if (!record.contains("locality_ground_truth"))
      throw InputError(where + ": field \"locality_prompt\" without \"locality_ground_truth\"");
    out.neighbourhood = zip_locality(text_list(record["locality_prompt"], where + ": locality_prompt"),
                                     text_list(record["locality_ground_truth"], where + ": locality_ground_truth"),
                                     where + ": locality_prompt");
  }
  if (record.contains("locality") && !record["locality"].is_null()) {
    if (!record["locality"].is_object()) throw InputError(where + ": field \"locality\": expected an object");
    for (const auto& item : record["locality"].items()) {
      const std::string lw = where + ": locality." + item.key();
      if (!item.value().is_object()) throw InputError(lw + ": expected {\"prompt\", \"ground_truth\"}");
      if (!item.value().contains("prompt")) throw InputError(lw + ": missing field \"prompt\"");
      if (!item.value().contains("ground_truth")) throw InputError(lw + ": missing field \"ground_truth\"");
      for (auto& p : zip_locality(text_list(item.value()["prompt"], lw + ".prompt"),
                                  text_list(item.value()["ground_truth"], lw + ".ground_truth"), lw))
        out.neighbourhood.push_back(std::move(p));
    }
  }
  return out;
}

EditRecord zsre_rome(const json& record, const std::string& where) {
  EditRecord out;
  out.request.prompt = text_field(record, "src", where);
  out.request.subject = text_field(record, "subject", where);
  out.request.target_new = text_field(record, "alt", where);
  // Name zsRE's own fields rather than the request's.
  if (out.request.target_new.empty()) throw UnusableRequest(where + ": field \"alt\" (target_new) is empty");
  if (out.request.prompt.find(out.request.subject) == std::string::npos)
    throw UnusableRequest(where + ": field \"src\" does not contain the subject \"" + out.request.subject + "\"");
  if (record.contains("answers") && record["answers"].is_array() && !record["answers"].empty())
    out.request.target_true = text_field(record, "answers", where, true);
  else if (record.contains("pred"))
    out.request.target_true = text_field(record, "pred", where);
  out.request = usable_request(out.request, where);
  if (record.contains("rephrase")) out.paraphrases = text_list(record["rephrase"], where + ": rephrase");
  if (record.contains("loc"))
    out.neighbourhood.push_back({text_field(record, "loc", where), text_field(record, "loc_ans", where)});
  return out;
}

}  // namespace

DatasetFormat parse_dataset_format(const std::string& name, const std::string& where) {
  if (name == "auto") return DatasetFormat::Auto;
  if (name == "counterfact-rome") return DatasetFormat::CounterfactRome;
  if (name == "easyedit") return DatasetFormat::EasyEdit;
  if (name == "zsre-rome") return DatasetFormat::ZsreRome;
  throw InputError(where + ": unknown dataset format \"" + name +
                   "\" (expected auto, counterfact-rome, easyedit or zsre-rome)");
}

std::string to_string(DatasetFormat format) {
  switch (format) {
    case DatasetFormat::Auto: return "auto";
    case DatasetFormat::Requests: return "requests";
    case DatasetFormat::CounterfactRome: return "counterfact-rome";
    case DatasetFormat::EasyEdit: return "easyedit";
    case DatasetFormat::ZsreRome: return "zsre-rome";
  }
  return "auto";
}

DatasetFormat detect_dataset_format(const json& record, const std::string& where) {
  if (!record.is_object()) throw InputError(where + ": expected a JSON object");
  if (record.contains("requested_rewrite")) return DatasetFormat::CounterfactRome;
  if (record.contains("src") && record.contains("alt")) return DatasetFormat::ZsreRome;
  if (record.contains("prompt") && record.contains("target_new")) return DatasetFormat::EasyEdit;
  throw InputError(where + ": cannot tell the dataset format (expected \"requested_rewrite\" (counterfact-rome), "
                   "\"src\"+\"alt\" (zsre-rome) or \"prompt\"+\"target_new\" (easyedit))");
}

bool is_dataset_record(const json& record) {
  if (!record.is_object()) return false;
  for (const char* key : {"requested_rewrite", "src", "alt", "ground_truth", "rephrase_prompt", "locality_prompt",
                          "locality_ground_truth", "locality", "portability"})
    if (record.contains(key)) return true;
  return false;
}

DatasetFormat detect_record_format(const json& record, const std::string& where) {
  return is_dataset_record(record) ? detect_dataset_format(record, where) : DatasetFormat::Requests;
}

EditRecord parse_edit_record(const json& record, const std::string& where, DatasetFormat format) {
  if (format == DatasetFormat::Auto) format = detect_record_format(record, where);
  try {
    switch (format) {
      case DatasetFormat::Requests: {
        EditRecord out;
        out.request = parse_request(record, where);  // strict: a misspelt field is an error
        return out;
      }
      case DatasetFormat::CounterfactRome: return counterfact_rome(record, where);
      case DatasetFormat::EasyEdit: return easyedit(record, where);
      case DatasetFormat::ZsreRome: return zsre_rome(record, where);
      case DatasetFormat::Auto: break;
    }
  } catch (const UnusableRequest& e) {
    EditRecord out;
    out.invalid = e.what();
    return out;
  }
  return {};
}

Dataset parse_dataset(const json& data, const std::string& source, DatasetFormat format) {
  if (!data.is_array()) throw InputError(source + ": expected a JSON list of records");
  if (data.empty()) throw InputError(source + ": no records");
  Dataset dataset;
  dataset.source = source;
  dataset.format = format == DatasetFormat::Auto ? detect_dataset_format(data[0], source + ": record 0") : format;
  std::set<int64_t> ids;
  for (size_t i = 0; i < data.size(); ++i) {
    const std::string where = source + ": record " + std::to_string(i);
    const json& record = data[i];
    if (!record.is_object()) throw InputError(where + ": expected a JSON object");
    EditRecord out = parse_edit_record(record, where, dataset.format);
    out.position = static_cast<int64_t>(i);
    out.case_id = out.position;
    if (record.contains("case_id")) {
      if (!record["case_id"].is_number_integer()) throw InputError(where + ": field \"case_id\": expected an integer");
      out.case_id = record["case_id"].get<int64_t>();
    }
    if (!ids.insert(out.case_id).second)
      throw InputError(where + ": case_id " + std::to_string(out.case_id) + " appears twice");
    dataset.records.push_back(std::move(out));
  }
  return dataset;
}

Dataset read_dataset(const std::filesystem::path& path, DatasetFormat format) {
  const std::string text = read_file(path);
  const json data = parse_json(text, path.string(), "malformed JSON");
  return parse_dataset(data, path.string(), format);
}

}  // namespace rc
