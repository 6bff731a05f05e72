#pragma once
// Edit datasets as the paper evaluates them: one record per edit, with the prompts that measure
// efficacy (the rewrite prompt), generalisation (paraphrases) and locality (neighbourhood prompts
// with the answer the unedited model should keep). Three on-disk formats are read:
//   counterfact-rome  ROME's counterfact.json: requested_rewrite{prompt, subject, target_new{str},
//                     target_true{str}}, paraphrase_prompts[], neighborhood_prompts[] (answer target_true)
//   easyedit          EasyEdit/MEND records: prompt, subject, target_new, ground_truth, rephrase_prompt,
//                     locality_prompt + locality_ground_truth, or "locality": {KEY: {prompt, ground_truth}}
//   zsre-rome         ROME/MEND zsRE: subject, src, alt (new), answers[0] or pred (true), rephrase,
//                     loc ("nq question: ..." kept as is), loc_ans
// and plain edit requests ("requests": {prompt, subject, target_new, target_true}, io/request.h), which
// request files (io/request_file.h) hold. Each layout has one reader here (parse_edit_record).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/io/request.h"

namespace rc {

// The one enum of record layouts, for datasets and request files alike. Auto: detect from the first record.
enum class DatasetFormat { Auto, Requests, CounterfactRome, EasyEdit, ZsreRome };
// A batch config's dataset.format: "auto" | "counterfact-rome" | "easyedit" | "zsre-rome" (a dataset
// needs paraphrase and neighbourhood prompts, which plain requests lack, so "requests" is not offered).
DatasetFormat parse_dataset_format(const std::string& name, const std::string& where);
std::string to_string(DatasetFormat format);  // the names above; Requests is "requests"

struct LocalityPrompt {
  std::string prompt;
  std::string answer;  // what the unedited model is expected to keep saying
};

struct EditRecord {
  int64_t position = 0;  // index in the file (dataset order; c-rome-prefix's test-time template index)
  int64_t case_id = 0;   // the record's case_id, else its position
  EditRequest request;   // prompt with "{}"
  std::vector<std::string> paraphrases;
  std::vector<LocalityPrompt> neighbourhood;
  // Non-empty: why this record cannot be edited (e.g. an empty target in zsRE). Reading the file
  // does not fail for it; a run that selects it by id fails with this message, a range skips it.
  std::string invalid;
};

struct Dataset {
  std::string source;
  DatasetFormat format = DatasetFormat::Auto;  // the detected format, never Auto once read
  std::vector<EditRecord> records;
};

// InputError naming the file, the record and the field for a malformed file or record structure;
// a well-formed record whose request is unusable is kept with `invalid` set.
Dataset read_dataset(const std::filesystem::path& path, DatasetFormat format = DatasetFormat::Auto);
Dataset parse_dataset(const nlohmann::json& json, const std::string& source, DatasetFormat format = DatasetFormat::Auto);

// The format of one dataset record, judged by its fields; InputError naming `where` when none fits.
DatasetFormat detect_dataset_format(const nlohmann::json& record, const std::string& where);

// A record with a field only datasets have (requested_rewrite, src, ground_truth, locality, ...);
// anything else is read as a plain request, strictly (a misspelt field is an error).
bool is_dataset_record(const nlohmann::json& record);
// Requests for a plain request, else detect_dataset_format.
DatasetFormat detect_record_format(const nlohmann::json& record, const std::string& where);

// One record in `format` (not Auto), by that format's reader; InputError for a malformed record. A
// well-formed record whose request cannot be edited comes back with `invalid` set. position and case_id
// are left to the caller (a dataset requires integer, unique case ids; a request file does not).
EditRecord parse_edit_record(const nlohmann::json& record, const std::string& where, DatasetFormat format);

}  // namespace rc
