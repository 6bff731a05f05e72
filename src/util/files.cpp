#include "rome_collapse/util/files.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "rome_collapse/util/error.h"

namespace rc {

std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail_input(path.string(), "file not found");
  if (std::filesystem::is_directory(path, ec)) fail_input(path.string(), "is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_input(path.string(), std::string("cannot open: ") + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {

// Creates the directory a file goes into; InputError naming the file when it cannot.
void create_parent_directory(const std::filesystem::path& path) {
  if (!path.has_parent_path()) return;
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) fail_input(path.string(), "cannot create the directory " + path.parent_path().string() + ": " + ec.message());
}

// pid + a per-process counter: concurrent writers (processes or threads) never share a temporary.
std::string temporary_name(const std::filesystem::path& path) {
  static std::atomic<uint64_t> counter{0};
  return path.string() + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

// fsync before the rename: after a crash the file is either the old one or the complete new one.
void sync_to_disk(const std::string& temp, const std::filesystem::path& path) {
  const int fd = ::open(temp.c_str(), O_RDONLY | O_CLOEXEC);
  const int saved_errno = fd < 0 ? errno : ::fsync(fd) != 0 ? errno : 0;
  if (fd >= 0) ::close(fd);
  if (saved_errno != 0)
    fail_input(path.string(), std::string("cannot sync the written file to disk: ") + std::strerror(saved_errno));
}

}  // namespace

void write_file_atomic_with(const std::filesystem::path& path,
                            const std::function<void(const std::filesystem::path&)>& write_temporary) {
  create_parent_directory(path);
  const std::string temp = temporary_name(path);
  try {
    write_temporary(temp);
    sync_to_disk(temp, path);
    if (std::rename(temp.c_str(), path.c_str()) != 0)
      fail_input(path.string(), std::string("cannot rename temporary file into place: ") + std::strerror(errno));
  } catch (...) {
    std::remove(temp.c_str());
    throw;
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::string& contents) {
  write_file_atomic_with(path, [&](const std::filesystem::path& temp) {
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail_input(path.string(), std::string("cannot write: ") + std::strerror(errno));
    const char* data = contents.data();
    size_t left = contents.size();
    int saved_errno = 0;
    while (left > 0) {
      const ssize_t n = ::write(fd, data, std::min<size_t>(left, size_t(1) << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        saved_errno = n < 0 ? errno : ENOSPC;
        break;
      }
      data += n;
      left -= static_cast<size_t>(n);
    }
    if (::close(fd) != 0 && saved_errno == 0) saved_errno = errno;
    if (saved_errno != 0)
      fail_input(path.string(), std::string("write failed (disk full?): ") + std::strerror(saved_errno));
  });
}

std::string json_text(const nlohmann::json& json, int indent) {
  return json.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

std::string sha256_file(const std::filesystem::path& path) { return sha256_hex(read_file(path)); }

}  // namespace rc
