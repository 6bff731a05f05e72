#include "rome_collapse/io/npz.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

#include <ATen/ATen.h>
#include <zip.h>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "rome_collapse/util/utf8.h"

namespace rc {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr uint64_t kMaxMemberBytes = uint64_t(64) << 30;  // refuse absurd declared sizes before allocating

// Bytes per element of a little-endian / byte-order-free dtype; InputError otherwise.
uint64_t element_size(const std::string& descr, const std::string& where) {
  if (descr.size() < 3 || descr.find_first_not_of("0123456789", 2) != std::string::npos)
    throw InputError(where + ": unsupported dtype '" + descr + "'");
  if (descr[0] == '>')
    throw InputError(where + ": big-endian dtype '" + descr + "' is not supported (save with dtype '<" +
                     descr.substr(1) + "')");
  if (descr[0] != '<' && descr[0] != '|' && descr[0] != '=')
    throw InputError(where + ": unsupported dtype '" + descr + "'");
  if (descr.size() > 12) throw InputError(where + ": unsupported dtype '" + descr + "'");
  const uint64_t n = std::stoull(descr.substr(2));
  return descr[1] == 'U' ? 4 * n : n;  // "<U": UCS-4 code units
}

// UTF-8 to code points; an invalid byte becomes U+FFFD.
std::vector<uint32_t> utf8_code_points(const std::string& text) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = text[i];
    const int length = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool valid = length > 0 && i + length <= text.size();
    uint32_t cp = length == 1 ? c : length == 2 ? (c & 0x1F) : length == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; valid && k < length; ++k) {
      const unsigned char next = text[i + k];
      valid = (next >> 6) == 2;
      cp = (cp << 6) | (next & 0x3F);
    }
    out.push_back(valid ? cp : 0xFFFD);
    i += valid ? length : 1;
  }
  return out;
}

// The text between `open` and `close` after "'key'" and a colon in a .npy header dict; false if absent.
bool header_value(const std::string& header, const std::string& key, char open, char close, std::string& value) {
  size_t pos = header.find("'" + key + "'");
  if (pos == std::string::npos) return false;
  pos = header.find_first_not_of(" \t", pos + key.size() + 2);
  if (pos == std::string::npos || header[pos] != ':') return false;
  pos = header.find_first_not_of(" \t", pos + 1);
  if (pos == std::string::npos || header[pos] != open) return false;
  const size_t end = header.find(close, pos + 1);
  if (end == std::string::npos) return false;
  value = header.substr(pos + 1, end - pos - 1);
  return true;
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
  if (header_start + header_length > bytes.size()) throw InputError(where + ": .npy header runs past the end (truncated?)");
  const std::string header = bytes.substr(header_start, header_length);
  NpyArray array;
  array.where = where;
  // Hand-written scanning, not std::regex: libstdc++'s regex recurses once per character matched
  // and overflows the stack on a long header (a 100 kB 'descr' crashed the process).
  std::string descr_text, dims;
  if (!header_value(header, "descr", '\'', '\'', descr_text) || descr_text.empty())
    throw InputError(where + ": .npy header has no simple 'descr' (structured dtypes are not supported)");
  array.descr = descr_text;
  array.fortran_order = header.find("'fortran_order': True") != std::string::npos;
  if (!header_value(header, "shape", '(', ')', dims)) throw InputError(where + ": .npy header has no 'shape'");
  const uint64_t item = element_size(array.descr, where);
  uint64_t count = 1;
  for (size_t pos = 0; (pos = dims.find_first_of("0123456789", pos)) != std::string::npos;) {
    const size_t digits_end = std::min(dims.find_first_not_of("0123456789", pos), dims.size());
    const std::string digits = dims.substr(pos, digits_end - pos);
    pos = digits_end;
    if (digits.size() > 15) throw InputError(where + ": shape too large");
    const uint64_t dim = std::stoull(digits);
    array.shape.push_back(static_cast<int64_t>(dim));
    if (dim != 0 && count > kMaxMemberBytes / dim) throw InputError(where + ": shape too large");
    count *= dim;
  }
  if (item != 0 && count > kMaxMemberBytes / item) throw InputError(where + ": shape too large");
  const uint64_t expected = count * item;
  const size_t data_start = header_start + header_length;
  if (bytes.size() - data_start != expected)
    throw InputError(where + ": data has " + std::to_string(bytes.size() - data_start) + " bytes, shape and dtype need " +
                     std::to_string(expected) + (bytes.size() - data_start < expected ? " (truncated?)" : ""));
  array.data = bytes.substr(data_start);
  return array;
}

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

