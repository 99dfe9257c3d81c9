// wire_fuzzer: the element encodings and tensor bytes of wire/ against references written here.
//
// The first byte picks one of:
//   decode    DecodeFloats (both forms) of arbitrary bytes at an arbitrary alignment, with a count
//             that fits, nearly fits or is any int64: OK exactly when the length is right, and
//             then every element equals the reference decoding, bit for bit;
//   view      F32View: a view exactly when F32, the length is right and the address aligned;
//   size      CheckEncodedSize over any (size, count);
//   convert   FloatToBf16 / FloatToF16 of arbitrary floats against a reference rounding (to
//             nearest, ties to even, computed in double), and every 16-bit value decoded and
//             encoded again comes back the same (NaN: a quiet NaN);
//   encode    EncodeFloats (all forms) then DecodeFloats: the reference round trip;
//   bytes     TensorBytes owned, borrowed in arbitrary pieces (empty ones too) and shared:
//             size, Pieces, CopyTo, View, Borrow and Flatten agree with the concatenation.

#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "fuzz/fuzz_check.h"
#include "wire/tensor_bytes.h"
#include "wire/wire_dtype.h"

namespace optd {
namespace {

uint32_t BitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

bool IsNan16(WireDType dtype, uint16_t h) {
  return dtype == WireDType::kBf16 ? (h & 0x7fffu) > 0x7f80u : (h & 0x7fffu) > 0x7c00u;
}

// The value of 16-bit `h` in `dtype`, computed independently of wire_dtype.cc (NaN as a NaN).
double RefDecode16(WireDType dtype, uint16_t h) {
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  if (dtype == WireDType::kBf16) {  // the upper half of a binary32
    const int exponent = (h >> 7) & 0xff;
    const int mantissa = h & 0x7f;
    if (exponent == 0xff) return mantissa ? std::nan("") : sign * INFINITY;
    if (exponent == 0) return sign * std::ldexp(mantissa, -133);
    return sign * std::ldexp(128 + mantissa, exponent - 134);
  }
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 31) return mantissa ? std::nan("") : sign * INFINITY;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// What decoding 16-bit `h` must give, as bits: the value, or for a NaN the NaN whose payload's top
// bits are h's (what both decoders do: they widen the bits).
uint32_t WantDecoded16(WireDType dtype, uint16_t h) {
  if (IsNan16(dtype, h)) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t payload = dtype == WireDType::kBf16 ? (h & 0x7fu) << 16 : (h & 0x3ffu) << 13;
    return sign | 0x7f800000u | payload;
  }
  return BitsOf(static_cast<float>(RefDecode16(dtype, h)));
}

// The nearest 16-bit encoding of finite or infinite `f` (ties to even; beyond the largest finite
// value by half an ulp or more: infinity), found in double without wire_dtype.cc's bit tricks.
uint16_t RefEncode16(WireDType dtype, float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000u : 0;
  const double a = std::fabs(static_cast<double>(f));
  // Mantissa bits, smallest normal exponent, and the infinity encoding.
  const int bits = dtype == WireDType::kBf16 ? 7 : 10;
  const int min_exponent = dtype == WireDType::kBf16 ? -126 : -14;
  const int bias = dtype == WireDType::kBf16 ? 127 : 15;
  const uint16_t inf = dtype == WireDType::kBf16 ? 0x7f80u : 0x7c00u;
  if (std::isinf(a)) return sign | inf;
  int exponent = 0;
  std::frexp(a, &exponent);  // a = m * 2^exponent, m in [0.5, 1)
  exponent -= 1;             // a = m' * 2^exponent, m' in [1, 2)
  if (a == 0 || exponent < min_exponent) {
    // Subnormal: a multiple of 2^(min_exponent - bits), rounded to even (exact in double).
    const double q = std::nearbyint(std::ldexp(a, bits - min_exponent));
    return sign | static_cast<uint16_t>(q);  // q == 2^bits is the smallest normal's encoding
  }
  double m = std::nearbyint(std::ldexp(a, bits - exponent));  // in [2^bits, 2^(bits+1)]
  if (m == std::ldexp(1.0, bits + 1)) {
    m /= 2;
    ++exponent;
  }
  const int biased = exponent + bias;
  if (biased >= (dtype == WireDType::kBf16 ? 0xff : 0x1f)) return sign | inf;
  return sign | static_cast<uint16_t>((biased << bits) | (static_cast<int>(m) - (1 << bits)));
}

void CheckEncode16(WireDType dtype, float f) {
  const uint16_t got = dtype == WireDType::kBf16 ? FloatToBf16(f) : FloatToF16(f);
  if (std::isnan(f)) {
    FUZZ_CHECK(IsNan16(dtype, got), absl::StrCat("NaN bits ", BitsOf(f), " -> ", got));
    const uint16_t quiet = dtype == WireDType::kBf16 ? 0x40u : 0x200u;
    FUZZ_CHECK((got & quiet) != 0, absl::StrCat("NaN must become a quiet NaN: ", got));
    FUZZ_CHECK((got & 0x8000u) == ((BitsOf(f) >> 16) & 0x8000u), "NaN keeps its sign");
    return;
  }
  const uint16_t want = RefEncode16(dtype, f);
  FUZZ_CHECK(got == want, absl::StrCat(WireDTypeName(dtype), " of ", f, " (bits ", BitsOf(f),
                                       ") is ", got, "; want ", want));
}

void CheckDecode16(WireDType dtype, uint16_t h) {
  const float f = dtype == WireDType::kBf16 ? Bf16ToFloat(h) : F16ToFloat(h);
  FUZZ_CHECK(BitsOf(f) == WantDecoded16(dtype, h),
             absl::StrCat(WireDTypeName(dtype), " ", h, " decodes to bits ", BitsOf(f)));
  // Every value comes back as itself; a NaN as a quiet NaN.
  const uint16_t again = dtype == WireDType::kBf16 ? FloatToBf16(f) : FloatToF16(f);
  if (IsNan16(dtype, h)) {
    FUZZ_CHECK(IsNan16(dtype, again));
  } else {
    FUZZ_CHECK(again == h, absl::StrCat(WireDTypeName(dtype), " ", h, " round trips to ", again));
  }
}

// The floats `bytes` hold (little-endian; a trailing partial float is dropped).
std::vector<float> FloatsOf(absl::string_view bytes) {
  std::vector<float> v(bytes.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

// What decoding `data` as `dtype` must give, as bits.
std::vector<uint32_t> WantDecoded(WireDType dtype, absl::string_view data) {
  std::vector<uint32_t> want;
  if (dtype == WireDType::kF32) {
    for (size_t i = 0; i + 4 <= data.size(); i += 4) {
      uint32_t u;
      std::memcpy(&u, data.data() + i, 4);
      want.push_back(u);
    }
    return want;
  }
  for (size_t i = 0; i + 2 <= data.size(); i += 2) {
    uint16_t h;
    std::memcpy(&h, data.data() + i, 2);
    want.push_back(WantDecoded16(dtype, h));
  }
  return want;
}

// Whether `size` bytes hold exactly `count` elements of `dtype`, in exact arithmetic.
bool SizeFits(WireDType dtype, int64_t size, int64_t count) {
  return count >= 0 &&
         static_cast<__int128>(size) == static_cast<__int128>(count) * BytesPerElement(dtype);
}

WireDType PickDType(FuzzedDataProvider& in) {
  return static_cast<WireDType>(in.ConsumeIntegralInRange<int>(0, 2));
}

// A count for `size` bytes: `choice` 0 to 4 is the count that fits plus choice - 2 (so exact, or
// off by one or two); 5 is `any`.
int64_t CountFor(WireDType dtype, size_t size, int choice, int64_t any) {
  if (choice == 5) return any;
  return static_cast<int64_t>(size) / BytesPerElement(dtype) + choice - 2;
}

// `bytes` copied to an address `misalign` bytes past a 16-byte boundary (kept alive by `*store`).
absl::string_view Placed(const std::string& bytes, int misalign, std::unique_ptr<char[]>* store) {
  store->reset(new char[bytes.size() + 16 + misalign]);
  char* at = store->get();
  at += (16 - reinterpret_cast<uintptr_t>(at) % 16) % 16 + misalign;
  if (!bytes.empty()) std::memcpy(at, bytes.data(), bytes.size());
  return absl::string_view(at, bytes.size());
}

void FuzzDecode(FuzzedDataProvider& in) {
  const WireDType dtype = PickDType(in);
  const int misalign = in.ConsumeIntegralInRange<int>(0, 3);
  const int choice = in.ConsumeIntegralInRange<int>(0, 5);
  const int64_t any = in.ConsumeIntegral<int64_t>();
  const std::string bytes = in.ConsumeRemainingBytesAsString();
  const int64_t count = CountFor(dtype, bytes.size(), choice, any);
  std::unique_ptr<char[]> store;
  const absl::string_view data = Placed(bytes, misalign, &store);
  const bool fits = SizeFits(dtype, static_cast<int64_t>(data.size()), count);

  std::vector<float> out = {1.0f, 2.0f};  // replaced
  const absl::Status s = DecodeFloats("fuzz", dtype, data, count, &out);
  FUZZ_CHECK(s.ok() == fits,
             absl::StrCat("size ", data.size(), " count ", count, ": ", s.ToString()));
  if (!s.ok()) {
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument, s.ToString());
    FUZZ_CHECK(absl::string_view(s.message()).find("fuzz.data has ") == 0, s.ToString());
    return;
  }
  const std::vector<uint32_t> want = WantDecoded(dtype, data);
  FUZZ_CHECK(out.size() == want.size() && static_cast<int64_t>(out.size()) == count);
  for (size_t i = 0; i < out.size(); ++i) {
    FUZZ_CHECK(BitsOf(out[i]) == want[i], absl::StrCat("element ", i));
  }
  // The span form, into a buffer of the caller's.
  std::vector<float> span_out(static_cast<size_t>(count), -7.0f);
  FUZZ_CHECK(DecodeFloats("fuzz", dtype, data, absl::MakeSpan(span_out)).ok());
  for (size_t i = 0; i < out.size(); ++i) FUZZ_CHECK(BitsOf(span_out[i]) == want[i]);
  // A span of the wrong size is refused.
  std::vector<float> wrong(static_cast<size_t>(count) + 1);
  FUZZ_CHECK(!DecodeFloats("fuzz", dtype, data, absl::MakeSpan(wrong)).ok());
}

void FuzzView(FuzzedDataProvider& in) {
  const WireDType dtype = PickDType(in);
  const int misalign = in.ConsumeIntegralInRange<int>(0, 3);
  const int choice = in.ConsumeIntegralInRange<int>(0, 5);
  const int64_t any = in.ConsumeIntegral<int64_t>();
  const std::string bytes = in.ConsumeRemainingBytesAsString();
  const int64_t count = CountFor(WireDType::kF32, bytes.size(), choice, any);
  std::unique_ptr<char[]> store;
  const absl::string_view data = Placed(bytes, misalign, &store);
  const std::optional<absl::Span<const float>> view = F32View(dtype, data, count);
  const bool want = dtype == WireDType::kF32 &&
                    SizeFits(WireDType::kF32, static_cast<int64_t>(data.size()), count) &&
                    reinterpret_cast<uintptr_t>(data.data()) % alignof(float) == 0;
  FUZZ_CHECK(view.has_value() == want,
             absl::StrCat("size ", data.size(), " count ", count, " misalign ", misalign));
  if (view.has_value()) {
    FUZZ_CHECK(static_cast<const void*>(view->data()) == data.data());
    FUZZ_CHECK(static_cast<int64_t>(view->size()) == count);
    if (!view->empty()) FUZZ_CHECK(std::memcmp(view->data(), data.data(), data.size()) == 0);
  }
}

void FuzzSize(FuzzedDataProvider& in) {
  const WireDType dtype = PickDType(in);
  const int64_t count = in.ConsumeIntegral<int64_t>();
  int64_t size = in.ConsumeIntegral<int64_t>();
  if (in.ConsumeBool() && count >= 0 && count <= INT64_MAX / BytesPerElement(dtype)) {
    size = count * BytesPerElement(dtype) + in.ConsumeIntegralInRange<int64_t>(-1, 1);
  }
  const absl::Status s = CheckEncodedSize("fuzz", dtype, size, count);
  FUZZ_CHECK(s.ok() == SizeFits(dtype, size, count),
             absl::StrCat("size ", size, " count ", count, ": ", s.ToString()));
  if (!s.ok()) FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument);
}

void FuzzConvert(FuzzedDataProvider& in) {
  for (const float f : FloatsOf(in.ConsumeRemainingBytesAsString())) {
    CheckEncode16(WireDType::kBf16, f);
    CheckEncode16(WireDType::kF16, f);
    CheckDecode16(WireDType::kBf16, static_cast<uint16_t>(BitsOf(f)));
    CheckDecode16(WireDType::kF16, static_cast<uint16_t>(BitsOf(f) >> 16));
  }
}

void FuzzEncode(FuzzedDataProvider& in) {
  const WireDType dtype = PickDType(in);
  const std::vector<float> values = FloatsOf(in.ConsumeRemainingBytesAsString());
  std::string encoded = "stale";
  EncodeFloats(dtype, values, &encoded);
  FUZZ_CHECK(static_cast<int64_t>(encoded.size()) ==
             static_cast<int64_t>(values.size()) * BytesPerElement(dtype));
  std::string into(encoded.size(), '\0');
  EncodeFloats(dtype, values, into.data());
  FUZZ_CHECK(into == encoded);
  std::string pooled(encoded.size(), '\0');
  EncodeFloats(dtype, values, pooled.data(), nullptr);
  FUZZ_CHECK(pooled == encoded);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == WireDType::kF32) {
      FUZZ_CHECK(std::memcmp(encoded.data() + 4 * i, &values[i], 4) == 0);
    } else {
      uint16_t h;
      std::memcpy(&h, encoded.data() + 2 * i, 2);
      FUZZ_CHECK(h == (dtype == WireDType::kBf16 ? FloatToBf16(values[i]) : FloatToF16(values[i])));
    }
  }
  std::vector<float> back;
  FUZZ_CHECK(DecodeFloats("fuzz", dtype, encoded, static_cast<int64_t>(values.size()), &back).ok());
  const std::vector<uint32_t> want = WantDecoded(dtype, encoded);
  for (size_t i = 0; i < back.size(); ++i) FUZZ_CHECK(BitsOf(back[i]) == want[i]);
}

