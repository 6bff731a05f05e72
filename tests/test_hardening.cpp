// Hostile inputs and long runs (issue 8): every malformed input is answered with an rc::InputError
// that names the file and the field (exit 2 from the CLI), absurd sizes are refused before anything
// is allocated, a model loads in memory close to its file size (memory-mapped), outputs are never
// half-written, and an interrupted batch resumes without losing or duplicating a case.
//
// MalformedInputs.Table prints the table the README shows ("| input | answer |").
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "rome_collapse/io/dataset.h"
#include "rome_collapse/io/npz.h"
#include "rome_collapse/io/request_file.h"
#include "rome_collapse/io/safetensors.h"
#include "rome_collapse/io/text_file.h"
#include "rome_collapse/model/causal_lm.h"
#include "rome_collapse/model/checkpoint.h"
#include "rome_collapse/model/config.h"
#include "rome_collapse/text/tokenizer.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/test_support.h"

namespace rc {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;


void put(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string le32(int32_t value) { return std::string(reinterpret_cast<const char*>(&value), 4); }
std::string le64(uint64_t value) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return out;
}

// 8-byte length + header text + data.
std::string safetensors(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

std::string floats(size_t count) { return std::string(count * 4, '\0'); }

// A llama2.c header (dim, hidden, layers, heads, kv_heads, vocab, seq_len).
std::string llama2c_header(std::initializer_list<int32_t> fields) {
  std::string out;
  for (int32_t f : fields) out += le32(f);
  return out;
}

// A valid llama2.c tokenizer: <unk>, <s>, </s>, the 256 byte pieces, then `extra` pieces.
std::string llama2c_tokenizer(int32_t max_length = 6, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  char name[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    pieces.push_back(name);
  }
  pieces.insert(pieces.end(), extra.begin(), extra.end());
  std::string out = le32(max_length);
  for (const auto& piece : pieces) {
    float score = 0;
    out += std::string(reinterpret_cast<const char*>(&score), 4) + le32(static_cast<int32_t>(piece.size())) + piece;
  }
  return out;
}

uint32_t crc32(const std::string& bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char byte : bytes) {
    c ^= byte;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}

// A hand-written one-member stored zip whose directory declares `declared` bytes for the member.
std::string lying_zip(const std::string& name, const std::string& data, uint32_t declared) {
  const uint32_t crc = declared == data.size() ? crc32(data) : 0;
  auto put16 = [](std::string& s, uint32_t v) { s += char(v & 0xff), s += char((v >> 8) & 0xff); };
  auto put32 = [&](std::string& s, uint32_t v) { put16(s, v & 0xffff), put16(s, v >> 16); };
  std::string local, central, end;
  put32(local, 0x04034b50), put16(local, 20), put16(local, 0), put16(local, 0), put16(local, 0), put16(local, 0x21);
  put32(local, crc), put32(local, declared), put32(local, declared), put16(local, name.size()), put16(local, 0);
  local += name + data;
  put32(central, 0x02014b50), put16(central, 20), put16(central, 20), put16(central, 0), put16(central, 0);
  put16(central, 0), put16(central, 0x21), put32(central, crc), put32(central, declared), put32(central, declared);
  put16(central, name.size()), put16(central, 0), put16(central, 0), put16(central, 0), put16(central, 0);
  put32(central, 0), put32(central, 0);
  central += name;
  put32(end, 0x06054b50), put16(end, 0), put16(end, 0), put16(end, 1), put16(end, 1);
  put32(end, central.size()), put32(end, local.size()), put16(end, 0);
  return local + central + end;
}

json gpt2_config(int64_t vocab = 8, int64_t embd = 4, int64_t layers = 1) {
  return {{"model_type", "gpt2"}, {"vocab_size", vocab}, {"n_embd", embd}, {"n_layer", layers},
          {"n_head", 2},          {"n_positions", 4},    {"n_inner", 8}};
}

// ---- the table --------------------------------------------------------------------------------

enum class Reader { Safetensors, Checkpoint, Config, Tokenizer, Texts, Npz, Dataset, Requests };

struct Case {
  std::string input;                              // what the row shows
  Reader reader;
  std::map<std::string, std::string> files;       // relative name -> bytes
  std::string target;                             // the path handed to the reader (relative)
  std::vector<std::string> expected;              // substrings of the message (besides the file)
  std::string named_file;                         // file the message must name ("" = target)
};

void run_reader(Reader reader, const fs::path& path) {
  switch (reader) {
    case Reader::Safetensors: (void)SafetensorsFile::open(path); break;
    case Reader::Checkpoint: (void)load_checkpoint(path, at::kFloat); break;
    case Reader::Config: (void)load_hf_config(path); break;
    case Reader::Tokenizer: (void)load_tokenizer(path); break;
    case Reader::Texts: (void)read_texts(path); break;
    case Reader::Npz: (void)read_npz(path); break;
    case Reader::Dataset: (void)read_dataset(path); break;
    case Reader::Requests: (void)read_request_file(path); break;
  }
}

// `levels` nested lists around `inner`: the shape of the 100,000-level inputs of issue 17.
std::string nested(size_t levels, const std::string& inner = "1") {
  return std::string(levels, '[') + inner + std::string(levels, ']');
}

// The second round of hostile inputs (issue 17): nesting, duplicates, mislabelled dtypes, layouts.
std::vector<Case> issue17_cases() {
  const std::string deep = nested(100000);
  auto config_with = [](const std::string& field, const std::string& value) {
    std::string text = gpt2_config().dump();
    const std::string key = "\"" + field + "\":";
    const size_t at = text.find(key) + key.size();
    const size_t end = text.find_first_of(",}", at);
    return text.substr(0, at) + value + text.substr(end);
  };
  const std::string ok_tensor = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  return {
      {"config.json: n_layer nested 100,000 levels", Reader::Config, {{"config.json", config_with("n_layer", deep)}},
       "config.json", {"not valid JSON", "nested deeper than 64 levels"}},
      {"config.json: model_type nested 100,000 levels", Reader::Config,
       {{"config.json", config_with("model_type", deep)}}, "config.json", {"nested deeper than 64 levels"}},
      {"config.json: n_layer nested 60 levels (echoed as an excerpt)", Reader::Config,
       {{"config.json", config_with("n_layer", nested(60))}}, "config.json", {"'n_layer'", "[[[[", "bytes)"}},
      {"config.json: model_type a 1 MB string", Reader::Config,
       {{"config.json", config_with("model_type", "\"" + std::string(1 << 20, 'x') + "\"")}}, "config.json",
       {"'model_type'", "xxxx… (1048576 bytes)"}},
      {"config.json: duplicate key n_layer", Reader::Config,
       {{"config.json", R"({"model_type":"gpt2","n_layer":1,"n_layer":12})"}}, "config.json",
       {"duplicate key \"n_layer\""}},
      {"safetensors: shape nested 100,000 levels", Reader::Safetensors,
       {{"m.safetensors", safetensors(R"({"w":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,8]}})", floats(2))}},
       "m.safetensors", {"header is not valid JSON", "nested deeper than 64 levels"}},
      {"safetensors: header entry nested 100,000 levels", Reader::Safetensors,
       {{"m.safetensors", safetensors("{" + ok_tensor + R"(,"v":)" + deep + "}", floats(2))}}, "m.safetensors",
       {"nested deeper than 64 levels"}},
      {"safetensors: duplicate tensor name", Reader::Safetensors,
       {{"m.safetensors", safetensors("{" + ok_tensor + "," + ok_tensor + "}", floats(2))}}, "m.safetensors",
       {"duplicate key \"w\""}},
      {"checkpoint: index.json nested 100,000 levels", Reader::Checkpoint,
       {{"d/config.json", gpt2_config().dump()}, {"d/model.safetensors.index.json", R"({"weight_map":)" + deep + "}"}},
       "d", {"nested deeper than 64 levels"}, "d/model.safetensors.index.json"},
      {"checkpoint: F32 weight labelled I32 (same byte count)", Reader::Checkpoint,
       {{"d/config.json", gpt2_config().dump()},
        {"d/model.safetensors",
         safetensors(R"({"transformer.wte.weight":{"dtype":"I32","shape":[8,4],"data_offsets":[0,128]}})", floats(32))}},
       "d", {"transformer.wte.weight", "integer dtype Int", "floating-point"}, "d/model.safetensors"},
      {"tokenizer: vocab.json nested 100,000 levels", Reader::Tokenizer,
       {{"t/vocab.json", R"({"a":)" + deep + "}"}, {"t/merges.txt", "a b\n"}}, "t", {"nested deeper than 64 levels"},
       "t/vocab.json"},
      {"tokenizer: vocab.json two tokens with one id", Reader::Tokenizer,
       {{"t/vocab.json", R"({"a": 0, "b": 0})"}, {"t/merges.txt", "a b\n"}}, "t", {"'a'", "'b'", "same id 0"},
       "t/vocab.json"},
      {"tokenizer: tokenizer.json nested 100,000 levels", Reader::Tokenizer,
       {{"t/tokenizer.json", R"({"model":)" + deep + "}"}}, "t/tokenizer.json", {"nested deeper than 64 levels"}},
      {"texts: JSON list nested 100,000 levels", Reader::Texts, {{"t.json", deep}}, "t.json",
       {"nested deeper than 64 levels"}},
      {"texts: JSONL line nested 100,000 levels", Reader::Texts, {{"t.jsonl", "{\"text\": " + deep + "}\n"}},
       "t.jsonl", {"line 1", "nested deeper than 64 levels"}},
      {"dataset: record nested 100,000 levels", Reader::Dataset, {{"d.json", "[{\"prompt\": " + deep + "}]"}}, "d.json",
       {"nested deeper than 64 levels"}},
      {"dataset: duplicate key in a record", Reader::Dataset,
       {{"d.json", R"([{"prompt": "A is", "subject": "A", "target_new": "x", "target_new": "y"}])"}}, "d.json",
       {"duplicate key \"target_new\""}},
      {"requests: a JSON object, not a list", Reader::Requests, {{"r.json", R"({"a": 1})"}}, "r.json",
       {"expected a JSON list of requests", "object {\"a\":1}"}},
      {"requests: nested 100,000 levels", Reader::Requests, {{"r.json", deep}}, "r.json",
       {"nested deeper than 64 levels"}},
  };
}

std::vector<Case> malformed_cases() {
  const std::string cfg = gpt2_config().dump();
  const std::string ok_tensor = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::vector<Case> cases = {
      // safetensors
      {"safetensors: empty file", Reader::Safetensors, {{"m.safetensors", ""}}, "m.safetensors", {"empty file"}},
      {"safetensors: 5 bytes", Reader::Safetensors, {{"m.safetensors", "abcde"}}, "m.safetensors", {"too short"}},
      {"safetensors: header length 2^60", Reader::Safetensors, {{"m.safetensors", le64(1ull << 60) + "{}"}},
       "m.safetensors", {"exceeds the file size"}},
      {"safetensors: header not JSON", Reader::Safetensors, {{"m.safetensors", safetensors("{\"w\": [")}},
       "m.safetensors", {"not valid JSON"}},
      {"safetensors: header a list", Reader::Safetensors, {{"m.safetensors", safetensors("[1,2]")}}, "m.safetensors",
       {"not a JSON object"}},
      {"safetensors: entry without dtype", Reader::Safetensors,
       {{"m.safetensors", safetensors(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", floats(2))}}, "m.safetensors",
       {"tensor 'w'", "lacks 'dtype'"}},
      {"safetensors: unknown dtype F99", Reader::Safetensors,
       {{"m.safetensors", safetensors(R"({"w":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}})", floats(2))}},
       "m.safetensors", {"tensor 'w'", "unknown dtype \"F99\""}},
      {"safetensors: negative dimension", Reader::Safetensors,
       {{"m.safetensors", safetensors(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", floats(2))}},
       "m.safetensors", {"tensor 'w'", "shape must hold non-negative integers"}},
      {"safetensors: tensor [2^20, 2^20] declared in a 100-byte file", Reader::Safetensors,
       {{"m.safetensors",
         safetensors(R"({"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}})")}},
       "m.safetensors", {"tensor 'w'", "beyond the end of the data section"}},
      {"safetensors: shape overflowing 64 bits", Reader::Safetensors,
       {{"m.safetensors",
         safetensors(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", floats(2))}},
       "m.safetensors", {"tensor 'w'", "overflows"}},
      {"safetensors: shape/offsets size mismatch", Reader::Safetensors,
       {{"m.safetensors", safetensors(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", floats(2))}},
       "m.safetensors", {"tensor 'w'", "size mismatch"}},
      {"safetensors: overlapping tensors", Reader::Safetensors,
       {{"m.safetensors", safetensors("{" + ok_tensor + R"(,"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                      floats(2))}},
       "m.safetensors", {"overlap"}},
      {"safetensors: overlap hidden behind an empty tensor", Reader::Safetensors,
       {{"m.safetensors", safetensors("{" + ok_tensor + R"(,"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                                      R"("v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", floats(2))}},
       "m.safetensors", {"tensor 'v'", "overlap those of tensor 'w'"}},
      {"safetensors: __metadata__ value not a string", Reader::Safetensors,
       {{"m.safetensors", safetensors(R"({"__metadata__":{"format":1}})")}}, "m.safetensors",
       {"__metadata__ field 'format'"}},
      // config.json (beside a valid tiny safetensors)
      {"config.json: not JSON", Reader::Config, {{"config.json", "{\"model_type\": "}}, "config.json",
       {"not valid JSON"}},
      {"config.json: no model_type", Reader::Config, {{"config.json", R"({"n_embd": 4})"}}, "config.json",
       {"'model_type'"}},
      {"config.json: model_type \"bert\"", Reader::Config, {{"config.json", R"({"model_type": "bert"})"}},
       "config.json", {"'model_type'", "supported model types"}},
      {"config.json: n_layer \"12\" (a string)", Reader::Config,
       {{"config.json", [] { auto c = gpt2_config(); c["n_layer"] = "12"; return c.dump(); }()}}, "config.json",
       {"'n_layer'", "positive integer"}},
      {"config.json: n_head 0", Reader::Config,
       {{"config.json", [] { auto c = gpt2_config(); c["n_head"] = 0; return c.dump(); }()}}, "config.json",
       {"'n_head'", "positive integer"}},
      {"config.json: n_embd 10^9", Reader::Config, {{"config.json", gpt2_config(8, 1000000000).dump()}}, "config.json",
       {"'n_embd'", "sanity limit"}},
      {"config.json: n_layer 10^6", Reader::Config, {{"config.json", gpt2_config(8, 4, 1000000).dump()}},
       "config.json", {"'n_layer'", "sanity limit"}},
      {"config.json: vocab_size 2^40", Reader::Config, {{"config.json", gpt2_config(int64_t{1} << 40).dump()}},
       "config.json", {"'vocab_size'", "sanity limit"}},
      {"config.json: vocab_size 2^64-1", Reader::Config,
       {{"config.json", R"({"model_type":"gpt2","vocab_size":18446744073709551615,"n_embd":4,"n_layer":1,"n_head":2,"n_positions":4})"}},
       "config.json", {"'vocab_size'"}},
      {"config.json: n_embd not divisible by n_head", Reader::Config,
       {{"config.json", [] { auto c = gpt2_config(); c["n_head"] = 3; return c.dump(); }()}}, "config.json",
       {"'n_embd'", "divisible"}},
      {"config.json: Llama with rope_scaling llama3", Reader::Config,
       {{"config.json", R"({"model_type":"llama","vocab_size":8,"hidden_size":8,"num_hidden_layers":1,
          "num_attention_heads":2,"intermediate_size":8,"max_position_embeddings":8,
          "rope_scaling":{"rope_type":"llama3"}})"}},
       "config.json", {"'rope_scaling.rope_type'"}},
      // checkpoints
      {"checkpoint: directory without weights", Reader::Checkpoint, {{"d/config.json", cfg}}, "d",
       {"neither model.safetensors"}},
      {"checkpoint: pickle pytorch_model.bin", Reader::Checkpoint,
       {{"d/config.json", cfg}, {"d/pytorch_model.bin", "\x80\x02}q\x00."}}, "d", {"pickle", "safetensors"},
       "d/pytorch_model.bin"},
      {"checkpoint: model.safetensors without config.json", Reader::Checkpoint,
       {{"d/model.safetensors", safetensors("{" + ok_tensor + "}", floats(2))}}, "d/model.safetensors",
       {"no config.json"}},
      {"checkpoint: config.json n_layer 4000, 1-tensor file", Reader::Checkpoint,
       {{"d/config.json", gpt2_config(8, 4, 4000).dump()},
        {"d/model.safetensors", safetensors("{" + ok_tensor + "}", floats(2))}},
       "d", {"declares 4000 layers", "1 tensors"}, "d/model.safetensors"},
      {"checkpoint: tensor shape not what config.json implies", Reader::Checkpoint,
       {{"d/config.json", cfg},
        {"d/model.safetensors",
         safetensors(R"({"transformer.wte.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", floats(2))}},
       "d", {"transformer.wte.weight", "shape [2]", "implies [8, 4]"}, "d/model.safetensors"},
      {"llama2.c: 10-byte file", Reader::Checkpoint, {{"m.bin", std::string(10, '\1')}}, "m.bin",
       {"28-byte llama2.c header"}},
      {"llama2.c: header field n_layers 0", Reader::Checkpoint, {{"m.bin", llama2c_header({8, 16, 0, 2, 2, 8, 8})}},
       "m.bin", {"'n_layers'", "must be positive"}},
      {"llama2.c: version-1 export (magic ak42)", Reader::Checkpoint,
       {{"m.bin", "24ka" + std::string(252, '\0')}}, "m.bin", {"ak42"}},
      {"llama2.c: header of 2^31-1 everywhere", Reader::Checkpoint,
       {{"m.bin", llama2c_header({INT32_MAX - 1, INT32_MAX, INT32_MAX, 1, 1, INT32_MAX, INT32_MAX})}}, "m.bin",
       {"too large to address"}},
      {"llama2.c: truncated weights", Reader::Checkpoint,
       {{"m.bin", llama2c_header({8, 16, 2, 2, 2, 32, 8}) + floats(100)}}, "m.bin", {"truncated llama2.c checkpoint"}},
      {"llama2.c: trailing bytes", Reader::Checkpoint,
       {{"m.bin", llama2c_header({2, 2, 1, 1, 1, 1, 1}) + floats(2 + 2 + 4 + 2 * 2 + 4 + 2 + 3 * 4 + 2 + 1 + 7)}},
       "m.bin", {"extra bytes"}},
      // tokenizers
      {"tokenizer: vocab.json without merges.txt", Reader::Tokenizer, {{"t/vocab.json", R"({"a": 0})"}}, "t",
       {"merges.txt", "not found"}, "t/merges.txt"},
      {"tokenizer: vocab.json not an object", Reader::Tokenizer,
       {{"t/vocab.json", "[1, 2]"}, {"t/merges.txt", "#version: 0.2\na b\n"}}, "t", {"not a JSON object"},
       "t/vocab.json"},
      {"tokenizer: vocab.json id 2^40", Reader::Tokenizer,
       {{"t/vocab.json", R"({"a": 1099511627776})"}, {"t/merges.txt", "a b\n"}}, "t", {"'a'", "out-of-range id"},
       "t/vocab.json"},
      {"tokenizer: vocab without the byte symbols", Reader::Tokenizer,
       {{"t/vocab.json", R"({"a": 0, "b": 1, "ab": 2})"}, {"t/merges.txt", "a b\n"}}, "t",
       {"lacks the symbol for byte"}, "t/vocab.json"},
      {"tokenizer: malformed merges.txt line", Reader::Tokenizer,
       {{"t/vocab.json", R"({"a": 0})"}, {"t/merges.txt", "#version: 0.2\na b c\n"}}, "t", {"line 2"},
       "t/merges.txt"},
      {"tokenizer: tokenizer.json of a WordPiece model", Reader::Tokenizer,
       {{"t/tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}})"}}, "t/tokenizer.json",
       {"WordPiece"}},
      {"tokenizer: llama2.c .bin truncated", Reader::Tokenizer,
       {{"tok.bin", llama2c_tokenizer().substr(0, 1000)}}, "tok.bin", {"truncated llama2.c tokenizer"}},
      {"tokenizer: llama2.c .bin piece longer than max_token_length", Reader::Tokenizer,
       {{"tok.bin", llama2c_tokenizer(6, {"toolongpiece"})}}, "tok.bin", {"max_token_length"}},
      {"tokenizer: llama2.c checkpoint passed as tokenizer", Reader::Tokenizer,
       {{"tok.bin", llama2c_header({288, 768, 6, 6, 6, 32000, 256}) + floats(64)}}, "tok.bin",
       {"not a llama2.c tokenizer"}},
      // texts
      {"texts: empty file", Reader::Texts, {{"t.json", "  \n"}}, "t.json", {"no texts"}},
      {"texts: JSON list cut off", Reader::Texts, {{"t.json", R"([{"Text": "a"}, {"Te)"}}, "t.json",
       {"malformed JSON"}},
      {"texts: record without Text", Reader::Texts, {{"t.json", R"([{"Text": "a"}, {"body": "b"}])"}}, "t.json",
       {"record 1", "\"Text\""}},
      {"texts: JSONL bad line 2", Reader::Texts, {{"t.jsonl", "{\"text\": \"a\"}\n{\"text\": 3}\n"}}, "t.jsonl",
       {"line 2"}},
      // .npz
      {"npz: not a zip", Reader::Npz, {{"c.npz", "hello, world"}}, "c.npz", {"not an .npz"}},
      {"npz: member declaring 4 GiB in a 130-byte file", Reader::Npz,
       {{"c.npz", lying_zip("mom2.mom2.npy", "\x93NUMPY", 0xF0000000u)}}, "c.npz", {"mom2.mom2", "truncated or corrupt"}},
      {"npz: .npy with big-endian dtype", Reader::Npz,
       {{"c.npz", lying_zip("a.npy", std::string("\x93NUMPY\x01\x00\x3a\x00", 10) +
                                         "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }\n" +
                                         std::string(4, '\0'),
                            10 + 58 + 4)}},
       "c.npz", {"member 'a.npy'", "big-endian"}},
      // edit datasets
      {"dataset: not a list", Reader::Dataset, {{"d.json", R"({"case_id": 1})"}}, "d.json", {"expected a JSON list"}},
      {"dataset: record of no known format", Reader::Dataset, {{"d.json", R"([{"question": "x"}])"}}, "d.json",
       {"record 0", "cannot tell the dataset format"}},
      {"dataset: CounterFact record without subject", Reader::Dataset,
       {{"d.json", R"([{"requested_rewrite": {"prompt": "{} is", "target_new": {"str": "a"},
           "target_true": {"str": "b"}}}])"}},
       "d.json", {"record 0", "\"subject\""}},
      {"dataset: duplicate case_id", Reader::Dataset,
       {{"d.json", R"([{"prompt": "A is", "subject": "A", "target_new": "x", "case_id": 4},
                       {"prompt": "B is", "subject": "B", "target_new": "y", "case_id": 4}])"}},
       "d.json", {"record 1", "case_id 4"}},
  };
  return cases;
}

// The file name as the README shows it: relative to the case's directory.
std::string relative_message(std::string message, const fs::path& dir) {
  const std::string prefix = dir.string() + "/";
  for (size_t at; (at = message.find(prefix)) != std::string::npos;) message.erase(at, prefix.size());
  const size_t newline = message.find('\n');
  return newline == std::string::npos ? message : message.substr(0, newline) + " …";
}

TEST(MalformedInputs, Table) {
  const fs::path root = test::scratch_dir("hardening-table");
  std::ostringstream table;
  table << "| input | answer (exit 2, `error: ` + this) |\n|---|---|\n";
  int index = 0;
  std::vector<Case> cases = malformed_cases();
  for (Case& c : issue17_cases()) cases.push_back(std::move(c));
  for (const Case& c : cases) {
    const fs::path dir = root / std::to_string(index++);
    for (const auto& [name, bytes] : c.files) put(dir / name, bytes);
    const fs::path target = dir / c.target;
    const std::string named = (dir / (c.named_file.empty() ? c.target : c.named_file)).string();
    std::string message;
    try {
      run_reader(c.reader, target);
      ADD_FAILURE() << c.input << ": accepted";
      continue;
    } catch (const InputError& e) {
      message = e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.input << ": not an InputError: " << e.what();
      continue;
    }
    EXPECT_NE(message.find(named), std::string::npos) << c.input << ": message does not name " << named << ": " << message;
    for (const auto& part : c.expected)
      EXPECT_NE(message.find(part), std::string::npos) << c.input << ": message lacks \"" << part << "\": " << message;
    // Values are echoed as excerpts: no message floods a terminal, whatever the input holds.
    EXPECT_LT(message.size(), 1000u) << c.input << ": a " << message.size() << "-byte message";
    std::string shown = relative_message(message, dir);
    for (size_t at; (at = shown.find('|')) != std::string::npos;) shown.replace(at, 1, "\\|");
    table << "| " << c.input << " | " << shown << " |\n";
  }
  std::cout << table.str();
  put(root / "table.md", table.str());
}

// ---- the CLI answers exit 2 with the file named, and leaves no half-written output -----------

std::string quote(const fs::path& path) { return "'" + path.string() + "'"; }

TEST(MalformedInputs, CliExitCodesAndMessages) {
  ROME_REQUIRE_SHARED();
  const fs::path dir = test::scratch_dir("hardening-cli");
  const fs::path tiny = test::shared_path("reference/tiny-gpt2"), gpt2_tok = test::shared_path("tokenizers/gpt2");
  // A model directory whose config.json is hostile, beside the real weights.
  put(dir / "big/config.json", gpt2_config(8, 1000000000).dump());
  fs::create_symlink(tiny / "model.safetensors", dir / "big/model.safetensors");
  put(dir / "short.safetensors", "abc");
  put(dir / "short/config.json", test::read_if_exists(tiny / "config.json"));
  fs::create_symlink(dir / "short.safetensors", dir / "short/model.safetensors");
  put(dir / "texts.json", R"([{"Text": "fine"}, {"Txet": "typo"}])");
  put(dir / "tok/vocab.json", "{");
  put(dir / "tok/merges.txt", "a b\n");
  struct CliCase {
    std::string args, file, part;
  };
  const std::vector<CliCase> cases = {
      {"generate --model " + quote(dir / "big") + " --tokenizer " + quote(gpt2_tok) + " --max-new-tokens 1",
       (dir / "big/config.json").string(), "'n_embd'"},
      {"generate --model " + quote(dir / "short") + " --tokenizer " + quote(gpt2_tok) + " --max-new-tokens 1",
       (dir / "short/model.safetensors").string(), "too short"},
      {"perplexity --model " + quote(tiny) + " --tokenizer " + quote(gpt2_tok) + " --texts " + quote(dir / "texts.json"),
       (dir / "texts.json").string(), "record 1"},
      {"generate --model " + quote(tiny) + " --tokenizer " + quote(dir / "tok") + " --max-new-tokens 1",
       (dir / "tok/vocab.json").string(), "not valid JSON"},
      {"generate --model " + quote(dir / "missing") + " --max-new-tokens 1", (dir / "missing").string(),
       "no such file"},
  };
  for (const auto& c : cases) {
    auto result = test::run_cli(c.args);
    EXPECT_EQ(result.exit_code, 2) << c.args << "\n" << result.err;
    EXPECT_EQ(result.err.rfind("error: ", 0), 0u) << result.err;
    EXPECT_NE(result.err.find(c.file), std::string::npos) << result.err;
    EXPECT_NE(result.err.find(c.part), std::string::npos) << result.err;
  }
}

TEST(Limits, PromptBeyondTheContextAndAbsurdBatchSizes) {
  ROME_REQUIRE_SHARED();
  const fs::path tiny = test::shared_path("reference/tiny-gpt2"), gpt2_tok = test::shared_path("tokenizers/gpt2");
  std::string prompt;
  for (int i = 0; i < 300; ++i) prompt += " word";  // 300 tokens; tiny-gpt2's context is 256
  auto result = test::run_cli("generate --model " + quote(tiny) + " --tokenizer " + quote(gpt2_tok) +
                              " --max-new-tokens 4 --prompt '" + prompt + "'");
  EXPECT_EQ(result.exit_code, 2) << result.err;
  EXPECT_NE(result.err.find("context is 256"), std::string::npos) << result.err;
  EXPECT_TRUE(result.out.empty()) << result.out;

  const fs::path dir = test::scratch_dir("hardening-limits");
  put(dir / "texts.txt", "one\ntwo\n");
  for (const char* batch : {"0", "100000000", "-1"}) {
    result = test::run_cli("perplexity --model " + quote(tiny) + " --tokenizer " + quote(gpt2_tok) + " --texts " +
                           quote(dir / "texts.txt") + " --batch-size " + batch);
    EXPECT_EQ(result.exit_code, 2) << batch << ": " << result.err;
    EXPECT_NE(result.err.find("batch-size"), std::string::npos) << result.err;
  }
}

TEST(Outputs, AFailedRunLeavesNoOutputAndKeepsTheOldOne) {
  const fs::path dir = test::scratch_dir("hardening-outputs");
  put(dir / "bad.json", R"({"model": "builtin:demo-gpt2", "no_such_field": 1})");
  auto result = test::run_cli("edit --config " + quote(dir / "bad.json") + " --out " + quote(dir / "new.json"));
  EXPECT_EQ(result.exit_code, 2) << result.err;
  EXPECT_FALSE(fs::exists(dir / "new.json"));
  put(dir / "old.json", "previous result\n");
  result = test::run_cli("edit --config " + quote(dir / "bad.json") + " --out " + quote(dir / "old.json"));
  EXPECT_EQ(result.exit_code, 2) << result.err;
  EXPECT_EQ(test::read_if_exists(dir / "old.json"), "previous result\n");
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();

  // write_file_atomic replaces whole files and leaves no temporary behind.
  write_file_atomic(dir / "atomic.txt", std::string(1 << 20, 'x'));
  write_file_atomic(dir / "atomic.txt", "short\n");
  EXPECT_EQ(test::read_if_exists(dir / "atomic.txt"), "short\n");
  // An unwritable destination is an InputError naming it, not a crash or a partial file.
  put(dir / "blocker", "a file where a directory is needed");
  try {
    write_file_atomic(dir / "blocker" / "out.json", "{}");
    ADD_FAILURE() << "wrote below a regular file";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("blocker"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an InputError: " << e.what();
  }
}

// ---- memory ------------------------------------------------------------------------------------

// Peak resident set (VmHWM) in bytes; reset_peak() makes it start again from the current RSS.
int64_t peak_rss() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}
bool reset_peak() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.close();
  return static_cast<bool>(out);
}

TEST(Limits, RefusedBeforeAnyAllocation) {
  const fs::path dir = test::scratch_dir("hardening-alloc");
  if (!reset_peak()) GTEST_SKIP() << "/proc/self/clear_refs is not writable here";
  (void)at::ones({4}).sum().item<float>();  // libtorch's own one-time set-up, outside the measurement
  struct Hostile {
    std::string name;
    std::map<std::string, std::string> files;
    std::string target;
  };
  const std::vector<Hostile> inputs = {
      {"safetensors [2^20,2^20]",
       {{"a/model.safetensors",
         safetensors(R"({"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}})")},
        {"a/config.json", gpt2_config().dump()}},
       "a"},
      {"config n_layer 4000", {{"b/config.json", gpt2_config(8, 4, 4000).dump()},
                               {"b/model.safetensors", safetensors(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", floats(2))}},
       "b"},
      {"config vocab_size 2^40", {{"c/config.json", gpt2_config(int64_t{1} << 40).dump()},
                                  {"c/model.safetensors", safetensors("{}")}},
       "c"},
      {"llama2.c 2^31-1 dims", {{"m.bin", llama2c_header({INT32_MAX - 1, INT32_MAX, INT32_MAX, 1, 1, INT32_MAX, INT32_MAX})}},
       "m.bin"},
      {"llama2.c 60 GB implied", {{"n.bin", llama2c_header({4096, 11008, 64, 32, 32, 32000, 4096}) + floats(16)}}, "n.bin"},
      {"npz 4 GiB member", {{"c.npz", lying_zip("x.npy", "\x93NUMPY", 0xF0000000u)}}, "c.npz"},
  };
  for (const auto& input : inputs) {
    for (const auto& [name, bytes] : input.files) put(dir / name, bytes);
    ASSERT_TRUE(reset_peak());
    const int64_t before = peak_rss();
    bool refused = false;
    try {
      if (input.target.size() > 4 && input.target.substr(input.target.size() - 4) == ".npz")
        (void)read_npz(dir / input.target);
      else
        (void)load_checkpoint(dir / input.target, at::kFloat);
    } catch (const InputError&) {
      refused = true;
    }
    EXPECT_TRUE(refused) << input.name;
    const int64_t grown = peak_rss() - before;
    EXPECT_LT(grown, int64_t{32} << 20) << input.name << ": peak RSS grew by " << (grown >> 20) << " MiB";
  }
}

TEST(Limits, LoadingAModelCostsAboutItsFileSize) {
  ROME_REQUIRE_SHARED();
  if (!reset_peak()) GTEST_SKIP() << "/proc/self/clear_refs is not writable here";
  const fs::path dir = test::shared_path("reference/tiny-gpt2");
  const int64_t file_size = static_cast<int64_t>(fs::file_size(dir / "model.safetensors"));
  (void)at::ones({4}).sum().item<float>();  // libtorch's one-time set-up
  const int64_t slack = int64_t{24} << 20;

  ASSERT_TRUE(reset_peak());
  int64_t before = peak_rss();
  {
    Checkpoint checkpoint = load_checkpoint(dir, at::kFloat);  // float32 file, float32 compute: mapped views
    int64_t grown = peak_rss() - before;
    std::cout << "load_checkpoint: peak RSS +" << (grown >> 10) << " KiB for a " << (file_size >> 10)
              << " KiB file\n";
    EXPECT_LE(grown, file_size * 3 / 2 + slack);
  }
  ASSERT_TRUE(reset_peak());
  before = peak_rss();
  {
    auto model = load_causal_lm(dir);  // the model itself (Conv1D weights re-laid out, etc.)
    at::Tensor ids = at::zeros({1, 8}, at::kLong);
    (void)model->forward(ids, {});
    int64_t grown = peak_rss() - before;
    std::cout << "load_causal_lm + forward: peak RSS +" << (grown >> 10) << " KiB for a " << (file_size >> 10)
              << " KiB file\n";
    EXPECT_LE(grown, file_size * 3 / 2 + slack);
  }
}

// ---- long runs: an interrupted batch resumes without losing or duplicating a case -------------


std::vector<json> complete_result_lines(const fs::path& results) {
  std::vector<json> lines;
  std::istringstream in(test::read_if_exists(results));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && !in.eof()) lines.push_back(json::parse(line));
  return lines;
}

TEST(LongRuns, BatchInterruptedBySigtermResumesWithoutLossOrDuplicates) {
  ROME_REQUIRE_SHARED();
  constexpr size_t kCases = 10;  // zsRE records 0..9, all editable
  const fs::path dir = test::scratch_dir("hardening-batch");
  std::ofstream(dir / "ppl.txt") << "Once upon a time, there was a little girl who liked to play.\n";
  const json config = {
      {"model", test::shared_path("reference/tiny-gpt2").string()},
      {"tokenizer", test::shared_path("tokenizers/gpt2").string()},
      {"add_bos", false},
      {"methods", {"rome"}},
      {"dataset", {{"path", test::shared_path("data/zsre/zsre_mend_train-1k.json").string()}, {"format", "auto"}}},
      {"cases", {{"start", 0}, {"stop", kCases}}},
      {"hparams",
       {{"layer", 1}, {"v_loss_layer", 3}, {"v_num_grad_steps", 3}, {"v_lr", 0.5}, {"v_weight_decay", 0.5},
        {"clamp_norm_factor", 4}, {"kl_factor", 0.0625}, {"mom2_adjustment", false}}},
      {"context_templates", {"{}", "The company. {}", "I think. {}"}},
      {"perplexity", {{"texts", (dir / "ppl.txt").string()}}}};
  std::ofstream(dir / "run.json") << config.dump(1);
  const fs::path out = dir / "out", results = out / "results.jsonl";

  const pid_t pid = test::spawn_cli({"batch", "--config", (dir / "run.json").string(), "--out", out.string()}, dir / "term.err");
  bool saw_line = false;
  for (int i = 0; i < 6000 && !saw_line; ++i) {
    saw_line = test::read_if_exists(results).find('\n') != std::string::npos;
    int status = 0;
    if (!saw_line && ::waitpid(pid, &status, WNOHANG) == pid) FAIL() << "batch ended early: " << test::read_if_exists(dir / "term.err");
    if (!saw_line) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(saw_line) << test::read_if_exists(dir / "term.err");
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const size_t after_term = complete_result_lines(results).size();
  EXPECT_GE(after_term, 1u);
  // On a fast machine the run may finish before the signal lands; otherwise it must stop with a
  // failure status (the edit in flight is finished and written first).
  if (after_term < kCases) {
    const bool stopped = (WIFEXITED(status) && WEXITSTATUS(status) != 0) || WIFSIGNALED(status);
    EXPECT_TRUE(stopped) << "SIGTERM did not stop the run with a failure status; stderr: " << test::read_if_exists(dir / "term.err");
  }

  auto resumed = test::run_cli("batch --config " + quote(dir / "run.json") + " --out " + quote(out));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  std::set<std::pair<int64_t, std::string>> seen;
  for (const json& line : complete_result_lines(results)) {
    const auto key = std::make_pair(line.at("case_id").get<int64_t>(), line.at("method").get<std::string>());
    EXPECT_TRUE(seen.insert(key).second) << "case " << key.first << " (" << key.second << ") appears twice";
  }
  EXPECT_EQ(seen.size(), kCases) << "cases lost: " << kCases - seen.size();
}

}  // namespace
}  // namespace rc
