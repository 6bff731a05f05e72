// SentencePiece and libtorch in one process. Debian's libsentencepiece exports its own protobuf,
// which cross-binds with libtorch's libprotobuf and crashes such a process before main; the
// tokenizer therefore loads SentencePiece through a dlopen()ed shim. This test links the whole core
// library (libtorch included), so merely starting it checks the fix.
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "rome_collapse/text/tokenizer.h"
#include "support/test_support.h"

namespace rc {
namespace {

TEST(SentencePieceWithTorch, TokenizerAndTensorsShareAProcess) {
  ROME_REQUIRE_SHARED();
  auto tokenizer = load_tokenizer(test::shared_path("models/stories260K/tok512.model"));
  std::vector<int64_t> ids = tokenizer->encode("Once upon a time", true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tokenizer->decode(ids), "Once upon a time");
  EXPECT_EQ(tokenizer->unk_id(), std::optional<int64_t>(0));

  at::Tensor a = at::arange(4, at::kFloat);
  at::Tensor b = a * 2 + 1;  // 1 3 5 7
  EXPECT_FLOAT_EQ(b.sum().item<float>(), 16.0f);

  // Token ids through a tensor and back: both libraries in use at once.
  at::Tensor id_tensor = at::tensor(ids, at::kLong);
  std::vector<int64_t> back(id_tensor.data_ptr<int64_t>(), id_tensor.data_ptr<int64_t>() + id_tensor.numel());
  EXPECT_EQ(tokenizer->decode(back), "Once upon a time");
}

}  // namespace
}  // namespace rc
