#include "rome_collapse/rome/npz.h"

#include <cstring>
#include <memory>
#include <regex>

#include <ATen/ATen.h>
#include <zip.h>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

namespace rc {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr uint64_t kMaxMemberBytes = uint64_t(64) << 30;  // refuse absurd declared sizes before allocating

int64_t element_size(const std::string& descr, const std::string& where) {
  if (descr.size() < 3) throw InputError(where + ": unsupported dtype '" + descr + "'");
  if (descr[0] == '>') throw InputError(where + ": big-endian dtype '" + descr + "' is not supported");
  const char kind = descr[1];
  const int64_t n = std::stoll(descr.substr(2));
  if (kind == 'U') return 4 * n;  // UCS-4 code units
  if (kind == 'S') return n;
  return n;
}

}  // namespace

NpyArray parse_npy(const std::string& bytes, const std::string& where) {
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) throw InputError(where + ": not a .npy array (bad magic)");
  const uint8_t major = static_cast<uint8_t>(bytes[6]);
  size_t header_length = 0, header_start = 0;
  if (major == 1) {
    header_length = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw InputError(where + ": truncated .npy header");
    uint32_t length = 0;
    std::memcpy(&length, bytes.data() + 8, 4);
    header_length = length;
    header_start = 12;
  } else {
    throw InputError(where + ": unsupported .npy version " + std::to_string(major));
  }
  if (header_start + header_length > bytes.size()) throw InputError(where + ": .npy header runs past the end");
  const std::string header = bytes.substr(header_start, header_length);
  NpyArray array;
  std::smatch match;
  if (!std::regex_search(header, match, std::regex("'descr'\\s*:\\s*'([^']+)'")))
    throw InputError(where + ": .npy header has no 'descr'");
  array.descr = match[1];
  array.fortran_order = header.find("'fortran_order': True") != std::string::npos;
  if (!std::regex_search(header, match, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)")))
    throw InputError(where + ": .npy header has no 'shape'");
  const std::string dims = match[1];
  uint64_t count = 1;
  static const std::regex kNumber("\\d+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), kNumber), end; it != end; ++it) {
    const int64_t dim = std::stoll(it->str());
    array.shape.push_back(dim);
    if (dim != 0 && count > kMaxMemberBytes / uint64_t(dim)) throw InputError(where + ": shape too large");
    count *= uint64_t(dim);
  }
  if (array.descr.size() > 1 && (array.descr[0] == '<' || array.descr[0] == '|' || array.descr[0] == '=') &&
      array.descr.find_first_not_of("0123456789", 2) != std::string::npos)
    throw InputError(where + ": unsupported dtype '" + array.descr + "'");
  const uint64_t expected = count * uint64_t(element_size(array.descr, where));
  const size_t data_start = header_start + header_length;
  if (bytes.size() - data_start != expected)
    throw InputError(where + ": data has " + std::to_string(bytes.size() - data_start) + " bytes, shape and dtype need " +
                     std::to_string(expected));
  array.data = bytes.substr(data_start);
  return array;
}

at::Tensor NpyArray::tensor() const {
  at::ScalarType type;
  if (descr == "<f4") type = at::kFloat;
  else if (descr == "<f8") type = at::kDouble;
  else if (descr == "<f2") type = at::kHalf;
  else if (descr == "<i8") type = at::kLong;
  else if (descr == "<i4") type = at::kInt;
  else if (descr == "|u1") type = at::kByte;
  else if (descr == "|b1") type = at::kBool;
  else throw InputError("npy dtype '" + descr + "' is not numeric");
  std::vector<int64_t> sizes = shape;
  if (fortran_order) std::reverse(sizes.begin(), sizes.end());
  at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(type));
  std::memcpy(out.data_ptr(), data.data(), data.size());
  if (fortran_order && out.dim() > 1) out = out.permute([&] {
    std::vector<int64_t> order(out.dim());
    for (int64_t i = 0; i < out.dim(); ++i) order[i] = out.dim() - 1 - i;
    return order;
  }()).contiguous();
  return out;
}

