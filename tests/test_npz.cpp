// NumPy .npy/.npz: our files read back bit for bit and load in NumPy; files NumPy writes
// (np.savez stored, np.savez_compressed deflated, '<U' strings, 0-d int64, Fortran order) read
// with the right values; malformed files give an InputError naming the file and member; the
// second-moment solve reports singular C with the ridge option.
#include <cstdlib>
#include <fstream>

#include <ATen/ATen.h>

#include "rome_collapse/io/npz.h"
#include "rome_collapse/rome/covariance.h"
#include "rome_collapse/util/error.h"
#include "rome_collapse/util/files.h"
#include "support/golden.h"

namespace rc {
namespace {

namespace fs = std::filesystem;

const char* kPython = "/usr/bin/python3";

bool numpy_available() {
  static const bool available =
      std::system((std::string(kPython) + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0;
  return available;
}

// Runs a Python snippet (with numpy as np and `d` the scratch directory); fails the test on error.
void run_python(const fs::path& dir, const std::string& code) {
  const fs::path script = dir / "script.py";
  std::ofstream(script) << "import numpy as np\nd = " << nlohmann::json(dir.string()).dump() << "\n" << code << "\n";
  const std::string command = std::string(kPython) + " " + script.string() + " >" + (dir / "python.log").string() + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << "python failed:\n" << read_file(dir / "python.log");
}

#define REQUIRE_NUMPY()                                                                         \
  do {                                                                                          \
    if (!numpy_available())                                                                     \
      GTEST_SKIP() << kPython << " with numpy is not available (apt-get install python3-numpy)"; \
  } while (0)

// The message of the InputError `call` throws ("" and a test failure when it throws none).
template <class Call>
std::string input_error_of(Call&& call) {
  try {
    call();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an InputError";
  return "";
}

TEST(Npz, SecondMomentRoundTripIsBitExact) {
  const fs::path dir = test::scratch_dir("npz-roundtrip");
  at::manual_seed(7);
  const at::Tensor keys = at::randn({50, 12}, at::kDouble);   // [N, F]
  const at::Tensor sum = keys.t().mm(keys);                    // [F, F]
  write_second_moment_npz(dir / "c64.npz", sum, 50, 3, at::kDouble);
  write_second_moment_npz(dir / "c32.npz", sum, 50, 3, at::kFloat);

  SecondMoment c64 = read_second_moment_npz(dir / "c64.npz");
  EXPECT_TRUE(at::equal(c64.mom2, sum)) << "float64 mom2 not bit-exact";
  EXPECT_EQ(c64.count, 50);
  EXPECT_EQ(c64.sample_size, 3);
  EXPECT_EQ(c64.constructor, kSecondMomentConstructor);
  EXPECT_EQ(c64.source, (dir / "c64.npz").string());
  EXPECT_EQ(c64.sha256, sha256_file(dir / "c64.npz"));
  SecondMoment c32 = read_second_moment_npz(dir / "c32.npz");
  EXPECT_TRUE(at::equal(c32.mom2, sum.to(at::kFloat).to(at::kDouble))) << "float32 mom2 not the rounded sum";

  // Same content, same bytes (fixed timestamp, member order).
  write_second_moment_npz(dir / "again.npz", sum, 50, 3, at::kDouble);
  EXPECT_EQ(sha256_file(dir / "again.npz"), sha256_file(dir / "c64.npz"));
  // No temporary files left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) files += entry.is_regular_file();
  EXPECT_EQ(files, 3);
}

TEST(Npz, GenericMembersRoundTrip) {
  const fs::path dir = test::scratch_dir("npz-members");
  const at::Tensor ints = at::arange(6, at::kLong).reshape({2, 3});
  const at::Tensor flags = at::tensor(std::vector<int64_t>{1, 0, 1}).to(at::kBool);
  write_npz(dir / "m.npz", {{"ints", serialize_npy(ints)},
                            {"flags", serialize_npy(flags)},
                            {"scalar", serialize_npy(at::scalar_tensor(int64_t{-5}, at::kLong))},
                            {"text", serialize_npy_string("Zürich → 東京 😀")}});
  auto members = read_npz(dir / "m.npz");
  ASSERT_EQ(members.size(), 4u);
  EXPECT_TRUE(at::equal(members["ints"].tensor(), ints));
  EXPECT_TRUE(at::equal(members["flags"].tensor(), flags));
  EXPECT_EQ(members["scalar"].shape.size(), 0u);
  EXPECT_EQ(members["scalar"].tensor().item<int64_t>(), -5);
  EXPECT_EQ(members["text"].descr, "<U13");
  EXPECT_EQ(members["text"].string(), "Zürich → 東京 😀");
}

TEST(Npz, NumpyLoadsOurFiles) {
  REQUIRE_NUMPY();
  const fs::path dir = test::scratch_dir("npz-numpy-loads-ours");
  at::manual_seed(3);
  const at::Tensor sum = at::randn({7, 7}, at::kDouble);
  write_second_moment_npz(dir / "ours.npz", sum, 123, 9, at::kDouble);
  run_python(dir, R"PY(
z = np.load(d + "/ours.npz")
assert sorted(z.files) == ["mom2.constructor", "mom2.count", "mom2.mom2", "sample_size"], z.files
assert z["mom2.mom2"].dtype == np.float64 and z["mom2.mom2"].shape == (7, 7)
assert z["mom2.count"].shape == () and int(z["mom2.count"]) == 123 and int(z["sample_size"]) == 9
assert str(z["mom2.constructor"]) == "rome_collapse.SecondMoment"
np.savez(d + "/resaved.npz", **{k: z[k] for k in z.files})
)PY");
  SecondMoment resaved = read_second_moment_npz(dir / "resaved.npz");
  EXPECT_TRUE(at::equal(resaved.mom2, sum)) << "values changed through NumPy";
  EXPECT_EQ(resaved.count, 123);
  EXPECT_EQ(resaved.constructor, kSecondMomentConstructor);
}

TEST(Npz, ReadsStoredAndCompressedNumpyFiles) {
  REQUIRE_NUMPY();
  const fs::path dir = test::scratch_dir("npz-numpy-written");
  run_python(dir, R"PY(
members = {
    "mom2.mom2": (np.arange(25, dtype=np.float32).reshape(5, 5) / 7).astype(np.float32),
    "mom2.count": np.array(1234, dtype=np.int64),
    "mom2.constructor": np.array("util.runningstats.SecondMoment()"),
    "sample_size": np.array(100000, dtype=np.int64),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    "unicode": np.array("Zürich → 東京 😀"),
    "bytes": np.array(b"raw"),
    "int32": np.array([-1, 2, 3], dtype=np.int32),
}
np.savez(d + "/stored.npz", **members)
np.savez_compressed(d + "/deflated.npz", **members)
)PY");
  for (const char* name : {"stored.npz", "deflated.npz"}) {
    SCOPED_TRACE(name);
    SecondMoment moment = read_second_moment_npz(dir / name);
    const at::Tensor expected = (at::arange(25, at::kFloat).reshape({5, 5}) / 7).to(at::kDouble);
    EXPECT_TRUE(test::all_close_abs(moment.mom2, expected, 0, "mom2.mom2"));
    EXPECT_EQ(moment.count, 1234);
    EXPECT_EQ(moment.sample_size, 100000);
    EXPECT_EQ(moment.constructor, "util.runningstats.SecondMoment()");
    auto members = read_npz(dir / name);
    EXPECT_EQ(members["mom2.count"].descr, "<i8");
    EXPECT_TRUE(members["mom2.count"].shape.empty()) << "0-d int64";
    EXPECT_TRUE(members["fortran"].fortran_order);
    EXPECT_TRUE(at::equal(members["fortran"].tensor(), at::arange(6, at::kDouble).reshape({2, 3})));
    EXPECT_EQ(members["unicode"].string(), "Zürich → 東京 😀");
    EXPECT_EQ(members["bytes"].string(), "raw");
    EXPECT_TRUE(at::equal(members["int32"].tensor(), at::tensor(std::vector<int>{-1, 2, 3}, at::kInt)));
  }
}

TEST(Npz, WritesReplaceWholeFilesAndFailuresKeepTheOldOne) {
  const fs::path dir = test::scratch_dir("npz-atomic");
  const std::string big = serialize_npy(at::ones({256, 256}, at::kDouble));
  write_npz(dir / "out.npz", {{"a", big}});
  write_npz(dir / "out.npz", {{"b", serialize_npy(at::scalar_tensor(int64_t{4}, at::kLong))}});
  auto members = read_npz(dir / "out.npz");
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members.at("b").tensor().item<int64_t>(), 4);

  // A writer that fails leaves the previous file as it was and no temporary behind.
  const std::string before = read_file(dir / "out.npz");
  EXPECT_THROW(write_file_atomic_with(dir / "out.npz",
                                      [](const fs::path& temp) {
                                        write_file_atomic(temp, "half an archive");
                                        throw InputError("interrupted");
                                      }),
               InputError);
  EXPECT_EQ(read_file(dir / "out.npz"), before);
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename().string(), "out.npz") << "left behind: " << entry.path();

  // An unwritable destination is an InputError naming it; nothing to write is a caller's error.
  write_file_atomic(dir / "blocker", "a file where a directory is needed");
  try {
    write_npz(dir / "blocker" / "c.npz", {{"a", big}});
    ADD_FAILURE() << "wrote below a regular file";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("blocker"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_npz(dir / "empty.npz", {}), std::invalid_argument);
  EXPECT_FALSE(fs::exists(dir / "empty.npz"));
}

TEST(Npz, MalformedFilesNameFileAndMember) {
  const fs::path dir = test::scratch_dir("npz-malformed");
  const std::string good_mom2 = serialize_npy(at::eye(3, at::kDouble));
  const std::string good_count = serialize_npy(at::scalar_tensor(int64_t{10}, at::kLong));

  // Missing file, not a zip, truncated zip.
  std::string message = input_error_of([&] { read_npz(dir / "absent.npz"); });
  EXPECT_NE(message.find("absent.npz"), std::string::npos) << message;
  std::ofstream(dir / "text.npz") << "just some text, not a zip archive";
  message = input_error_of([&] { read_npz(dir / "text.npz"); });
  EXPECT_NE(message.find("text.npz"), std::string::npos) << message;
  write_npz(dir / "good.npz", {{"mom2.mom2", good_mom2}, {"mom2.count", good_count}});
  const std::string good = read_file(dir / "good.npz");
  write_file_atomic(dir / "truncated.npz", good.substr(0, good.size() / 2));
  message = input_error_of([&] { read_second_moment_npz(dir / "truncated.npz"); });
  EXPECT_NE(message.find("truncated.npz"), std::string::npos) << message;

  // Bad magic, wrong data length, truncated header, big-endian dtype, unsupported dtype.
  std::string bad_magic = good_mom2;
  bad_magic[1] = 'X';
  std::string short_data = good_mom2.substr(0, good_mom2.size() - 8);
  std::string long_data = good_mom2 + "12345678";
  std::string big_endian = good_mom2;
  big_endian.replace(big_endian.find("<f8"), 3, ">f8");
  std::string object_dtype = good_count;
  object_dtype.replace(object_dtype.find("<i8"), 3, "|O8");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {bad_magic, "bad magic"},          {short_data, "bytes"},      {long_data, "bytes"},
      {good_mom2.substr(0, 20), "header"}, {big_endian, "big-endian"}, {object_dtype, "dtype"}};
  for (size_t i = 0; i < cases.size(); ++i) {
    const fs::path path = dir / ("case" + std::to_string(i) + ".npz");
    write_npz(path, {{"mom2.mom2", cases[i].first}, {"mom2.count", good_count}});
    message = input_error_of([&] { read_second_moment_npz(path); });
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find("member 'mom2.mom2.npy'"), std::string::npos) << message;
    EXPECT_NE(message.find(cases[i].second), std::string::npos) << "case " << i << ": " << message;
  }

  // Corrupt member bytes (CRC mismatch).
  std::string corrupt = good;
  const size_t at_data = corrupt.find("\x93NUMPY") + 200;
  corrupt[at_data] = static_cast<char>(corrupt[at_data] ^ 0x55);
  write_file_atomic(dir / "corrupt.npz", corrupt);
  message = input_error_of([&] { read_npz(dir / "corrupt.npz"); });
  EXPECT_NE(message.find("corrupt.npz"), std::string::npos) << message;

  // Layout errors: missing member, non-square, non-positive count, count not a scalar.
  write_npz(dir / "no-count.npz", {{"mom2.mom2", good_mom2}});
  message = input_error_of([&] { read_second_moment_npz(dir / "no-count.npz"); });
  EXPECT_NE(message.find("no-count.npz"), std::string::npos) << message;
  EXPECT_NE(message.find("mom2.count"), std::string::npos) << message;
  write_npz(dir / "rect.npz", {{"mom2.mom2", serialize_npy(at::zeros({2, 3}, at::kFloat))}, {"mom2.count", good_count}});
  message = input_error_of([&] { read_second_moment_npz(dir / "rect.npz"); });
  EXPECT_NE(message.find("square"), std::string::npos) << message;
  write_npz(dir / "zero-count.npz",
            {{"mom2.mom2", good_mom2}, {"mom2.count", serialize_npy(at::scalar_tensor(int64_t{0}, at::kLong))}});
  message = input_error_of([&] { read_second_moment_npz(dir / "zero-count.npz"); });
  EXPECT_NE(message.find("mom2.count"), std::string::npos) << message;
  write_npz(dir / "vector-count.npz", {{"mom2.mom2", good_mom2}, {"mom2.count", serialize_npy(at::ones({2}, at::kLong))}});
  message = input_error_of([&] { read_second_moment_npz(dir / "vector-count.npz"); });
  EXPECT_NE(message.find("mom2.count"), std::string::npos) << message;
}

TEST(Npz, NumpyBigEndianAndObjectArraysAreRefused) {
  REQUIRE_NUMPY();
  const fs::path dir = test::scratch_dir("npz-numpy-refused");
  run_python(dir, R"PY(
np.savez(d + "/big.npz", **{"mom2.mom2": np.eye(3, dtype=">f4"), "mom2.count": np.array(3)})
np.savez(d + "/object.npz", **{"mom2.mom2": np.array([None, 1], dtype=object), "mom2.count": np.array(3)})
)PY");
  std::string message = input_error_of([&] { read_second_moment_npz(dir / "big.npz"); });
  EXPECT_NE(message.find("big-endian"), std::string::npos) << message;
  EXPECT_NE(message.find("mom2.mom2"), std::string::npos) << message;
  message = input_error_of([&] { read_second_moment_npz(dir / "object.npz"); });
  EXPECT_NE(message.find("object.npz"), std::string::npos) << message;
}

SecondMoment moment_of(const at::Tensor& sum, int64_t count) {
  SecondMoment moment;
  moment.mom2 = sum.to(at::kDouble);
  moment.count = count;
  moment.source = "test.npz";
  return moment;
}

TEST(SecondMomentSolve, SolvesInFloat64) {
  at::manual_seed(11);
  const at::Tensor keys = at::randn({200, 16}, at::kDouble);  // [N, F]
  const SecondMoment moment = moment_of(keys.t().mm(keys), 200);
  const at::Tensor k = at::randn({16}, at::kDouble);
  const at::Tensor x = solve_second_moment(moment, k, 0.0);
  EXPECT_TRUE(test::all_close_rel((moment.mom2 / 200).mv(x), k, 1e-12, "C x = k"));
  // The cached factor follows the ridge.
  const at::Tensor ridged = solve_second_moment(moment, k, 0.5);
  const at::Tensor c = moment.mom2 / 200;
  EXPECT_TRUE(test::all_close_rel((c + 0.5 * c.diagonal().mean() * at::eye(16, at::kDouble)).mv(ridged), k, 1e-12,
                                  "(C + ridge) x = k"));
}

TEST(SecondMomentSolve, SingularCNamesTheRidgeOption) {
  at::manual_seed(5);
  const at::Tensor few = at::randn({6, 16}, at::kDouble);  // fewer tokens than F: rank 6
  at::Tensor dead_unit = at::randn({100, 16}, at::kDouble);
  dead_unit.select(1, 3).zero_();  // a unit that never fires: exact zero row and column
  for (const at::Tensor& keys : {few, dead_unit}) {
    const SecondMoment moment = moment_of(keys.t().mm(keys), keys.size(0));
    const at::Tensor k = at::randn({16}, at::kDouble);
    try {
      solve_second_moment(moment, k, 0.0);
      ADD_FAILURE() << "expected a NumericError for a rank-deficient C";
    } catch (const NumericError& e) {
      EXPECT_NE(std::string(e.what()).find("mom2_ridge"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("test.npz"), std::string::npos) << e.what();
    }
    const at::Tensor x = solve_second_moment(moment, k, 1e-3);
    EXPECT_TRUE(at::isfinite(x).all().item<bool>());
  }
  const SecondMoment wrong_size = moment_of(at::eye(8, at::kDouble), 1);
  const std::string message = input_error_of([&] { solve_second_moment(wrong_size, at::ones({16}), 0.0); });
  EXPECT_NE(message.find("d_ff"), std::string::npos) << message;
}

}  // namespace
}  // namespace rc
