#include "rome_collapse/io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/json.h"

namespace rc {

namespace {

// The reference implementation refuses headers over 100 MB; so do we, before allocating anything.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct DtypeInfo {
  const char* name;
  at::ScalarType scalar_type;
  uint64_t bytes;
};

const DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& info : kDtypes)
    if (name == info.name) return &info;
  return nullptr;
}

const DtypeInfo* find_dtype(at::ScalarType scalar_type) {
  for (const auto& info : kDtypes)
    if (scalar_type == info.scalar_type) return &info;
  return nullptr;
}

std::string known_dtype_list() {
  std::string list;
  for (const auto& info : kDtypes) list += (list.empty() ? "" : ", ") + std::string(info.name);
  return list;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Owns one private, writable (copy-on-write) mapping of a whole file.
struct FileMapping {
  void* address = nullptr;
  size_t size = 0;
  ~FileMapping() {
    if (address != nullptr) ::munmap(address, size);
  }
};

std::shared_ptr<FileMapping> map_file(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail_input(file, "file not found");
  if (std::filesystem::is_directory(path, ec)) fail_input(file, "is a directory, expected a .safetensors file");
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_input(file, std::string("cannot open: ") + std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    int saved = errno;
    ::close(fd);
    fail_input(file, std::string("cannot stat: ") + std::strerror(saved));
  }
  auto mapping = std::make_shared<FileMapping>();
  mapping->size = static_cast<size_t>(info.st_size);
  if (mapping->size == 0) {
    ::close(fd);
    fail_input(file, "empty file (0 bytes); a safetensors file starts with an 8-byte header length");
  }
  // MAP_PRIVATE + PROT_WRITE: tensors aliasing the map may be edited in place (ROME rewrites weights)
  // without ever touching the file.
  void* address = ::mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int saved = errno;
  ::close(fd);
  if (address == MAP_FAILED) fail_input(file, std::string("cannot memory-map: ") + std::strerror(saved));
  mapping->address = address;
  return mapping;
}

uint64_t read_u64_le(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

uint64_t json_unsigned(const nlohmann::json& value, const std::string& file, const std::string& tensor,
                       const std::string& field) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) return static_cast<uint64_t>(value.get<int64_t>());
  fail_input(file, "tensor '" + excerpt(tensor) + "': " + field + " must hold non-negative integers, got " + json_excerpt(value));
}

SafetensorsEntry parse_entry(const std::string& file, const std::string& name, const nlohmann::json& spec,
                             uint64_t data_size) {
  const std::string where = "tensor '" + excerpt(name) + "': ";
  if (!spec.is_object()) fail_input(file, where + "header entry must be an object, got " + json_excerpt(spec));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!spec.contains(field)) fail_input(file, where + "header entry lacks '" + field + "'");

  SafetensorsEntry entry;
  if (!spec.at("dtype").is_string()) fail_input(file, where + "dtype must be a string, got " + json_excerpt(spec.at("dtype")));
  entry.dtype = spec.at("dtype").get<std::string>();
  const DtypeInfo* dtype = find_dtype(entry.dtype);
  if (dtype == nullptr)
    fail_input(file, where + "unknown dtype \"" + excerpt(entry.dtype) + "\" (known: " + known_dtype_list() + ")");

  const auto& shape = spec.at("shape");
  if (!shape.is_array()) fail_input(file, where + "shape must be a list, got " + json_excerpt(shape));
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& dim : shape) {
    uint64_t size = json_unsigned(dim, file, name, "shape");
    if (size > static_cast<uint64_t>(INT64_MAX)) fail_input(file, where + "shape dimension too large: " + json_excerpt(dim));
    entry.shape.push_back(static_cast<int64_t>(size));
    overflow |= __builtin_mul_overflow(numel, size, &numel);
  }

  const auto& offsets = spec.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2)
    fail_input(file, where + "data_offsets must be [begin, end], got " + json_excerpt(offsets));
  entry.begin = json_unsigned(offsets.at(0), file, name, "data_offsets");
  entry.end = json_unsigned(offsets.at(1), file, name, "data_offsets");
  const std::string offsets_text = "[" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "]";
  if (entry.begin > entry.end) fail_input(file, where + "data_offsets " + offsets_text + " have begin after end");
  if (entry.end > data_size)
    fail_input(file, where + "data_offsets " + offsets_text + " reach beyond the end of the data section (" +
                         std::to_string(data_size) + " bytes): the file is truncated or its header is wrong");

  uint64_t expected_bytes = 0;
  overflow |= __builtin_mul_overflow(numel, dtype->bytes, &expected_bytes);
  if (overflow)
    fail_input(file, where + "shape " + shape_string(entry.shape) + " overflows a 64-bit byte count");
  if (expected_bytes != entry.end - entry.begin)
    fail_input(file, where + "shape " + shape_string(entry.shape) + " with dtype " + entry.dtype + " needs " +
                         std::to_string(expected_bytes) + " bytes but data_offsets " + offsets_text + " span " +
                         std::to_string(entry.end - entry.begin) + " bytes (size mismatch)");
  return entry;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::shared_ptr<FileMapping> mapping = map_file(path);
  const auto* bytes = static_cast<const uint8_t*>(mapping->address);
  const uint64_t file_size = mapping->size;

  if (file_size < 8)
    fail_input(file, "file too short (" + std::to_string(file_size) +
                         " bytes) to hold the 8-byte safetensors header length");
  const uint64_t header_size = read_u64_le(bytes);
  if (header_size > file_size - 8)
    fail_input(file, "header length " + std::to_string(header_size) + " exceeds the file size (" +
                         std::to_string(file_size) + " bytes): truncated file or not safetensors");
  if (header_size > kMaxHeaderBytes)
    fail_input(file, "header length " + std::to_string(header_size) + " exceeds the 100 MB limit");

  const nlohmann::json header =
      parse_json(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_size), file, "header is not valid JSON");
  if (!header.is_object()) fail_input(file, "header is not a JSON object");

  SafetensorsFile result;
  result.path_ = path;
  const uint64_t data_size = file_size - 8 - header_size;
  for (const auto& [name, spec] : header.items()) {
    if (name == "__metadata__") {
      if (spec.is_null()) continue;
      if (!spec.is_object()) fail_input(file, "__metadata__ must be an object of strings");
      for (const auto& [key, value] : spec.items()) {
        if (!value.is_string()) fail_input(file, "__metadata__ field '" + excerpt(key) + "' must be a string");
        result.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    result.entries_[name] = parse_entry(file, name, spec, data_size);
  }

  // Overlapping byte ranges would make two tensors alias each other's data.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> by_offset;
  for (const auto& [name, entry] : result.entries_) by_offset.emplace_back(&name, &entry);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return std::make_pair(a.second->begin, a.second->end) < std::make_pair(b.second->begin, b.second->end);
  });
  // Compared with the non-empty range reaching furthest so far, not just the previous entry: an empty
  // tensor sorted in between must not hide an overlap ([0,8], [4,4], [4,8]).
  const std::pair<const std::string*, const SafetensorsEntry*>* furthest = nullptr;
  for (size_t i = 0; i < by_offset.size(); ++i) {
    const auto& current = by_offset[i];
    if (current.second->begin == current.second->end) continue;
    if (furthest == nullptr) {
      furthest = &by_offset[i];
      continue;
    }
    const auto& previous = *furthest;
    if (current.second->end > previous.second->end) furthest = &by_offset[i];
    if (current.second->begin < previous.second->end)
      fail_input(file, "tensor '" + *current.first + "': data_offsets [" + std::to_string(current.second->begin) +
                           ", " + std::to_string(current.second->end) + "] overlap those of tensor '" +
                           *previous.first + "' [" + std::to_string(previous.second->begin) + ", " +
                           std::to_string(previous.second->end) + "]");
  }

  result.data_ = bytes + 8 + header_size;
  result.mapping_ = std::static_pointer_cast<void>(mapping);
  return result;
}