std::string NpyArray::string() const {
  if (descr.size() > 2 && descr[1] == 'U') {
    std::string out;
    for (size_t i = 0; i + 4 <= data.size(); i += 4) {
      uint32_t cp;
      std::memcpy(&cp, data.data() + i, 4);
      if (cp == 0) continue;
      if (cp < 0x80) out += char(cp);
      else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
      else if (cp < 0x10000) { out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
      else { out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
    }
    return out;
  }
  if (descr.size() > 2 && descr[1] == 'S') return std::string(data.c_str());
  throw InputError("npy dtype '" + descr + "' is not a string");
}

namespace {
std::string npy_with_header(const std::string& descr, const std::vector<int64_t>& shape, const std::string& data) {
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) dims += std::to_string(shape[i]) + (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::string out(kMagic, 6);
  out += char(1);
  out += char(0);
  out += char(header.size() & 0xFF);
  out += char((header.size() >> 8) & 0xFF);
  return out + header + data;
}
}  // namespace

std::string serialize_npy(const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().cpu().contiguous();
  std::string descr;
  switch (t.scalar_type()) {
    case at::kFloat: descr = "<f4"; break;
    case at::kDouble: descr = "<f8"; break;
    case at::kLong: descr = "<i8"; break;
    case at::kInt: descr = "<i4"; break;
    case at::kBool: descr = "|b1"; break;
    default: throw std::invalid_argument("serialize_npy: unsupported dtype");
  }
  return npy_with_header(descr, t.sizes().vec(),
                         std::string(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size()));
}

std::string serialize_npy_string(const std::string& text) {
  // ASCII/UTF-8 to UCS-4 (the strings written here are ASCII).
  std::string data;
  for (unsigned char c : text) {
    uint32_t cp = c;
    data.append(reinterpret_cast<const char*>(&cp), 4);
  }
  return npy_with_header("<U" + std::to_string(text.size()), {}, data);
}

std::map<std::string, NpyArray> read_npz(const std::filesystem::path& path) {
  const std::string bytes = read_file(path);
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* source = zip_source_buffer_create(bytes.data(), bytes.size(), 0, &error);
  if (!source) fail_input(path.string(), std::string("cannot read: ") + zip_error_strerror(&error));
  zip_t* archive = zip_open_from_source(source, ZIP_RDONLY, &error);
  if (!archive) {
    zip_source_free(source);
    fail_input(path.string(), std::string("not an .npz (zip) file: ") + zip_error_strerror(&error));
  }
  std::unique_ptr<zip_t, int (*)(zip_t*)> guard(archive, zip_close);
  std::map<std::string, NpyArray> members;
  const zip_int64_t entries = zip_get_num_entries(archive, 0);
  for (zip_int64_t i = 0; i < entries; ++i) {
    zip_stat_t stat;
    if (zip_stat_index(archive, i, 0, &stat) != 0) fail_input(path.string(), "unreadable zip entry");
    std::string name = stat.name;
    const std::string where = path.string() + ": member '" + name + "'";
    if (stat.size > kMaxMemberBytes) throw InputError(where + ": declared size too large");
    zip_file_t* file = zip_fopen_index(archive, i, 0);
    if (!file) throw InputError(where + ": cannot open (" + std::string(zip_strerror(archive)) + ")");
    std::string content(stat.size, '\0');
    const zip_int64_t read = zip_fread(file, content.data(), stat.size);
    zip_fclose(file);
    if (read < 0 || static_cast<zip_uint64_t>(read) != stat.size) throw InputError(where + ": truncated or corrupt");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    members[name] = parse_npy(content, where);
  }
  return members;
}

void write_npz(const std::filesystem::path& path, const std::map<std::string, std::string>& members) {
  const std::string temp = path.string() + ".tmp.npz";
  int error_code = 0;
  zip_t* archive = zip_open(temp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &error_code);
  if (!archive) fail_input(path.string(), "cannot create");
  for (const auto& [name, bytes] : members) {
    zip_source_t* source = zip_source_buffer(archive, bytes.data(), bytes.size(), 0);
    const zip_int64_t index = source ? zip_file_add(archive, (name + ".npy").c_str(), source, ZIP_FL_OVERWRITE) : -1;
    if (index < 0) {
      if (source) zip_source_free(source);
      zip_discard(archive);
      fail_input(path.string(), "cannot add member '" + name + "'");
    }
    zip_set_file_compression(archive, index, ZIP_CM_STORE, 0);
    zip_file_set_mtime(archive, index, 315532800 /* 1980-01-01, zip's epoch */, 0);
  }
  if (zip_close(archive) != 0) {
    zip_discard(archive);
    fail_input(path.string(), "cannot write the archive");
  }
  std::filesystem::rename(temp, path);
}

SecondMoment read_second_moment_npz(const std::filesystem::path& path) {
  auto members = read_npz(path);
  for (const char* key : {"mom2.mom2", "mom2.count"})
    if (!members.count(key)) fail_input(path.string(), std::string("missing member '") + key + "' (ROME's layout)");
  SecondMoment moment;
  moment.source = path.string();
  moment.sha256 = sha256_file(path);
  moment.mom2 = members["mom2.mom2"].tensor().to(at::kDouble);
  if (moment.mom2.dim() != 2 || moment.mom2.size(0) != moment.mom2.size(1))
    fail_input(path.string(), "member 'mom2.mom2' must be a square matrix");
  moment.count = members["mom2.count"].tensor().to(at::kLong).item<int64_t>();
  if (members.count("mom2.constructor")) moment.constructor = members["mom2.constructor"].string();
  if (members.count("sample_size")) moment.sample_size = members["sample_size"].tensor().to(at::kLong).item<int64_t>();
  if (!at::isfinite(moment.mom2).all().item<bool>()) fail_input(path.string(), "member 'mom2.mom2' has NaN or Inf");
  return moment;
}

void write_second_moment_npz(const std::filesystem::path& path, const at::Tensor& mom2_sum, int64_t count,
                             int64_t sample_size, at::ScalarType stored_dtype) {
  write_npz(path, {{"mom2.mom2", serialize_npy(mom2_sum.to(stored_dtype))},
                   {"mom2.count", serialize_npy(at::scalar_tensor(count, at::kLong))},
                   {"mom2.constructor", serialize_npy_string("rome_collapse.SecondMoment")},
                   {"sample_size", serialize_npy(at::scalar_tensor(sample_size, at::kLong))}});
}

}  // namespace rc
