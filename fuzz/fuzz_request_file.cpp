// libFuzzer target: the JSON readers without a target of their own: request files (JSON list,
// one object, JSONL; CounterFact/EasyEdit/ZsRE records) and a batch journal (results.jsonl).
// Input layout: the first byte selects the reader (0: requests .json, 1: requests .jsonl,
// 2: results.jsonl); the rest is the file.
#include <string>

#include "fuzz_support.h"
#include "rome_collapse/experiment/tables.h"
#include "rome_collapse/io/request_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0: {
      const auto path = rc::fuzz::write_scratch("requests.json", rest);
      rc::fuzz::expect_clean("fuzz_request_file(json)", [&] { (void)rc::read_request_file(path); });
      break;
    }
    case 1: {
      const auto path = rc::fuzz::write_scratch("requests.jsonl", rest);
      rc::fuzz::expect_clean("fuzz_request_file(jsonl)", [&] { (void)rc::read_request_file(path); });
      break;
    }
    default: {
      const auto path = rc::fuzz::write_scratch("results.jsonl", rest);
      rc::fuzz::expect_clean("fuzz_request_file(results.jsonl)", [&] { (void)rc::read_results_file(path); });
      break;
    }
  }
  return 0;
}