at::Tensor SafetensorsFile::tensor(const std::string& name, at::ScalarType dtype) const {
  auto found = entries_.find(name);
  if (found == entries_.end()) fail_input(path_.string(), "no tensor named '" + name + "'");
  const SafetensorsEntry& entry = found->second;
  const DtypeInfo* stored = find_dtype(entry.dtype);  // validated in open()
  // from_blob never frees; the deleter only holds the mapping alive for as long as the tensor lives.
  auto* address = const_cast<uint8_t*>(data_ + entry.begin);
  std::shared_ptr<void> mapping = mapping_;
  auto keep_mapping = [mapping](void*) {};
  at::Tensor stored_tensor;
  // The data section starts at 8 + header length, which other writers need not align, and kernels
  // assume element alignment: misaligned data is copied out byte-wise into fresh (aligned) memory.
  if (reinterpret_cast<uintptr_t>(address) % stored->bytes == 0) {
    stored_tensor = at::from_blob(address, entry.shape, keep_mapping, at::TensorOptions().dtype(stored->scalar_type));
  } else {
    auto byte_count = static_cast<int64_t>(entry.end - entry.begin);
    at::Tensor raw = at::from_blob(address, {byte_count}, keep_mapping, at::TensorOptions().dtype(at::kByte));
    stored_tensor = raw.clone().view(stored->scalar_type).view(entry.shape);
  }
  if (stored->scalar_type == dtype) return stored_tensor;  // aliases the copy-on-write map
  return stored_tensor.to(dtype);
}

void write_safetensors(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;  // same order as `tensors` (sorted by name)
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") fail_input(file, "a tensor cannot be named '__metadata__'");
    if (!tensor.defined()) fail_input(file, "tensor '" + name + "': undefined tensor");
    const DtypeInfo* dtype = find_dtype(tensor.scalar_type());
    if (dtype == nullptr)
      fail_input(file, "tensor '" + name + "': dtype " + std::string(c10::toString(tensor.scalar_type())) +
                           " has no safetensors equivalent");
    at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
    uint64_t bytes = static_cast<uint64_t>(cpu.numel()) * dtype->bytes;
    header[name] = {{"dtype", dtype->name},
                    {"shape", cpu.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(cpu);
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference implementation does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::string contents;
  contents.reserve(8 + header_text.size() + offset);
  uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) contents.push_back(static_cast<char>((header_size >> (8 * i)) & 0xff));
  contents += header_text;
  for (const at::Tensor& cpu : contiguous)
    contents.append(static_cast<const char*>(cpu.data_ptr()), cpu.numel() * cpu.element_size());
  write_file_atomic(path, contents);
}

}  // namespace rc