// The checks every TensorBytes holding `want` (owned or borrowed) must pass.
void CheckBytes(const TensorBytes& t, const std::string& want, FuzzedDataProvider& in) {
  const int64_t n = static_cast<int64_t>(want.size());
  for (const WireDType dtype : {WireDType::kF32, WireDType::kBf16, WireDType::kF16}) {
    FUZZ_CHECK(t.size(dtype) == n);
    FUZZ_CHECK(t.Flatten(dtype) == want);
  }
  std::string joined;
  for (const absl::string_view piece : t.Pieces()) {
    FUZZ_CHECK(!piece.empty(), "Pieces() holds no empty piece");
    joined.append(piece.data(), piece.size());
  }
  FUZZ_CHECK(joined == want);
  for (int i = 0; i < 8 && in.remaining_bytes() > 0; ++i) {
    const int64_t offset = in.ConsumeIntegralInRange<int64_t>(0, n);
    const int64_t size = in.ConsumeIntegralInRange<int64_t>(0, n - offset);
    std::string copied(static_cast<size_t>(size), '\0');
    t.CopyTo(offset, size, copied.data());
    FUZZ_CHECK(copied == want.substr(offset, size),
               absl::StrCat("CopyTo(", offset, ", ", size, ") of ", n));
    std::string scratch;
    FUZZ_CHECK(t.View(offset, size, &scratch) == want.substr(offset, size),
               absl::StrCat("View(", offset, ", ", size, ") of ", n));
  }
  const TensorBytes borrowed = t.Borrow();
  FUZZ_CHECK(borrowed.kind() == TensorBytes::Kind::kBorrowed);
  FUZZ_CHECK(borrowed.Flatten(WireDType::kF32) == want);
  FUZZ_CHECK(borrowed.size(WireDType::kBf16) == n);
}

