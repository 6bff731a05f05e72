#include "rome_collapse/io/request_file.h"

#include <sstream>

#include <nlohmann/json.hpp>

#include "rome_collapse/io/dataset.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {
namespace {

std::vector<nlohmann::json> parse_records(const std::string& text, const std::string& source) {
  const bool lines_by_name = source.size() > 6 && source.compare(source.size() - 6, 6, ".jsonl") == 0;
  if (!lines_by_name) {
    nlohmann::json json = parse_json(text, source, "malformed JSON");
    if (json.is_object() && json.contains("requests")) json = json["requests"];
    // A single request; an object that is neither a request nor a record is a layout error here,
    // not an unknown field of record [0].
    if (json.is_object() && (json.contains("prompt") || is_dataset_record(json))) return {json};
    if (!json.is_array())
      fail_input(source, "expected a JSON list of requests or dataset records (CounterFact, EasyEdit, ZsRE), "
                         "or one request object {\"prompt\", \"subject\", \"target_new\"}; got " +
                             std::string(json.type_name()) + " " + json_excerpt(json));
    return std::vector<nlohmann::json>(json.begin(), json.end());
  }
  std::vector<nlohmann::json> records;
  std::istringstream stream(text);
  std::string line;
  for (size_t number = 1; std::getline(stream, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    records.push_back(parse_json(line, source + ": line " + std::to_string(number), "malformed JSON"));
  }
  return records;
}

nlohmann::json record_id(const nlohmann::json& record, size_t index) {
  if (record.is_object() && record.contains("case_id") && !record["case_id"].is_null()) return record["case_id"];
  return index;
}

}  // namespace

EditRequest parse_request_record(const nlohmann::json& record, const std::string& where, DatasetFormat* format) {
  if (!is_dataset_record(record)) {
    if (format) *format = DatasetFormat::Requests;
    return parse_request(record, where);  // strict: a misspelt field is an error
  }
  // A dataset record is read as a one-record dataset: its format detection, field and case_id rules.
  Dataset one = parse_dataset(nlohmann::json::array({record}), where);
  if (!one.records.at(0).invalid.empty()) throw UnusableRequest(one.records[0].invalid);
  if (format) *format = one.format;
  return one.records.at(0).request;
}

RequestSet read_request_file(const std::filesystem::path& path) {
  RequestSet set;
  set.source = path.string();
  std::vector<nlohmann::json> records = parse_records(read_file(path), set.source);
  if (records.empty()) fail_input(set.source, "no requests in the file");
  // The first record decides the layout of the file, as in a dataset.
  set.format = detect_record_format(records[0], set.source + ": record 0");
  std::vector<EditRecord> read;
  std::vector<nlohmann::json> ids;
  if (set.format == DatasetFormat::Requests) {
    // Plain requests: a case_id of any type (or none: the index) is the id, unchecked.
    for (size_t i = 0; i < records.size(); ++i) {
      read.push_back(parse_edit_record(records[i], set.source + ": record " + std::to_string(i), set.format));
      ids.push_back(record_id(records[i], i));
    }
  } else {
    // Dataset records: parse_dataset's rules (integer, unique case ids).
    read = parse_dataset(nlohmann::json(records), set.source, set.format).records;
    for (const EditRecord& record : read) ids.push_back(record.case_id);
  }
  for (size_t i = 0; i < read.size(); ++i) {
    if (!read[i].invalid.empty()) {
      set.skipped.push_back(read[i].invalid);
      continue;
    }
    set.requests.push_back(read[i].request);
    set.ids.push_back(ids[i]);
  }
  if (set.requests.empty())
    fail_input(set.source, "no usable request (" + std::to_string(set.skipped.size()) + " skipped: " +
                               set.skipped.front() + (set.skipped.size() > 1 ? ", ..." : "") + ")");
  return set;
}

RequestSet requests_from_config_json(const nlohmann::json& config, const std::string& source) {
  RequestSet set;
  set.source = source;
  if (config.contains("requests")) {
    if (config.contains("request")) fail_input(source, "give either \"request\" or \"requests\"");
    const auto& list = config["requests"];
    if (!list.is_array() || list.empty()) fail_input(source, "requests: expected a non-empty list");
    for (size_t i = 0; i < list.size(); ++i) {
      set.requests.push_back(parse_request_record(list[i], source + ": requests[" + std::to_string(i) + "]"));
      set.ids.push_back(record_id(list[i], i));
    }
  } else if (config.contains("request")) {
    set.requests.push_back(parse_request_record(config["request"], source + ": request"));
    set.ids.push_back(0);
  } else {
    fail_input(source, "no \"request\" or \"requests\" (or pass --requests FILE)");
  }
  return set;
}

}  // namespace rc
