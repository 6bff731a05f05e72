#pragma once
// NumPy .npy / .npz files (stored or deflated zip members, as np.savez / np.savez_compressed
// write them), enough for ROME's published second-moment statistics and the key dumps.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace rc {

struct NpyArray {
  std::string descr;            // "<f4", "<f8", "<i8", "<i4", "<U12", "|b1", ...
  std::vector<int64_t> shape;
  bool fortran_order = false;
  std::string data;             // raw bytes, C order unless fortran_order
  std::string where;            // "<file>: member '<name>'", for errors

  int64_t numel() const;
  at::Tensor tensor() const;    // numeric arrays (little-endian f2/f4/f8/i4/i8/u1/b1)
  std::string string() const;   // 0-d or 1-element unicode ("<U", UTF-8 out) or bytes ("|S") arrays
};

// Parses one .npy payload; `where` names it in errors (InputError for anything malformed:
// bad magic, truncated header, big-endian or unsupported dtype, data length not matching the shape).
NpyArray parse_npy(const std::string& bytes, const std::string& where);
std::string serialize_npy(const at::Tensor& tensor);       // float32/float64/int64/int32/bool, C order
std::string serialize_npy_string(const std::string& text); // 0-d "<U{n}" array from UTF-8 text

// All members of an .npz; keys without the ".npy" suffix. InputError naming the file and member.
std::map<std::string, NpyArray> read_npz(const std::filesystem::path& path);
// Writes members (name -> .npy bytes; at least one) as stored zip entries with a fixed timestamp, in
// name order, atomically (temporary file, fsync, rename), so the same content always gives the same
// bytes. np.load reads the result; Zip64 records are written where sizes need them (libzip).
void write_npz(const std::filesystem::path& path, const std::map<std::string, std::string>& members);

}  // namespace rc
