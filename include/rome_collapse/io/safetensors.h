#pragma once
// The safetensors format: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {...}}, then the data.
// Reading validates everything before touching the data (sizes, offsets inside the file,
// no overlaps, known dtypes) and memory-maps the file.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace rc {

struct SafetensorsEntry {
  std::string dtype;             // "F32", "F16", "BF16", "F64", "I64", "I32", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;   // offsets relative to the start of the data section
};

class SafetensorsFile {
 public:
  // Maps and validates the file; InputError naming the file and the offending tensor/field.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // The tensor converted to `dtype` (a copy-on-write view of the map when no conversion is needed).
  at::Tensor tensor(const std::string& name, at::ScalarType dtype) const;
  const std::filesystem::path& path() const { return path_; }
  std::shared_ptr<void> mapping() const { return mapping_; }

 private:
  std::filesystem::path path_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::shared_ptr<void> mapping_;  // owns the mmap
  const uint8_t* data_ = nullptr;  // start of the data section
};

// Writes tensors (contiguous CPU copies are made) atomically; dtype kept (F32/F16/BF16/F64/I64/I32).
void write_safetensors(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace rc