void FuzzTensorBytes(FuzzedDataProvider& in) {
  // Pieces: up to 16 lengths (0 allowed), then the data, cut at those lengths (the rest is the
  // last piece); the offsets and sizes CheckBytes reads come from what follows.
  const int pieces = in.ConsumeIntegralInRange<int>(0, 16);
  std::vector<size_t> lengths;
  for (int i = 0; i < pieces; ++i) lengths.push_back(in.ConsumeIntegralInRange<size_t>(0, 64));
  const std::string data = in.ConsumeRandomLengthString(4096);
  std::vector<absl::string_view> cut;
  size_t at = 0;
  for (const size_t length : lengths) {
    const size_t take = std::min(length, data.size() - at);
    cut.push_back(absl::string_view(data).substr(at, take));
    at += take;
  }
  cut.push_back(absl::string_view(data).substr(at));
  // Borrowed pieces of distinct buffers (so that a read past a piece's end is a read past its
  // buffer, which ASan sees), laid end to end.
  std::vector<std::unique_ptr<char[]>> buffers;
  std::vector<absl::string_view> separate;
  for (const absl::string_view piece : cut) {
    buffers.emplace_back(new char[piece.size()]);
    if (!piece.empty()) std::memcpy(buffers.back().get(), piece.data(), piece.size());
    separate.emplace_back(buffers.back().get(), piece.size());
  }
  CheckBytes(TensorBytes::Borrowed(separate), data, in);
  CheckBytes(TensorBytes::Owned(data), data, in);
  CheckBytes(TensorBytes::Borrowed(absl::string_view(data)), data, in);

  // Shared floats: encoded only when asked.
  auto floats = std::make_shared<std::vector<float>>(FloatsOf(data));
  const TensorBytes shared = TensorBytes::Shared(floats);
  FUZZ_CHECK(shared.Pieces().empty());
  FUZZ_CHECK(shared.Borrow().shared() == shared.shared());
  for (const WireDType dtype : {WireDType::kF32, WireDType::kBf16, WireDType::kF16}) {
    FUZZ_CHECK(shared.size(dtype) == static_cast<int64_t>(floats->size()) * BytesPerElement(dtype));
    std::string want;
    EncodeFloats(dtype, *floats, &want);
    FUZZ_CHECK(shared.Flatten(dtype) == want);
  }
}

}  // namespace
}  // namespace optd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
      optd::FuzzDecode(in);
      break;
    case 1:
      optd::FuzzView(in);
      break;
    case 2:
      optd::FuzzSize(in);
      break;
    case 3:
      optd::FuzzConvert(in);
      break;
    case 4:
      optd::FuzzEncode(in);
      break;
    default:
      optd::FuzzTensorBytes(in);
      break;
  }
  return 0;
}
