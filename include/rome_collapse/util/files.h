#pragma once
// Small file helpers: whole-file reads with clear errors, atomic writes, hashing.
#include <cstdint>
#include <filesystem>
#include <string>

namespace rc {

// Reads the whole file; InputError naming the file when it cannot.
std::string read_file(const std::filesystem::path& path);

// Writes through "<path>.tmp.<pid>" then rename(2), so a reader never sees half a file.
void write_file_atomic(const std::filesystem::path& path, const std::string& contents);

// Lower-case hex SHA-256 of bytes / of a file's contents.
std::string sha256_hex(const std::string& bytes);
std::string sha256_file(const std::filesystem::path& path);

}  // namespace rc
