// libFuzzer target: rc::read_dataset (CounterFact / EasyEdit / zsRE edit datasets) on arbitrary bytes,
// in auto-detection and in every forced format (plain requests included).
#include "fuzz_support.h"
#include "rome_collapse/io/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = rc::fuzz::write_scratch("dataset.json", data, size);
  for (rc::DatasetFormat format : {rc::DatasetFormat::Auto, rc::DatasetFormat::Requests, rc::DatasetFormat::CounterfactRome,
                                   rc::DatasetFormat::EasyEdit, rc::DatasetFormat::ZsreRome})
    rc::fuzz::expect_clean("fuzz_dataset", [&] { (void)rc::read_dataset(path, format); });
  return 0;
}
