#include "rome_collapse/util/files.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <memory>
#include <vector>
#include <fcntl.h>
#include <signal.h>
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

// The pid in "<name>.tmp.<pid>.<n>", our temporaries' names (libzip writes an .npz through its own
// "<our temporary>.XXXXXX"); 0 for any other name.
int temporary_owner(const std::string& name) {
  const size_t tmp = name.rfind(".tmp.");
  if (tmp == std::string::npos || tmp == 0) return 0;
  const size_t dot = name.find('.', tmp + 5);
  if (dot == std::string::npos || dot == tmp + 5 || dot + 1 == name.size()) return 0;
  const std::string pid = name.substr(tmp + 5, dot - tmp - 5);
  std::string counter = name.substr(dot + 1);
  const size_t libzip = counter.find('.');
  if (libzip != std::string::npos && counter.size() - libzip == 7) counter.resize(libzip);
  auto digits = [](const std::string& s) { return s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos; };
  return digits(pid) && digits(counter) ? std::stoi(pid) : 0;
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
  remove_stale_temporaries(path.has_parent_path() ? path.parent_path() : std::filesystem::path("."));
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
      fail_input(path.string(), std::string("write failed: ") + std::strerror(saved_errno));
  });
}

std::string json_text(const nlohmann::json& json, int indent) {
  return json.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {
std::string hex_of(const unsigned char* digest, unsigned int length) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}
}  // namespace

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  return hex_of(digest, length);
}

std::string sha256_file(const std::filesystem::path& path) {
  // Streamed: model files may be larger than memory.
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail_input(path.string(), "file not found");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_input(path.string(), std::string("cannot open: ") + std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr);
  std::vector<char> buffer(size_t(1) << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(context.get(), buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) fail_input(path.string(), "read error while hashing");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(context.get(), digest, &length);
  return hex_of(digest, length);
}

void remove_stale_temporaries(const std::filesystem::path& dir) {
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const int pid = temporary_owner(name);
    if (pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // its writer may still be at work
    std::error_code ignored;
    std::filesystem::remove(it->path(), ignored);
  }
}

}  // namespace rc
