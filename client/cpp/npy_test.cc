#include "client/cpp/npy.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace client {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// The header dictionary of an encoded file (between the 10-byte preamble and the data).
std::string Header(const std::string& npy) {
  const size_t len = static_cast<uint8_t>(npy[8]) | (static_cast<uint8_t>(npy[9]) << 8);
  return npy.substr(10, len);
}

TEST(NpyTest, EncodesVersion1Float32COrder) {
  absl::StatusOr<std::string> npy = EncodeNpy(HostTensor{"w", {2, 3}, {1, 2, 3, 4, 5, 6}});
  ASSERT_TRUE(npy.ok()) << npy.status();
  EXPECT_THAT(*npy, StartsWith(std::string("\x93NUMPY\x01\x00", 8)));
  const std::string header = Header(*npy);
  EXPECT_THAT(header, HasSubstr("'descr': '<f4'"));
  EXPECT_THAT(header, HasSubstr("'fortran_order': False"));
  EXPECT_THAT(header, HasSubstr("'shape': (2, 3)"));
  EXPECT_EQ(header.back(), '\n');
  EXPECT_EQ((10 + header.size()) % 64, 0u);  // numpy's alignment of the data
  ASSERT_EQ(npy->size(), 10 + header.size() + 6 * sizeof(float));
  float data[6];
  std::memcpy(data, npy->data() + 10 + header.size(), sizeof(data));
  EXPECT_THAT(data, ::testing::ElementsAre(1, 2, 3, 4, 5, 6));
}

TEST(NpyTest, OneDimensionalAndScalarShapesAreTuples) {
  absl::StatusOr<std::string> vec = EncodeNpy(HostTensor{"b", {5}, {0, 0, 0, 0, 0}});
  ASSERT_TRUE(vec.ok()) << vec.status();
  EXPECT_THAT(Header(*vec), HasSubstr("'shape': (5,)"));
  absl::StatusOr<std::string> scalar = EncodeNpy(HostTensor{"s", {}, {7}});
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_THAT(Header(*scalar), HasSubstr("'shape': ()"));
}

TEST(NpyTest, RejectsValuesThatDoNotMatchTheShape) {
  EXPECT_EQ(EncodeNpy(HostTensor{"w", {2, 2}, {1}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NpyTest, ARowSparseTensorIsWrittenAsItsRows) {
  absl::StatusOr<std::string> npy =
      EncodeNpy(RowSparse("e", {10, 2}, {7, 3, 9}, {1, 2, 3, 4, 5, 6}));
  ASSERT_TRUE(npy.ok()) << npy.status();
  EXPECT_NE(npy->find("'shape': (3, 2)"), std::string::npos) << *npy;
  EXPECT_EQ(npy->size() % 64, 24u);  // 64-byte aligned header, then 6 floats
}

TEST(NpyTest, WriteNpyWritesTheEncodedBytes) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / ("npy_test." + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const HostTensor tensor{"w", {3}, {0.5f, -1.0f, 2.0f}};
  const std::string path = (dir / "w.npy").string();
  ASSERT_TRUE(WriteNpy(path, tensor).ok());
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  EXPECT_EQ(contents.str(), *EncodeNpy(tensor));
  // Only the file itself: the temporary was renamed over it.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir),
                          std::filesystem::directory_iterator()),
            1);
  std::filesystem::remove_all(dir);
}

TEST(NpyTest, WriteNpyIntoAMissingDirectoryIsNotFound) {
  const absl::Status s = WriteNpy("/nonexistent-optd-dir/w.npy", HostTensor{"w", {1}, {1.0f}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

}  // namespace
}  // namespace client
}  // namespace optd