at::Tensor NpyArray::tensor() const {
  at::ScalarType type;
  const std::string kind = descr.substr(1);
  if (kind == "f4") type = at::kFloat;
  else if (kind == "f8") type = at::kDouble;
  else if (kind == "f2") type = at::kHalf;
  else if (kind == "i8") type = at::kLong;
  else if (kind == "i4") type = at::kInt;
  else if (kind == "i2") type = at::kShort;
  else if (kind == "i1") type = at::kChar;
  else if (kind == "u1") type = at::kByte;
  else if (kind == "b1") type = at::kBool;
  else throw InputError(where + ": dtype '" + descr + "' is not a supported numeric type");
  std::vector<int64_t> sizes = shape;
  if (fortran_order) std::reverse(sizes.begin(), sizes.end());
  at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(type));
  // An empty array has no storage (data_ptr() is null): memcpy(nullptr, ..., 0) is undefined.
  if (!data.empty()) std::memcpy(out.data_ptr(), data.data(), data.size());
  if (fortran_order && out.dim() > 1) {
    std::vector<int64_t> order(out.dim());
    for (int64_t i = 0; i < out.dim(); ++i) order[i] = out.dim() - 1 - i;
    out = out.permute(order).contiguous();
  }
  return out;
}

std::string NpyArray::string() const {
  if (numel() != 1) throw InputError(where + ": expected a single string, found " + std::to_string(numel()) + " elements");
  if (descr.size() > 2 && descr[1] == 'U') {
    std::string out;
    for (size_t i = 0; i + 4 <= data.size(); i += 4) {
      uint32_t cp;
      std::memcpy(&cp, data.data() + i, 4);
      if (cp == 0) break;  // NumPy pads with NUL code units
      append_utf8(out, cp > 0x10FFFF ? 0xFFFD : cp);
    }
    return out;
  }
  if (descr.size() > 2 && descr[1] == 'S') return std::string(data.c_str(), strnlen(data.c_str(), data.size()));
  throw InputError(where + ": dtype '" + descr + "' is not a string");
}

