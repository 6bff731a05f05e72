#include "rome_collapse/model/hub_cache.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "rome_collapse/util/error.h"

namespace rc {
namespace fs = std::filesystem;
namespace {

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  return text;
}

// models--org--name/ -> snapshots/<refs/main>, or the only snapshot; "" when neither applies.
fs::path snapshot_of_repo(const fs::path& repo, std::vector<std::string>& looked) {
  const fs::path ref = repo / "refs" / "main";
  std::error_code error;
  if (fs::is_regular_file(ref, error)) {
    std::string hash;
    {
      std::FILE* file = std::fopen(ref.c_str(), "rb");
      if (file) {
        char buffer[128];
        const size_t n = std::fread(buffer, 1, sizeof buffer, file);
        std::fclose(file);
        hash = trim(std::string(buffer, n));
      }
    }
    const fs::path snapshot = repo / "snapshots" / hash;
    if (!hash.empty() && fs::is_directory(snapshot, error)) return snapshot;
    looked.push_back(snapshot.string() + " (named by " + ref.string() + ", missing)");
    return {};
  }
  std::vector<fs::path> snapshots;
  if (fs::is_directory(repo / "snapshots", error))
    for (const auto& entry : fs::directory_iterator(repo / "snapshots", error))
      if (entry.is_directory()) snapshots.push_back(entry.path());
  if (snapshots.size() == 1) return snapshots[0];
  looked.push_back(ref.string() + " (missing; " + std::to_string(snapshots.size()) + " snapshots, cannot choose)");
  return {};
}

bool is_repo_folder(const fs::path& path) {
  const std::string name = path.filename().string().empty() ? path.parent_path().filename().string()
                                                            : path.filename().string();
  std::error_code error;
  return name.rfind("models--", 0) == 0 && fs::is_directory(path / "snapshots", error);
}

// "org/name" -> models--org--name; a bare name -> models--name and models--*--name.
std::vector<fs::path> repo_candidates(const fs::path& root, const std::string& name) {
  std::vector<fs::path> found;
  std::error_code error;
  if (name.find('/') != std::string::npos) {
    std::string folder = "models--" + name;
    for (size_t at = folder.find('/'); at != std::string::npos; at = folder.find('/')) folder.replace(at, 1, "--");
    if (fs::is_directory(root / folder, error)) found.push_back(root / folder);
    return found;
  }
  if (fs::is_directory(root / ("models--" + name), error)) found.push_back(root / ("models--" + name));
  const std::string suffix = "--" + name;
  if (fs::is_directory(root, error))
    for (const auto& entry : fs::directory_iterator(root, error)) {
      const std::string folder = entry.path().filename().string();
      if (entry.is_directory() && folder.rfind("models--", 0) == 0 && folder.size() > suffix.size() + 8 &&
          folder.compare(folder.size() - suffix.size(), suffix.size(), suffix) == 0 &&
          folder.find("--", 8) == folder.size() - suffix.size())
        found.push_back(entry.path());
    }
  return found;
}

}  // namespace

std::vector<fs::path> hub_cache_roots() {
  auto env = [](const char* name) -> std::string {
    const char* value = std::getenv(name);
    return value && *value ? value : "";
  };
  if (!env("HF_HUB_CACHE").empty()) return {env("HF_HUB_CACHE")};
  if (!env("HUGGINGFACE_HUB_CACHE").empty()) return {env("HUGGINGFACE_HUB_CACHE")};  // the older name
  if (!env("HF_HOME").empty()) return {fs::path(env("HF_HOME")) / "hub"};
  if (!env("XDG_CACHE_HOME").empty()) return {fs::path(env("XDG_CACHE_HOME")) / "huggingface" / "hub"};
  if (!env("HOME").empty()) return {fs::path(env("HOME")) / ".cache" / "huggingface" / "hub"};
  return {};
}

std::string resolve_model_location(const std::string& name, const fs::path& relative_to, const std::string& kind) {
  if (name.empty()) throw InputError(kind + ": none given");
  std::vector<std::string> looked;
  std::vector<fs::path> paths;
  const fs::path given(name);
  if (!relative_to.empty() && given.is_relative()) paths.push_back((relative_to / given).lexically_normal());
  if (paths.empty() || paths[0] != given.lexically_normal()) paths.push_back(given);
  std::error_code error;
  for (const fs::path& path : paths) {
    if (!fs::exists(path, error)) {
      looked.push_back(path.string() + " (no such file or directory)");
      continue;
    }
    if (!is_repo_folder(path)) return path.string();
    const fs::path snapshot = snapshot_of_repo(path, looked);
    if (!snapshot.empty()) return snapshot.string();
  }
  // Hub names are org/name or a bare name: no "." or ".." segments, no leading slash.
  const bool hub_name = given.is_relative() && name.find("..") == std::string::npos && name.rfind("./", 0) != 0 &&
                        std::count(name.begin(), name.end(), '/') <= 1;
  const std::vector<fs::path> roots = hub_name ? hub_cache_roots() : std::vector<fs::path>{};
  for (const fs::path& root : roots) {
    const std::vector<fs::path> repos = repo_candidates(root, name);
    if (repos.size() > 1) {
      std::string message = kind + " \"" + name + "\": several repos in the hub cache " + root.string() + " match:";
      for (const auto& repo : repos) message += " " + repo.filename().string();
      throw InputError(message + "; give the full org/name");
    }
    if (repos.empty()) {
      looked.push_back(root.string() + "/models--" + (name.find('/') == std::string::npos ? "[*--]" : "") + name +
                       " (Hugging Face hub cache)");
      continue;
    }
    const fs::path snapshot = snapshot_of_repo(repos[0], looked);
    if (!snapshot.empty()) return snapshot.string();
  }
  std::string message = kind + " \"" + name + "\" not found; looked for:";
  for (const auto& place : looked) message += "\n  " + place;
  if (hub_name && roots.empty()) message += "\n  (no hub cache: HF_HUB_CACHE, HF_HOME and HOME are unset)";
  message += "\n(a model directory, a llama2.c .bin, a hub-cache folder models--org--name/, or a name already in the "
             "Hugging Face cache; set HF_HUB_CACHE or HF_HOME to where the cache is; nothing is downloaded)";
  throw InputError(message);
}

}  // namespace rc
