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
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "rome_collapse/io/request.h"

namespace rc {

enum class DatasetFormat { Auto, CounterfactRome, EasyEdit, ZsreRome };
DatasetFormat parse_dataset_format(const std::string& name, const std::string& where);  // "auto" | "counterfact-rome" | ...
std::string to_string(DatasetFormat format);

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

// The format of one record, judged by its fields; InputError naming `where` when none fits.
DatasetFormat detect_dataset_format(const nlohmann::json& record, const std::string& where);

}  // namespace rc
