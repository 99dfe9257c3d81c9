// File: simd.h
//
// OPTD_SIMD_CLONES, written before a function with a hot element loop, compiles it twice on x86-64
// (GCC's target_clones): for AVX2 and for the baseline (SSE2), and picks the clone once, at load
// time, by the CPU. A portable binary then runs 8-wide loops where the CPU has AVX2. FMA is not
// enabled, so both clones round every operation alike and give bit-identical results. Elsewhere
// (other compilers or targets, or a build for AVX2 already) it expands to nothing.
//
// Used by the optimizer kernels (server/optim) and the wire encodings (wire/). Header only;
// SimdLevel() is thread-safe.

#ifndef OPTD_BASE_SIMD_H_
#define OPTD_BASE_SIMD_H_

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX2__)
#define OPTD_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define OPTD_SIMD_CLONES
#endif

namespace optd {

// The SIMD level OPTD_SIMD_CLONES functions run at on this CPU: "avx2" or "sse2" (x86-64 clones),
// or the level the build was compiled for.
inline const char* SimdLevel() {
#if defined(__AVX512F__)
  return "avx512f";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  return __builtin_cpu_supports("avx2") ? "avx2" : "sse2";
#else
  return "baseline";
#endif
}

}  // namespace optd

#endif  // OPTD_BASE_SIMD_H_
