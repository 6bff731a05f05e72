#include "rome_collapse/text/sentencepiece_tokenizer.h"

#include <dlfcn.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <system_error>

#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"

// SentencePiece is reached only through librome_sentencepiece_shim.so (src/text/sentencepiece_shim/),
// loaded here with dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND). Debian's libsentencepiece.so.0
// bundles and exports protobuf-lite 3.14 while libtorch links libprotobuf 3.21: linked into one
// executable, the dynamic linker cross-binds their symbols and the process crashes before main.
// RTLD_LOCAL keeps SentencePiece's protobuf out of the global scope (so libtorch never sees it) and
// RTLD_DEEPBIND makes SentencePiece bind to its own protobuf copy rather than libtorch's.

#if defined(__SANITIZE_ADDRESS__)
#define ROME_SPM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ROME_SPM_ASAN 1
#endif
#endif

namespace rc {
namespace {

namespace fs = std::filesystem;

constexpr const char* kShimName = "librome_sentencepiece_shim.so";
constexpr int kShimApiVersion = 1;

// The shim's C API (src/text/sentencepiece_shim/shim.cpp).
struct ShimApi {
  void* (*load)(const char* bytes, size_t size, char** error) = nullptr;
  void (*free_processor)(void* handle) = nullptr;
  int (*encode)(void* handle, const char* text, size_t size, int** ids, size_t* count, char** error) = nullptr;
  int (*decode)(void* handle, const int* ids, size_t count, char** text, size_t* size, char** error) = nullptr;
  int (*piece_size)(void* handle) = nullptr;
  int (*bos_id)(void* handle) = nullptr;
  int (*eos_id)(void* handle) = nullptr;
  int (*unk_id)(void* handle) = nullptr;
  void (*free_ids)(int* ids) = nullptr;
  void (*free_string)(char* text) = nullptr;
};

int dlopen_flags() {
#ifdef ROME_SPM_ASAN
  // The AddressSanitizer runtime refuses RTLD_DEEPBIND (it would bypass its malloc interceptors).
  // Without DEEPBIND, SentencePiece may bind to libtorch's protobuf, so SentencePiece may not work
  // in sanitizer builds whose process also loads libtorch (the text-layer tests do not).
  return RTLD_NOW | RTLD_LOCAL;
#else
  return RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif
}

// Where the shim may be, in order: $ROME_SENTENCEPIECE_SHIM (exclusively, when set); beside the
// running executable; the build directory (ROME_SHIM_DIR); the install libdir; the loader's own
// search path (LD_LIBRARY_PATH, ld.so.cache).
std::vector<std::string> shim_candidates() {
  if (const char* env = std::getenv("ROME_SENTENCEPIECE_SHIM"); env != nullptr && *env != '\0') return {env};
  std::vector<std::string> candidates;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec && !exe.empty()) candidates.push_back((exe.parent_path() / kShimName).string());
#ifdef ROME_SHIM_DIR
  candidates.push_back((fs::path(ROME_SHIM_DIR) / kShimName).string());
#endif
#ifdef ROME_SHIM_INSTALL_DIR
  candidates.push_back((fs::path(ROME_SHIM_INSTALL_DIR) / kShimName).string());
#endif
  candidates.push_back(kShimName);
  return candidates;
}

template <typename Fn>
void bind(void* library, const std::string& path, const char* name, Fn& fn) {
  dlerror();
  void* symbol = dlsym(library, name);
  if (symbol == nullptr) {
    const char* why = dlerror();
    throw std::runtime_error("SentencePiece shim " + path + " lacks " + name + " (" + (why ? why : "null symbol") +
                             "); rebuild it with this version of rome-collapse");
  }
  fn = reinterpret_cast<Fn>(symbol);
}

ShimApi load_shim() {
  std::string tried;
  for (const auto& path : shim_candidates()) {
    void* library = dlopen(path.c_str(), dlopen_flags());
    if (library == nullptr) {
      const char* why = dlerror();
      tried += "\n  " + path + ": " + (why ? why : "unknown dlopen error");
      continue;
    }
    int (*api_version)() = nullptr;
    bind(library, path, "rome_spm_api_version", api_version);
    if (api_version() != kShimApiVersion)
      throw std::runtime_error("SentencePiece shim " + path + " has API version " + std::to_string(api_version()) +
                               ", expected " + std::to_string(kShimApiVersion) + "; rebuild it");
    ShimApi api;
    bind(library, path, "rome_spm_load", api.load);
    bind(library, path, "rome_spm_free", api.free_processor);
    bind(library, path, "rome_spm_encode", api.encode);
    bind(library, path, "rome_spm_decode", api.decode);
    bind(library, path, "rome_spm_piece_size", api.piece_size);
    bind(library, path, "rome_spm_bos_id", api.bos_id);
    bind(library, path, "rome_spm_eos_id", api.eos_id);
    bind(library, path, "rome_spm_unk_id", api.unk_id);
    bind(library, path, "rome_spm_free_ids", api.free_ids);
    bind(library, path, "rome_spm_free_string", api.free_string);
    return api;  // the library stays loaded for the life of the process
  }
  throw std::runtime_error(std::string("the SentencePiece shim library ") + kShimName +
                           " was not found (it is built next to rome-collapse; set ROME_SENTENCEPIECE_SHIM to "
                           "its path). Tried:" + tried);
}

// Loaded once, thread-safely; a failed load throws and is retried by the next caller.
const ShimApi& shim() {
  static const ShimApi api = load_shim();
  return api;
}

// Takes ownership of a shim-allocated error string.
std::string take_error(char* error) {
  std::string message = error != nullptr ? error : "unknown error";
  if (error != nullptr) shim().free_string(error);
  return message;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_path, SentencePieceOptions options)
    : options_(options), description_("sentencepiece " + model_path.filename().string()), source_(model_path) {
  // Reading the bytes ourselves gives the house "file not found" error for a missing file.
  std::string serialized = read_file(model_path);
  const ShimApi& api = shim();
  char* error = nullptr;
  processor_ = api.load(serialized.data(), serialized.size(), &error);
  if (processor_ == nullptr) fail_input(model_path.string(), "not a SentencePiece model (" + take_error(error) + ")");
  vocab_size_ = api.piece_size(processor_);
  if (vocab_size_ <= 0) {
    api.free_processor(processor_);
    processor_ = nullptr;
    fail_input(model_path.string(), "SentencePiece model has no pieces");
  }
  if (api.bos_id(processor_) >= 0) bos_id_ = api.bos_id(processor_);
  if (api.eos_id(processor_) >= 0) eos_id_ = api.eos_id(processor_);
  if (api.unk_id(processor_) >= 0) unk_id_ = api.unk_id(processor_);
}

SentencePieceTokenizer::~SentencePieceTokenizer() {
  if (processor_ != nullptr) shim().free_processor(processor_);
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text, bool add_bos) const {
  const ShimApi& api = shim();
  int* pieces = nullptr;
  size_t count = 0;
  char* error = nullptr;
  if (api.encode(processor_, text.data(), text.size(), &pieces, &count, &error) != 0)
    throw std::runtime_error(description_ + ": encoding failed: " + take_error(error));
  std::unique_ptr<int, void (*)(int*)> owned(pieces, api.free_ids);
  std::vector<int64_t> ids;
  ids.reserve(count + 1);
  if (add_bos && bos_id_) ids.push_back(*bos_id_);
  ids.insert(ids.end(), pieces, pieces + count);
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> pieces;
  pieces.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size_)
      throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " + description_ +
                              " (size " + std::to_string(vocab_size_) + ")");
    if (id == bos_id_ || id == eos_id_) continue;
    pieces.push_back(static_cast<int>(id));
  }
  const ShimApi& api = shim();
  char* text = nullptr;
  size_t size = 0;
  char* error = nullptr;
  if (api.decode(processor_, pieces.data(), pieces.size(), &text, &size, &error) != 0)
    throw std::runtime_error(description_ + ": decoding failed: " + take_error(error));
  std::string decoded(text, size);
  api.free_string(text);
  return decoded;
}

}  // namespace rc
