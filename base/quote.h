// File: quote.h
//
// Quote: how optd puts a value a client sent into an error message. At most kQuotedPrefix bytes
// of it, escaped (control and non-ASCII bytes as \x.. escapes), in double quotes, and when it was
// longer, how long it was: a 1 MB tensor name costs an error message 80-odd bytes, so the message
// always fits in gRPC's trailers and reaches the client.
//
//   Quote("w")             -> "w"
//   Quote(100 KB of 'a')   -> "aaaa...aaaa"... (102400 bytes)
//
// Pure function, thread-safe.

#ifndef OPTD_BASE_QUOTE_H_
#define OPTD_BASE_QUOTE_H_

#include <cstddef>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace optd {

// The most bytes of a value an error message quotes.
inline constexpr size_t kQuotedPrefix = 64;

inline std::string Quote(absl::string_view value) {
  if (value.size() <= kQuotedPrefix) return absl::StrCat("\"", absl::CHexEscape(value), "\"");
  return absl::StrCat("\"", absl::CHexEscape(value.substr(0, kQuotedPrefix)), "\"... (",
                      value.size(), " bytes)");
}

}  // namespace optd

#endif  // OPTD_BASE_QUOTE_H_