namespace {
std::string npy_with_header(const std::string& descr, const std::vector<int64_t>& shape, const std::string& data) {
  // The header NumPy itself writes: dict repr, padded with spaces to a multiple of 64, then "\n".
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
  const std::vector<uint32_t> code_points = utf8_code_points(text);
  std::string data;
  for (uint32_t cp : code_points) data.append(reinterpret_cast<const char*>(&cp), 4);
  return npy_with_header("<U" + std::to_string(code_points.size()), {}, data);
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
    fail_input(path.string(), std::string("not an .npz (zip) file or truncated: ") + zip_error_strerror(&error));
  }
  std::unique_ptr<zip_t, int (*)(zip_t*)> guard(archive, zip_close);
  std::map<std::string, NpyArray> members;
  const zip_int64_t entries = zip_get_num_entries(archive, 0);
  for (zip_int64_t i = 0; i < entries; ++i) {
    zip_stat_t stat;
    if (zip_stat_index(archive, i, 0, &stat) != 0) fail_input(path.string(), "unreadable zip entry");
    std::string name = (stat.valid & ZIP_STAT_NAME) && stat.name != nullptr ? stat.name : "#" + std::to_string(i);
    const std::string where = path.string() + ": member '" + name + "'";
    if (stat.size > kMaxMemberBytes) throw InputError(where + ": declared size too large");
    // The declared size comes from the archive itself: before allocating it, check it against what
    // the archive can hold (a stored member is as large as its bytes in the file, deflate expands
    // at most ~1032:1), so a lying or truncated directory is refused instead of allocated.
    const bool stored = (stat.valid & ZIP_STAT_COMP_METHOD) && stat.comp_method == ZIP_CM_STORE;
    if (!stored && !((stat.valid & ZIP_STAT_COMP_METHOD) && stat.comp_method == ZIP_CM_DEFLATE))
      throw InputError(where + ": compression method " + std::to_string(stat.comp_method) +
                       " is neither stored nor deflate (what np.savez / np.savez_compressed write)");
    const zip_uint64_t compressed = (stat.valid & ZIP_STAT_COMP_SIZE) ? stat.comp_size : bytes.size();
    if (compressed > bytes.size() || stat.size > (stored ? compressed : compressed * 1032 + 1024))
      throw InputError(where + ": declares " + std::to_string(stat.size) + " bytes (" + std::to_string(compressed) +
                       " compressed) but the archive has only " + std::to_string(bytes.size()) +
                       " bytes: truncated or corrupt");
    zip_file_t* file = zip_fopen_index(archive, i, 0);
    if (!file) throw InputError(where + ": cannot open (" + std::string(zip_strerror(archive)) + ")");
    std::string content(stat.size, '\0');
    const zip_int64_t read = zip_fread(file, content.data(), stat.size);
    // Reading past the end checks the CRC of a member read in full.
    char extra;
    const zip_int64_t trailing = read >= 0 ? zip_fread(file, &extra, 1) : 0;
    const std::string reason = zip_file_strerror(file);
    zip_fclose(file);
    if (read < 0 || trailing < 0 || static_cast<zip_uint64_t>(read) != stat.size)
      throw InputError(where + ": truncated or corrupt (" + reason + ")");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    members[name] = parse_npy(content, where);
  }
  return members;
}

void write_npz(const std::filesystem::path& path, const std::map<std::string, std::string>& members) {
  if (members.empty()) throw std::invalid_argument("write_npz: no members to write to " + path.string());
  // Stored members with a fixed DOS timestamp (1980-01-01 00:00) and fixed attributes, in name order,
  // so that the bytes depend on the content only; libzip adds Zip64 records where sizes need them.
  constexpr zip_uint16_t kDosTime = 0, kDosDate = (1 << 5) | 1;
  const std::string file = path.string();
  write_file_atomic_with(path, [&](const std::filesystem::path& temp) {
    int open_error = 0;
    zip_t* archive = zip_open(temp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &open_error);
    if (!archive) {
      zip_error_t error;
      zip_error_init_with_code(&error, open_error);
      const std::string reason = zip_error_strerror(&error);
      zip_error_fini(&error);
      fail_input(file, "cannot create: " + reason);
    }
    auto fail = [&](const std::string& what) {
      const std::string reason = zip_strerror(archive);
      zip_discard(archive);
      fail_input(file, what + ": " + reason);
    };
    for (const auto& [name, bytes] : members) {
      // The buffer is read at zip_close, while `members` is still alive.
      zip_source_t* source = zip_source_buffer(archive, bytes.data(), bytes.size(), /*freep=*/0);
      if (!source) fail("cannot add member '" + name + "'");
      const zip_int64_t index = zip_file_add(archive, (name + ".npy").c_str(), source, ZIP_FL_ENC_UTF_8);
      if (index < 0) {
        zip_source_free(source);
        fail("cannot add member '" + name + "'");
      }
      const auto entry = static_cast<zip_uint64_t>(index);
      if (zip_set_file_compression(archive, entry, ZIP_CM_STORE, 0) != 0 ||
          zip_file_set_dostime(archive, entry, kDosTime, kDosDate, 0) != 0 ||
          zip_file_set_external_attributes(archive, entry, 0, ZIP_OPSYS_UNIX, 0100644u << 16) != 0)
        fail("cannot set the attributes of member '" + name + "'");
    }
    if (zip_close(archive) != 0) fail("write failed (disk full?)");
  });
}

}  // namespace rc
