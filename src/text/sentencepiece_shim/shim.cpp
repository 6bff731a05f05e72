// librome_sentencepiece_shim.so: SentencePiece behind a plain C API.
//
// Debian's libsentencepiece.so.0 bundles (and exports) its own protobuf-lite 3.14 while libtorch
// links the system libprotobuf (3.21); linking both into one executable cross-binds the protobuf
// symbols and the process crashes during static initialisation. rc::SentencePieceTokenizer
// therefore never links SentencePiece: it dlopen()s this library with RTLD_LOCAL | RTLD_DEEPBIND, so
// SentencePiece and its protobuf copy resolve against each other and stay out of the global scope.
//
// Only the extern "C" functions below are exported (the library is compiled with
// -fvisibility=hidden). Every pointer the shim hands out is released by a shim function.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

#define ROME_SPM_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// malloc'ed, NUL-terminated copy (freed with rome_spm_free_string); null if out of memory.
char* copy_string(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out == nullptr) return nullptr;
  std::memcpy(out, text.data(), text.size());
  out[text.size()] = '\0';
  return out;
}

void set_error(char** error, const std::string& message) {
  if (error != nullptr) *error = copy_string(message);
}

// True, with *error set, when SentencePiece reports a failure.
bool failed(const sentencepiece::util::Status& status, char** error) {
  if (status.ok()) return false;
  set_error(error, status.ToString());
  return true;
}

// body()'s result, or `failure` with *error set when it throws: no C++ exception may cross the C API.
template <class Result, class Body>
Result guarded(char** error, Result failure, Body body) {
  try {
    return body();
  } catch (const std::exception& e) {
    set_error(error, e.what());
  } catch (...) {
    set_error(error, "unknown exception");
  }
  return failure;
}

sentencepiece::SentencePieceProcessor* processor(void* handle) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle);
}

}  // namespace

// API version, so that the loader can refuse a stale shim from another build.
ROME_SPM_EXPORT int rome_spm_api_version() { return 1; }

// A processor from the serialized ModelProto bytes; null and *error set (free it with
// rome_spm_free_string) on failure.
ROME_SPM_EXPORT void* rome_spm_load(const char* bytes, size_t size, char** error) {
  if (error != nullptr) *error = nullptr;
  return guarded<void*>(error, nullptr, [&]() -> void* {
    auto proc = std::make_unique<sentencepiece::SentencePieceProcessor>();
    auto status = proc->LoadFromSerializedProto(std::string(bytes == nullptr ? "" : bytes, bytes == nullptr ? 0 : size));
    if (failed(status, error)) return nullptr;
    return proc.release();
  });
}

ROME_SPM_EXPORT void rome_spm_free(void* handle) { delete processor(handle); }

// Encodes `text` into a malloc'ed array of *count ids (*ids, freed with rome_spm_free_ids).
// Returns 0 on success, else nonzero with *error set.
ROME_SPM_EXPORT int rome_spm_encode(void* handle, const char* text, size_t size, int** ids, size_t* count,
                                    char** error) {
  if (error != nullptr) *error = nullptr;
  *ids = nullptr;
  *count = 0;
  return guarded(error, 1, [&] {
    std::vector<int> pieces;
    auto status = processor(handle)->Encode(std::string(text == nullptr ? "" : text, text == nullptr ? 0 : size),
                                            &pieces);
    if (failed(status, error)) return 1;
    if (!pieces.empty()) {
      *ids = static_cast<int*>(std::malloc(pieces.size() * sizeof(int)));
      if (*ids == nullptr) {
        set_error(error, "out of memory");
        return 1;
      }
      std::memcpy(*ids, pieces.data(), pieces.size() * sizeof(int));
    }
    *count = pieces.size();
    return 0;
  });
}

// Decodes `count` ids into a malloc'ed buffer *text of *size bytes (NUL-terminated as well; freed
// with rome_spm_free_string). Returns 0 on success, else nonzero with *error set.
ROME_SPM_EXPORT int rome_spm_decode(void* handle, const int* ids, size_t count, char** text, size_t* size,
                                    char** error) {
  if (error != nullptr) *error = nullptr;
  *text = nullptr;
  *size = 0;
  return guarded(error, 1, [&] {
    std::vector<int> pieces(ids, ids + count);
    std::string decoded;
    if (failed(processor(handle)->Decode(pieces, &decoded), error)) return 1;
    *text = copy_string(decoded);
    if (*text == nullptr) {
      set_error(error, "out of memory");
      return 1;
    }
    *size = decoded.size();
    return 0;
  });
}

ROME_SPM_EXPORT int rome_spm_piece_size(void* handle) { return processor(handle)->GetPieceSize(); }
ROME_SPM_EXPORT int rome_spm_bos_id(void* handle) { return processor(handle)->bos_id(); }
ROME_SPM_EXPORT int rome_spm_eos_id(void* handle) { return processor(handle)->eos_id(); }
ROME_SPM_EXPORT int rome_spm_unk_id(void* handle) { return processor(handle)->unk_id(); }

ROME_SPM_EXPORT void rome_spm_free_ids(int* ids) { std::free(ids); }
ROME_SPM_EXPORT void rome_spm_free_string(char* text) { std::free(text); }
