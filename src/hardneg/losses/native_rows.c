/* The native row pass (hardneg.losses.native): the kernel's elementwise runs between its products,
 * each row of a chunk's tile X = s/t in turn with the row in a core's L1 cache — a fused strategy's
 * filters, weighting and softmax (hn_weighted_softmax_rows), the general path's softmax and root
 * tilt (hn_softmax_rows), label positives' per-pair terms and their entry into the gradient tile
 * (hn_label_terms, hn_label_scatter), the diagnostics' statistics (hn_row_stats), safe_normalize's
 * gradient (hn_unit_rows_backward). Built by hardneg.losses.native with the machine's C compiler
 * and loaded with ctypes; the Python definitions each pass mirrors are named at it.
 *
 * No -ffast-math: -inf marks a removed candidate and must survive every comparison. exp and log
 * are written here as branch-free polynomials (AVX-512 intrinsics where the compiler targets it) so
 * that the loops vectorise (the C library's scalar expf/logf would not); both are within 2 ulp of
 * float32 rounding. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define LANES 16

/* BODY(i, l) for i in [i0, m): full runs of LANES entries, lane l of each (the compiler vectorises
 * them; lane-indexed accumulators keep its reductions in order-free lanes), then the rest in lane 0. */
#define LANE_LOOP(i0, m, BODY)                                               \
  do {                                                                       \
    const int64_t mb_ = (i0) + ((m) - (i0)) / LANES * LANES;                 \
    for (int64_t i_ = (i0); i_ < mb_; i_ += LANES)                           \
      for (int l_ = 0; l_ < LANES; l_++) BODY(i_ + l_, l_);                  \
    for (int64_t i_ = mb_; i_ < (m); i_++) BODY(i_, 0);                      \
  } while (0)

/* Subnormal floats flushed to zero (and read as zero) while a pass runs, the caller's mode restored
 * after: e^x far below a row's largest term underflows, and each arithmetic operation on a
 * subnormal costs a hundred cycles on x86 (a row of distance weights spans e^-130, and those rows
 * ran five times slower); such terms are below 1e-38 of their row's sum. */
typedef struct {
#if defined(__SSE__)
  unsigned int csr;
#else
  int unused;
#endif
} fp_mode_t;

static inline fp_mode_t flush_subnormals(void) {
  fp_mode_t mode;
#if defined(__SSE__)
  mode.csr = _mm_getcsr();
  _mm_setcsr(mode.csr | 0x8040); /* FTZ | DAZ */
#else
  mode.unused = 0;
#endif
  return mode;
}

static inline void restore_fp_mode(fp_mode_t mode) {
#if defined(__SSE__)
  _mm_setcsr(mode.csr);
#else
  (void)mode;
#endif
}

/* e^x for x in [-87.3, 88.7] (Cephes expf): x = k ln 2 + r with |r| <= ln 2 / 2 (Cody-Waite: ln 2
 * in two parts, so r is exact to rounding whatever |x|), e^r by a degree-7 polynomial, times 2^k.
 * Inputs below are clamped (the callers only pass kept entries, x > -inf). */
static inline __attribute__((always_inline)) float hn_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest, no libm */
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  union { int32_t i; float f; } s;
  s.i = ((int32_t)k + 127) << 23;
  return p * s.f;
}

#if defined(__AVX512F__)
#include <immintrin.h>
/* hn_exp on 16 lanes, 2^k by scalef (no clamp of k needed below: scalef underflows to 0). */
static inline __m512 v_exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-103.0f)), _mm512_set1_ps(88.7f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

/* 2^x on 16 lanes (Cephes exp2f: x = k + r, |r| <= 1/2, 2^r by a degree-6 polynomial, times 2^k
 * by scalef; within 2 ulp of float32 rounding), for a caller whose exponent comes from an fma that
 * takes log2 e as well: three operations fewer than v_exp. e^x as 2^{x log2 e} loses |x| 2^-24 of
 * relative precision to the product's rounding, which only entries far below their row's largest
 * (|x| large after the shift) see. */
static inline __m512 v_exp2(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-149.0f)), _mm512_set1_ps(128.0f));
  const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(x, k);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

/* log x on 16 lanes (x > 0 normal), by a table: x = 2^e m with m in [1, 2) (getexp, getmant);
 * the top four bits of m pick c_j = 1 + (j + 1/2)/16, and log m = -log(1/c_j) + log1p(m/c_j - 1)
 * with |m/c_j - 1| <= 0.0303 (1/c_j and -log(1/c_j) rounded to float, the latter from the former),
 * log1p by its series to the fifth power (remainder below 2e-10). Absolute error within 1.3e-7
 * on [0.2, 2] (the distance weighting's u and uq), twice hn_log's, which is what its callers read:
 * they scale the log by up to n/2 and exponentiate it; 13 operations where hn_log takes 20. */
static inline __m512 v_log(__m512 x) {
  const __m512 e = _mm512_getexp_ps(x);
  const __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src); /* [1, 2) */
  const __m512i j = _mm512_srli_epi32(_mm512_castps_si512(m), 19); /* permutexvar reads its low 4 bits */
  const __m512 inv = _mm512_permutexvar_ps(
      j, _mm512_setr_ps(0.9696969985961914f, 0.9142857193946838f, 0.8648648858070374f, 0.8205128312110901f,
                        0.7804877758026123f, 0.7441860437393188f, 0.7111111283302307f, 0.6808510422706604f,
                        0.6530612111091614f, 0.6274510025978088f, 0.6037735939025879f, 0.581818163394928f,
                        0.5614035129547119f, 0.5423728823661804f, 0.5245901346206665f, 0.5079365372657776f));
  const __m512 lc = _mm512_permutexvar_ps(
      j, _mm512_setr_ps(0.03077162802219391f, 0.08961215615272522f, 0.14518198370933533f, 0.19782572984695435f,
                        0.24783620238304138f, 0.2954642176628113f, 0.34092655777931213f, 0.3844117224216461f,
                        0.42608442902565f, 0.4660896956920624f, 0.5045560002326965f, 0.541597306728363f,
                        0.5773153305053711f, 0.6118015646934509f, 0.6451380252838135f, 0.6773987412452698f));
  const __m512 r = _mm512_fmsub_ps(m, inv, _mm512_set1_ps(1.0f));
  __m512 p = _mm512_set1_ps(0.2f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-0.25f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.333333343f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(-0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693147180559945309f), _mm512_fmadd_ps(p, r, lc));
}

/* The lanes of x that are candidates: finite, lo <= x <= hi and |x - c| < h (keep_of without the
 * distance rule). */
static inline __mmask16 v_keep(__m512 x, float lo, float hi, float c, float h) {
  __mmask16 k = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_GT_OQ);
  k &= _mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_GE_OQ);
  k &= _mm512_cmp_ps_mask(x, _mm512_set1_ps(hi), _CMP_LE_OQ);
  const __m512 d = _mm512_abs_ps(_mm512_sub_ps(x, _mm512_set1_ps(c)));
  return k & _mm512_cmp_ps_mask(d, _mm512_set1_ps(h), _CMP_LT_OQ);
}
#endif

/* log x for normal x > 0 (Cephes logf): x = 2^e m, m in [sqrt(1/2), sqrt(2)), a degree-8
 * polynomial in m - 1. */
static inline __attribute__((always_inline)) float hn_log(float x) {
  union { int32_t i; float f; } u;
  u.f = x;
  int32_t e = ((u.i >> 23) & 0xff) - 127;
  u.i = (u.i & 0x007fffff) | 0x3f800000; /* m in [1, 2) */
  float m = u.f;
  float big = m > 1.41421356f ? 1.0f : 0.0f;
  m *= 1.0f - 0.5f * big;
  float ef = (float)e + big;
  float y = m - 1.0f;
  float z = y * y;
  float p = 7.0376836292e-2f;
  p = p * y - 1.1514610310e-1f;
  p = p * y + 1.1676998740e-1f;
  p = p * y - 1.2420140846e-1f;
  p = p * y + 1.4249322787e-1f;
  p = p * y - 1.6668057665e-1f;
  p = p * y + 2.0000714765e-1f;
  p = p * y - 2.4999993993e-1f;
  p = p * y + 3.3333331174e-1f;
  float r = y + y * z * p - 0.5f * z;
  return r + ef * 0.693147180559945309f;
}

/* Runs fn(&jobs[t]) for t < threads. With OpenMP, on the process's OpenMP threads: torch's, when
 * its libgomp is the one loaded (the library is linked by soname), whose threads, still spinning
 * after the product before the pass, take the work at once (threads of our own would share the
 * cores with them). Without OpenMP, POSIX threads (a range whose thread cannot be started runs on
 * the calling thread). */
#ifdef _OPENMP
#define PARALLEL_RANGES(fn, jobs, threads)                                  \
  do {                                                                      \
    _Pragma("omp parallel for num_threads(threads) schedule(static, 1)")   \
    for (int t_ = 0; t_ < (threads); t_++) fn(&(jobs)[t_]);                \
  } while (0)
#else
#define PARALLEL_RANGES(fn, jobs, threads)                                          \
  do {                                                                              \
    pthread_t th_[256];                                                             \
    int started_[256] = {0};                                                        \
    for (int t_ = 1; t_ < (threads); t_++)                                          \
      started_[t_] = pthread_create(&th_[t_], NULL, fn, &(jobs)[t_]) == 0;          \
    fn(&(jobs)[0]);                                                                 \
    for (int t_ = 1; t_ < (threads); t_++) {                                        \
      if (started_[t_]) pthread_join(th_[t_], NULL);                                \
      else fn(&(jobs)[t_]);                                                         \
    }                                                                               \
  } while (0)
#endif

/* The ranges of rows a pass splits its rows into: one per thread, at least one, at most one per
 * row and MAX_THREADS (the size of each pass's array of jobs). */
enum { MAX_THREADS = 256 };

static inline int range_threads(int threads, int64_t rows) {
  if (threads > rows) threads = (int)rows;
  if (threads < 1) threads = 1;
  return threads > MAX_THREADS ? MAX_THREADS : threads;
}

/* floats of scratch per thread for distance weighting (distance_row_packed's layout), which the
 * caller allocates (hn_distance_scratch) */
#define DISTANCE_SCRATCH(m) (2 * (m) + 32 + 2 * (((m) + 15) / 16) + 16)

int64_t hn_distance_scratch(int64_t m) { return DISTANCE_SCRATCH(m); }

typedef struct {
  float *X;
  int64_t m, ld;
  const float *lo, *hi;   /* per-row inclusive bounds on X, or NULL (filters) */
  int kind;               /* 0 none, 1 window, 2 distance */
  const float *centre;    /* kind 1: keep |x - centre_r| < half */
  float half;
  float two_t, p_v, u_lo, u_hi; /* kind 2: u = 2 - 2 t x, keep u < u_hi; p_u = p_v - 1/2 */
  const uint8_t *inactive;
  int free_exp;
  int64_t *cnt;
  float *lse_b, *lse_a, *scale;
  uint8_t *fallback;
  float *scratch; /* kind 2: one row of m floats per range of rows */
  const int32_t *rec_slot; /* the diagnostics' sampled rows: their slot in rec_x and rec_lw, or < 0 */
  float *rec_x, *rec_lw;
  int64_t rec_ld, rec_rows; /* a slot at or past rec_rows is not written: the buffers end there */
  int64_t r0, r1;
} job_t;

/* Whether x is a candidate after the filters and the weighting's rule: finite (the kernel's
 * candidate rule wrote -inf), lo <= x <= hi (similarity filters), |x - c| < h (semi-hard window)
 * and 2 - 2 t x < u_hi (distance weighting's far rule). A rule a row does not have takes neutral
 * values (+-inf), so one branch-free test serves every kind and the loops vectorise. */
static inline __attribute__((always_inline)) int keep_of(float x, float lo, float hi, float c, float h, float two_t, float u_hi) {
  return (x > -INFINITY) & (x >= lo) & (x <= hi) & (fabsf(x - c) < h) & ((2.0f - two_t * x) < u_hi);
}

/* x <- e^{x - shift} on the candidates of x[0..m) (keep_of with lo, hi, c, h; no distance rule), 0
 * elsewhere; returns sum E, and sum E^2 in *sumsq if given. */
static float exp_run(float *x, int64_t m, float shift, float lo, float hi, float c, float h, float *sumsq) {
  int64_t i = 0;
  float s = 0.0f, q = 0.0f;
#if defined(__AVX512F__)
  __m512 vs = _mm512_setzero_ps(), vq = _mm512_setzero_ps();
  const __m512 sh = _mm512_set1_ps(shift);
  /* without a rule only the finite test remains: one mask compare where v_keep makes four (on one
   * port); the row pass without a rule takes 13 % less time so (2B = 8192, 512 rows, one thread) */
  const int any_rule = !(lo == -INFINITY && hi == INFINITY && h == INFINITY);
  for (; i + 16 <= m; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 k = any_rule ? v_keep(v, lo, hi, c, h)
                                 : _mm512_cmp_ps_mask(v, _mm512_set1_ps(-INFINITY), _CMP_GT_OQ);
    const __m512 e = _mm512_maskz_mov_ps(k, v_exp(_mm512_sub_ps(v, sh)));
    _mm512_storeu_ps(x + i, e);
    vs = _mm512_add_ps(vs, e);
    vq = _mm512_fmadd_ps(e, e, vq);
  }
  s = _mm512_reduce_add_ps(vs);
  q = _mm512_reduce_add_ps(vq);
#endif
  float sl[LANES] = {0}, ql[LANES] = {0};
#define EXP_ONE(I, L)                                         \
  do {                                                        \
    float v = x[I];                                           \
    int k = keep_of(v, lo, hi, c, h, 0.0f, INFINITY);         \
    float e = hn_exp(k ? v - shift : 0.0f);                   \
    e = k ? e : 0.0f;                                         \
    x[I] = e;                                                 \
    sl[L] += e;                                               \
    ql[L] += e * e;                                           \
  } while (0)
  LANE_LOOP(i, m, EXP_ONE);
#undef EXP_ONE
  for (int l = 0; l < LANES; l++) {
    s += sl[l];
    q += ql[l];
  }
  if (sumsq) *sumsq = q;
  return s;
}


static void zero_row(const job_t *j, float *x, int64_t r) {
  /* a row without candidates or an inactive anchor: a row of 0 through the softmax, as the blocked
   * path does (kernel._weighted_blocks_), a finite placeholder its caller skips */
  int64_t m = j->m;
  float v = j->free_exp ? 1.0f : 1.0f / (float)m;
  for (int64_t i = 0; i < m; i++) x[i] = v;
  j->lse_b[r] = logf((float)m);
  if (j->free_exp) j->scale[r] = 1.0f / (float)m;
}

/* 1/sqrt(u) for u > 0 normal, to float32 rounding (rsqrt14 and a Newton step on AVX-512). */
static inline __attribute__((always_inline)) float hn_rsqrt(float u) { return 1.0f / sqrtf(u); }
#if defined(__AVX512F__)
static inline __m512 v_rsqrt(__m512 u) {
  const __m512 y = _mm512_rsqrt14_ps(u);
  const __m512 uy2 = _mm512_mul_ps(_mm512_mul_ps(u, y), y);
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), y), _mm512_sub_ps(_mm512_set1_ps(3.0f), uy2));
}
#endif

#if defined(__AVX512F__)
/* The distance weighting's pieces on 16 lanes (distance_row's definitions): u = 2 - 2 t x clamped
 * to [u_lo, u_hi]; b = p_v log(u q) with q = max(1 - u/4, 1e-8); and, on the lanes of k, e^{x + b}
 * and e^b each over sqrt(u), shifted by mv2 and ma2 (the shifts times log2 e: in base 2, log2 e
 * goes into the fma that makes each exponent), the latter into *ea. */
#define V_INLINE static inline __attribute__((always_inline))
V_INLINE __m512 v_distance_u(__m512 v, float two_t, float u_lo, float u_hi) {
  const __m512 u0 = _mm512_fnmadd_ps(_mm512_set1_ps(two_t), v, _mm512_set1_ps(2.0f));
  return _mm512_min_ps(_mm512_max_ps(u0, _mm512_set1_ps(u_lo)), _mm512_set1_ps(u_hi));
}

V_INLINE __m512 v_distance_b(__m512 u, float p_v) {
  const __m512 q = _mm512_max_ps(_mm512_fnmadd_ps(_mm512_set1_ps(0.25f), u, _mm512_set1_ps(1.0f)),
                                 _mm512_set1_ps(1e-8f));
  return _mm512_mul_ps(_mm512_set1_ps(p_v), v_log(_mm512_mul_ps(u, q)));
}

V_INLINE __m512 v_distance_exps(__m512 v, __m512 b, __m512 u, __m512 mv2, __m512 ma2, __mmask16 k, __m512 *ea) {
  const __m512 ru = v_rsqrt(u), l2e = _mm512_set1_ps(1.44269504088896341f);
  *ea = _mm512_maskz_mul_ps(k, v_exp2(_mm512_fmsub_ps(b, l2e, ma2)), ru);
  return _mm512_maskz_mul_ps(k, v_exp2(_mm512_fmsub_ps(_mm512_add_ps(v, b), l2e, mv2)), ru);
}
#endif

/* The end of a distance-weighted row: lse_a, then the row's normalising factor and lse_b (the row
 * stays unnormalised: its factor goes with the products' operands), or the placeholder of an
 * inactive row. Returns the count n. */
static int64_t distance_done(const job_t *j, float *x, int64_t r, int64_t n, float s, float sa, float mv,
                             float ma) {
  j->lse_a[r] = ma + logf(sa);
  if (j->inactive && j->inactive[r]) {
    zero_row(j, x, r);
    j->scale[r] = 1.0f;
    return n;
  }
  j->scale[r] = 1.0f / s;
  j->lse_b[r] = mv + logf(s);
  return n;
}

/* Wu et al. 2017, a = -log q(d) = p_u log u + p_v log q with u = d^2 = 2 - 2 t x clamped to
 * [u_lo, u_hi] and q = 1 - u/4 (weighting.DistanceWeighted.weigh_). For every dimension n,
 * p_u = p_v - 1/2 (-(n - 2)/2 and -(n - 3)/2), so a = b - (1/2) log u with b = p_v log(u q):
 * one log per entry, and e^a = e^b / sqrt(u), whose factor 1/sqrt(u) is in [u_hi^-1/2, u_lo^-1/2].
 * First pass: b on the kept entries (-inf elsewhere) into w, the count, and the largest b and
 * x + b, x left as it is (a row without a kept entry takes the fallback on it). Second pass:
 * x <- e^{x + b - max(x + b)} / sqrt(u) with scale_r = 1 / sum (the factor that normalises the
 * row, applied to the products' operands) and lse_a = log sum_j e^{a_j} over the kept entries.
 * The sampled rows' record of the log-weights is a itself (-inf where removed). Returns the count. */
static int64_t distance_row(const job_t *j, float *x, float *w, int64_t r, float lo, float hi, float *rec) {
  const int64_t m = j->m;
  const float two_t = j->two_t, p_v = j->p_v, u_lo = j->u_lo, u_hi = j->u_hi;
  float mvl[LANES], mal[LANES];
  int32_t nl[LANES] = {0};
  for (int l = 0; l < LANES; l++) mvl[l] = mal[l] = -INFINITY;
#define DISTANCE_U(V) (fminf(fmaxf(2.0f - two_t * (V), u_lo), u_hi))
#define DISTANCE_ONE(I, L)                                      \
  do {                                                          \
    const float v = x[I];                                       \
    const int k = keep_of(v, lo, hi, 0.0f, INFINITY, two_t, u_hi); \
    const float u = DISTANCE_U(v);                              \
    float q = 1.0f - 0.25f * u;                                 \
    q = q < 1e-8f ? 1e-8f : q;                                  \
    const float b = k ? p_v * hn_log(u * q) : -INFINITY;        \
    const float vb = k ? v + b : -INFINITY;                     \
    w[I] = b;                                                   \
    nl[L] += k;                                                 \
    mvl[L] = vb > mvl[L] ? vb : mvl[L];                         \
    mal[L] = b > mal[L] ? b : mal[L];                           \
  } while (0)
  int64_t i0 = 0, n = 0;
  float mv = -INFINITY, ma = -INFINITY;
#if defined(__AVX512F__)
  {
    __m512 vmv = _mm512_set1_ps(-INFINITY), vma = vmv;
    const __m512 ninf = vmv;
    for (; i0 + 16 <= m; i0 += 16) {
      const __m512 v = _mm512_loadu_ps(x + i0);
      const __m512 u0 = _mm512_fnmadd_ps(_mm512_set1_ps(two_t), v, _mm512_set1_ps(2.0f));
      const __mmask16 k = v_keep(v, lo, hi, 0.0f, INFINITY) &
                          _mm512_cmp_ps_mask(u0, _mm512_set1_ps(u_hi), _CMP_LT_OQ);
      const __m512 b = _mm512_mask_mov_ps(ninf, k, v_distance_b(v_distance_u(v, two_t, u_lo, u_hi), p_v));
      _mm512_storeu_ps(w + i0, b);
      n += __builtin_popcount((unsigned)k);
      vmv = _mm512_max_ps(vmv, _mm512_mask_add_ps(ninf, k, v, b));
      vma = _mm512_max_ps(vma, b);
    }
    mv = _mm512_reduce_max_ps(vmv);
    ma = _mm512_reduce_max_ps(vma);
  }
#endif
  LANE_LOOP(i0, m, DISTANCE_ONE);
#undef DISTANCE_ONE
  for (int l = 0; l < LANES; l++) {
    n += nl[l];
    mv = mvl[l] > mv ? mvl[l] : mv;
    ma = mal[l] > ma ? mal[l] : ma;
  }
  if (n == 0) return 0;
  if (rec) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= m; i += 16) { /* the compiler leaves hn_log in this loop scalar */
      const __m512 v = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(w + i);
      const __m512 u = v_distance_u(v, two_t, u_lo, u_hi);
      const __mmask16 k = _mm512_cmp_ps_mask(b, _mm512_set1_ps(-INFINITY), _CMP_GT_OQ);
      const __m512 a = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), v_log(u), b);
      _mm512_storeu_ps(rec + i, _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), k, a));
    }
#endif
#define DISTANCE_REC(I, L)                                                              \
  do {                                                                                  \
    const float u = DISTANCE_U(x[I]);                                                   \
    rec[I] = w[I] > -INFINITY ? w[I] - 0.5f * hn_log(u) : -INFINITY;                    \
  } while (0)
    LANE_LOOP(i, m, DISTANCE_REC);
#undef DISTANCE_REC
  }
  float sl[LANES] = {0}, al[LANES] = {0};
  float s = 0.0f, sa = 0.0f;
  i0 = 0;
#if defined(__AVX512F__)
  {
    __m512 vs = _mm512_setzero_ps(), vsa = vs, ea;
    const __m512 mv2 = _mm512_set1_ps(mv * 1.44269504088896341f), ma2 = _mm512_set1_ps(ma * 1.44269504088896341f);
    for (; i0 + 16 <= m; i0 += 16) {
      const __m512 v = _mm512_loadu_ps(x + i0), b = _mm512_loadu_ps(w + i0);
      const __mmask16 k = _mm512_cmp_ps_mask(b, _mm512_set1_ps(-INFINITY), _CMP_GT_OQ);
      const __m512 e = v_distance_exps(v, b, v_distance_u(v, two_t, u_lo, u_hi), mv2, ma2, k, &ea);
      _mm512_storeu_ps(x + i0, e);
      vs = _mm512_add_ps(vs, e);
      vsa = _mm512_add_ps(vsa, ea);
    }
    s = _mm512_reduce_add_ps(vs);
    sa = _mm512_reduce_add_ps(vsa);
  }
#endif
#define DISTANCE_EXP(I, L)                                  \
  do {                                                      \
    const float v = x[I], b = w[I];                         \
    const int k = b > -INFINITY;                            \
    const float ru = hn_rsqrt(DISTANCE_U(v));               \
    float e = hn_exp(k ? v + b - mv : 0.0f) * ru;           \
    float ea = hn_exp(k ? b - ma : 0.0f) * ru;              \
    e = k ? e : 0.0f;                                       \
    ea = k ? ea : 0.0f;                                     \
    sl[L] += e;                                             \
    al[L] += ea;                                            \
    x[I] = e;                                               \
  } while (0)
  LANE_LOOP(i0, m, DISTANCE_EXP);
#undef DISTANCE_EXP
#undef DISTANCE_U
  for (int l = 0; l < LANES; l++) {
    s += sl[l];
    sa += al[l];
  }
  return distance_done(j, x, r, n, s, sa, mv, ma);
}

#if defined(__AVX512F__)
/* distance_row on the kept entries alone: the rule removes the far candidates (u >= u_hi), and the
 * logs and exponentials are the pass's cost, so they run over the kept entries packed into a dense
 * buffer — compressed from each run of 16 entries, expanded back into the row after — in three
 * trips: keep and pack; log(u q) and the largest values; the exponentials. The scratch holds the
 * packed x (then e^..) and b, each m + 16 floats, and per run of 16 its mask and its offset in the
 * packed order. The same values as distance_row's lanes, the same record. */
static int64_t distance_row_packed(const job_t *j, float *x, float *scratch, int64_t r, float lo, float hi,
                                   float *rec) {
  const int64_t m = j->m, nv = (m + 15) / 16;
  const float two_t = j->two_t, p_v = j->p_v, u_lo = j->u_lo, u_hi = j->u_hi;
  float *xd = scratch, *bd = scratch + m + 16;
  uint32_t *masks = (uint32_t *)(scratch + 2 * m + 32);
  int32_t *off = (int32_t *)(scratch + 2 * m + 32 + nv);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const __mmask16 tail = m % 16 ? (__mmask16)((1u << (m % 16)) - 1u) : (__mmask16)0xFFFF;
  int64_t p = 0;
  for (int64_t i = 0; i < nv; i++) {
    const __mmask16 lm = i == nv - 1 ? tail : (__mmask16)0xFFFF;
    const __m512 v = _mm512_mask_loadu_ps(ninf, lm, x + 16 * i);
    const __m512 u0 = _mm512_fnmadd_ps(_mm512_set1_ps(two_t), v, _mm512_set1_ps(2.0f));
    const __mmask16 k = v_keep(v, lo, hi, 0.0f, INFINITY) & _mm512_cmp_ps_mask(u0, _mm512_set1_ps(u_hi), _CMP_LT_OQ);
    masks[i] = k;
    off[i] = (int32_t)p;
    _mm512_storeu_ps(xd + p, _mm512_maskz_compress_ps(k, v));
    p += __builtin_popcount((unsigned)k);
  }
  if (p == 0) return 0;
  const __mmask16 ptail = p % 16 ? (__mmask16)((1u << (p % 16)) - 1u) : (__mmask16)0xFFFF;
  __m512 vmv = ninf, vma = ninf;
  for (int64_t i = 0; i < p; i += 16) {
    const __mmask16 lm = i + 16 >= p ? ptail : (__mmask16)0xFFFF;
    const __m512 v = _mm512_maskz_loadu_ps(lm, xd + i);
    const __m512 b = v_distance_b(v_distance_u(v, two_t, u_lo, u_hi), p_v);
    _mm512_storeu_ps(bd + i, b);
    vmv = _mm512_mask_max_ps(vmv, lm, vmv, _mm512_add_ps(v, b));
    vma = _mm512_mask_max_ps(vma, lm, vma, b);
  }
  const float mv = _mm512_reduce_max_ps(vmv), ma = _mm512_reduce_max_ps(vma);
  if (rec) { /* a on the packed entries, then expanded into the record, -inf elsewhere */
    for (int64_t i = 0; i < p; i += 16) {
      const __m512 v = _mm512_loadu_ps(xd + i);
      const __m512 u = v_distance_u(v, two_t, u_lo, u_hi);
      const __m512 a = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), v_log(u), _mm512_loadu_ps(bd + i));
      _mm512_mask_storeu_ps(rec + i, i + 16 >= p ? ptail : (__mmask16)0xFFFF, a);
    }
    for (int64_t i = nv - 1; i >= 0; i--) { /* backwards: each run's packed entries lie at or before it */
      const __mmask16 lm = i == nv - 1 ? tail : (__mmask16)0xFFFF;
      const __mmask16 k = (__mmask16)masks[i], packed = (__mmask16)((1u << __builtin_popcount(k)) - 1u);
      const __m512 a = _mm512_mask_expand_ps(ninf, k, _mm512_maskz_loadu_ps(packed, rec + off[i]));
      _mm512_mask_storeu_ps(rec + 16 * i, lm, a);
    }
  }
  const __m512 mv2 = _mm512_set1_ps(mv * 1.44269504088896341f), ma2 = _mm512_set1_ps(ma * 1.44269504088896341f);
  __m512 vs = _mm512_setzero_ps(), vsa = vs, ea;
  for (int64_t i = 0; i < p; i += 16) {
    const __mmask16 lm = i + 16 >= p ? ptail : (__mmask16)0xFFFF;
    const __m512 v = _mm512_maskz_loadu_ps(lm, xd + i), b = _mm512_maskz_loadu_ps(lm, bd + i);
    const __m512 e = v_distance_exps(v, b, v_distance_u(v, two_t, u_lo, u_hi), mv2, ma2, lm, &ea);
    _mm512_storeu_ps(xd + i, e);
    vs = _mm512_add_ps(vs, e);
    vsa = _mm512_add_ps(vsa, ea);
  }
  for (int64_t i = 0; i < nv; i++) {
    const __mmask16 lm = i == nv - 1 ? tail : (__mmask16)0xFFFF;
    _mm512_mask_storeu_ps(x + 16 * i, lm, _mm512_maskz_expand_ps((__mmask16)masks[i], _mm512_loadu_ps(xd + off[i])));
  }
  return distance_done(j, x, r, p, _mm512_reduce_add_ps(vs), _mm512_reduce_add_ps(vsa), mv, ma);
}
#endif

/* Filters and the semi-hard window: the kept entries gain 0 (lse_a = log n); x <- e^x (shift-free,
 * scale_r = 1 / sum) or x <- softmax(x). */
static void selection_row(const job_t *j, float *x, int64_t r, int64_t n, float lo, float hi, float c, float h,
                          float *rec) {
  const int64_t m = j->m;
  if (rec)
    for (int64_t i = 0; i < m; i++) rec[i] = keep_of(x[i], lo, hi, c, h, 0.0f, INFINITY) ? 0.0f : -INFINITY;
  j->lse_a[r] = logf((float)n);
  if ((j->inactive && j->inactive[r]) || n == 0) {
    zero_row(j, x, r);
    return;
  }
  float mx = 0.0f;
  if (!j->free_exp) {
    float ml[LANES];
    for (int l = 0; l < LANES; l++) ml[l] = -INFINITY;
#define KEPT_MAX(I, L)                                                           \
  do {                                                                           \
    const float v = keep_of(x[I], lo, hi, c, h, 0.0f, INFINITY) ? x[I] : -INFINITY; \
    ml[L] = v > ml[L] ? v : ml[L];                                               \
  } while (0)
    LANE_LOOP(0, m, KEPT_MAX);
#undef KEPT_MAX
    mx = -INFINITY;
    for (int l = 0; l < LANES; l++) mx = ml[l] > mx ? ml[l] : mx;
  }
  const float s = exp_run(x, m, mx, lo, hi, c, h, NULL);
  j->lse_b[r] = mx + logf(s);
  if (j->free_exp) {
    j->scale[r] = 1.0f / s;
  } else {
    const float inv = 1.0f / s;
    for (int64_t i = 0; i < m; i++) x[i] *= inv;
  }
}

/* The weighting's fallback on a row whose rule keeps no candidate (n == 0). Semi-hard
 * (weighting.SemiHard.weigh_): the valid candidate nearest the window, i.e. with the largest
 * h - |x - c| (the first of equals), alone; distance weighting (DistanceWeighted.weigh_): every
 * valid candidate, unweighted. "Valid": finite and within the filters' bounds. Returns the number
 * kept, with -inf written on the rest for semi-hard. */
static int64_t fallback_row(const job_t *j, float *x, float lo, float hi, float c, float h) {
  const int64_t m = j->m;
  int64_t n = 0, at = -1;
  float best = -INFINITY;
  for (int64_t i = 0; i < m; i++) {
    const int ok = keep_of(x[i], lo, hi, 0.0f, INFINITY, 0.0f, INFINITY);
    n += ok;
    if (ok && j->kind == 1) {
      const float d = h - fabsf(x[i] - c);
      if (at < 0 || d > best) {
        best = d;
        at = i;
      }
    }
  }
  if (j->kind != 1) return n;
  for (int64_t i = 0; i < m; i++)
    if (i != at) x[i] = -INFINITY;
  return at < 0 ? 0 : 1;
}

/* A row whose rule keeps no candidate (n == 0): the weighting's fallback (fallback_row), then the
 * selection's softmax of what it kept. */
static void fallback_of(const job_t *j, float *x, int64_t r, float lo, float hi, float c, float h, float *rec) {
  const int64_t n = fallback_row(j, x, lo, hi, c, h);
  /* what is left is a selection of the valid entries: a = 0 on them */
  j->cnt[r] = n;
  j->fallback[r] = 1;
  selection_row(j, x, r, n, lo, hi, 0.0f, INFINITY, rec);
  if (j->kind == 2) {
    j->fallback[r] = n > 0; /* a row without any valid candidate is no fallback, only empty */
    if (n == 0) j->lse_a[r] = 0.0f;
    j->scale[r] = 1.0f;
  }
}

static void *run_rows(void *arg) {
  const job_t *j = arg;
  const fp_mode_t mode = flush_subnormals();
  const int64_t m = j->m;
  const int kind = j->kind;
  const float h = kind == 1 ? j->half : INFINITY;
  const float two_t = kind == 2 ? j->two_t : 0.0f, u_hi = kind == 2 ? j->u_hi : INFINITY;
  float kept_share = 0.0f; /* distance weighting: the share of the previous row's candidates it kept */
  (void)kept_share;
  for (int64_t r = j->r0; r < j->r1; r++) {
    float *x = j->X + r * j->ld;
    const float lo = j->lo ? j->lo[r] : -INFINITY, hi = j->hi ? j->hi[r] : INFINITY;
    const float c = kind == 1 ? j->centre[r] : 0.0f;
    float *rec = NULL;
    /* the row before the rule, its log-weights after */
    if (j->rec_slot && j->rec_slot[r] >= 0 && j->rec_slot[r] < j->rec_rows) {
      memcpy(j->rec_x + (int64_t)j->rec_slot[r] * j->rec_ld, x, sizeof(float) * (size_t)m);
      rec = j->rec_lw + (int64_t)j->rec_slot[r] * j->rec_ld;
    }
    if (kind == 2) { /* its first pass counts */
#if defined(__AVX512F__)
      /* packed where the row before kept under 60 % of its candidates (measured at m = 8192: 0.76
       * of the in-place pass's time at 41 % kept, 1.32 at all kept) */
      const int64_t n = kept_share < 0.6f ? distance_row_packed(j, x, j->scratch, r, lo, hi, rec)
                                          : distance_row(j, x, j->scratch, r, lo, hi, rec);
      kept_share = (float)n / (float)m;
#else
      const int64_t n = distance_row(j, x, j->scratch, r, lo, hi, rec);
#endif
      j->cnt[r] = n;
      j->fallback[r] = 0;
      if (n == 0) fallback_of(j, x, r, lo, hi, c, h, rec);
      continue;
    }
    int32_t nl[LANES] = {0};
#define COUNT_ONE(I, L) (nl[L] += keep_of(x[I], lo, hi, c, h, two_t, u_hi))
    LANE_LOOP(0, m, COUNT_ONE);
#undef COUNT_ONE
    int64_t n = 0;
    for (int l = 0; l < LANES; l++) n += nl[l];
    if (n == 0 && kind != 0) {
      fallback_of(j, x, r, lo, hi, c, h, rec);
      continue;
    }
    j->cnt[r] = n;
    j->fallback[r] = 0;
    selection_row(j, x, r, n, lo, hi, c, h, rec);
  }
  restore_fp_mode(mode);
  return NULL;
}

/* The kernel's softmax rows (kernel._softmaxes_: beta = 0 without log-weights, and the root tilt at
 * beta = 1): on each row, first the candidate rule by columns — `gather` (if given) reads the
 * values at `cols` (label positives), then -inf is written at the anchor's own column, its
 * positive's and, with `fill_cols`, at `cols` (other labels) —, then E = e^x (shift-free) or
 * e^{x - max} over the finite entries (0 on -inf), z = sum E, q = sum E^2; then
 * then 0: x <- E (shift-free) or P = E / z;
 * then 1 ("square"): x <- E^2 or P^2;
 * then 2 ("tilt"): x <- E (E - q / 2z) or P (P - sum P^2 / 2).
 * lse_r = log z (+ max) and sumsq_r = q / z^2 = sum P^2. An inactive row is read as a row of 0
 * (every entry kept, no column rule), the placeholder the torch path makes. A row with
 * rec_slot[r] >= 0 (the diagnostics' sample) is first copied as it is to that row of rec_x. */
typedef struct {
  float *X;
  int64_t m, ld;
  const uint8_t *inactive;
  int free_exp, then;
  float *lse, *sumsq;
  const int64_t *self_col, *pos_col, *cols; /* per row; -1 (or NULL): none */
  const int64_t *col_row, *col_cnt; /* row r's columns: cols row col_row[r] (NULL: r), its first col_cnt[r] */
  int64_t P, ldc;
  int fill_cols;
  float *gather;
  int64_t ldg;
  const int32_t *rec_slot; /* rows copied as they are, before the rule, to that row of rec_x (or < 0) */
  float *rec_x;
  int64_t rec_ld, rec_rows; /* a slot at or past rec_rows is not written: the buffer ends there */
  int64_t r0, r1;
} tilt_job_t;

/* The first n of row r's P columns in a (rows × P) table, read at table row `row` (NULL: r). */
static inline const int64_t *table_row(const int64_t *cols, int64_t ldc, const int64_t *row, const int64_t *cnt,
                                       int64_t P, int64_t r, int64_t *n) {
  *n = cnt ? (cnt[r] < P ? (cnt[r] > 0 ? cnt[r] : 0) : P) : P;
  return cols + (row ? row[r] : r) * ldc;
}

static void column_rule(const tilt_job_t *j, float *x, int64_t r) {
  if (j->cols) {
    int64_t n;
    const int64_t *c = table_row(j->cols, j->ldc, j->col_row, j->col_cnt, j->P, r, &n);
    if (j->gather) { /* the entries beyond n (padding) are 0 */
      float *g = j->gather + r * j->ldg;
      for (int64_t p = 0; p < n; p++) g[p] = x[c[p]];
      for (int64_t p = n; p < j->P; p++) g[p] = 0.0f;
    }
    if (j->fill_cols && !(j->inactive && j->inactive[r]))
      for (int64_t p = 0; p < n; p++) x[c[p]] = -INFINITY;
  }
  if (j->inactive && j->inactive[r]) {
    for (int64_t i = 0; i < j->m; i++) x[i] = 0.0f;
    return;
  }
  if (j->self_col && j->self_col[r] >= 0) x[j->self_col[r]] = -INFINITY;
  if (j->pos_col && j->pos_col[r] >= 0) x[j->pos_col[r]] = -INFINITY;
}

static void *run_tilt(void *arg) {
  const tilt_job_t *j = arg;
  const fp_mode_t mode = flush_subnormals();
  const int64_t m = j->m;
  for (int64_t r = j->r0; r < j->r1; r++) {
    float *x = j->X + r * j->ld;
    if (j->rec_slot && j->rec_slot[r] >= 0 && j->rec_slot[r] < j->rec_rows)
      memcpy(j->rec_x + (int64_t)j->rec_slot[r] * j->rec_ld, x, sizeof(float) * (size_t)m);
    column_rule(j, x, r);
    float mx = 0.0f;
    if (!j->free_exp) {
      float ml[LANES];
      for (int l = 0; l < LANES; l++) ml[l] = -INFINITY;
      int64_t i0 = 0;
      mx = -INFINITY;
#if defined(__AVX512F__)
      { /* the compiler leaves this reduction scalar */
        __m512 vm = _mm512_set1_ps(-INFINITY);
        for (; i0 + 16 <= m; i0 += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i0));
        mx = _mm512_reduce_max_ps(vm);
      }
#endif
#define ROW_MAX(I, L) (ml[L] = x[I] > ml[L] ? x[I] : ml[L])
      LANE_LOOP(i0, m, ROW_MAX);
#undef ROW_MAX
      for (int l = 0; l < LANES; l++) mx = ml[l] > mx ? ml[l] : mx;
    }
    float q;
    const float z = exp_run(x, m, mx, -INFINITY, INFINITY, 0.0f, INFINITY, &q);
    j->lse[r] = mx + logf(z);
    j->sumsq[r] = q / (z * z);
    if (j->free_exp) {
      if (j->then == 1) {
        for (int64_t i = 0; i < m; i++) x[i] *= x[i];
      } else if (j->then == 2) {
        const float half = q / (2.0f * z);
        for (int64_t i = 0; i < m; i++) x[i] *= x[i] - half;
      }
    } else {
      const float inv = 1.0f / z, half = 0.5f * j->sumsq[r];
      if (j->then == 0) {
        for (int64_t i = 0; i < m; i++) x[i] *= inv;
      } else if (j->then == 1) {
        for (int64_t i = 0; i < m; i++) {
          float p = x[i] * inv;
          x[i] = p * p;
        }
      } else {
        for (int64_t i = 0; i < m; i++) {
          float p = x[i] * inv;
          x[i] = p * (p - half);
        }
      }
    }
  }
  restore_fp_mode(mode);
  return NULL;
}

void hn_softmax_rows(float *X, int64_t rows, int64_t m, int64_t ld, const uint8_t *inactive, int free_exp, int then,
                     float *lse, float *sumsq, const int64_t *self_col, const int64_t *pos_col, const int64_t *cols,
                     const int64_t *col_row, const int64_t *col_cnt, int64_t P, int64_t ldc, int fill_cols, float *gather, int64_t ldg, const int32_t *rec_slot,
                     float *rec_x, int64_t rec_ld, int64_t rec_rows, int threads) {
  tilt_job_t jobs[MAX_THREADS];
  threads = range_threads(threads, rows);
  for (int t = 0; t < threads; t++)
    jobs[t] = (tilt_job_t){X, m, ld, inactive, free_exp, then, lse, sumsq, self_col, pos_col, cols, col_row, col_cnt, P, ldc,
                           fill_cols, gather, ldg, rec_slot, rec_x, rec_ld, rec_rows, rows * t / threads,
                           rows * (t + 1) / threads};
  PARALLEL_RANGES(run_tilt, jobs, threads);
}

/* The label positives' terms of the general path (hardneg.losses.kernel._terms with tau+ = 0): row
 * r's positives are the first cnt[r] of its P columns (table_row: row col_row[r] of cols, NULL: r)
 * other than self_col[r] (-1: none; the rest is padding), and with z = neg[r] - sp[r, p] each gives l = softplus(z), dl/dg = sigmoid(z)
 * with the positive in the denominator (include), else l = z and 1 (_per_positive). Writes
 * loss[r] = sum_p l, gsum[r] = sum_p dl/dg and dsp[r, p] = dl/ds_p = -dl/dg on the positives, 0 on
 * the rest. softplus(z) = max(z, 0) + log1p(e) with e = e^-|z| and log1p(e) = log(u) e / (u - 1),
 * u = 1 + e rounded (exact to float32 rounding where u rounds e away); sigmoid(z) = (z >= 0 ? 1 :
 * e) / u. */
typedef struct {
  const float *sp;
  const int64_t *cols, *col_row, *cnt, *self_col;
  int64_t P, ldc;
  const float *neg;
  int include;
  float *loss, *gsum, *dsp;
  int64_t r0, r1;
} terms_job_t;

static void *run_terms(void *arg) {
  const terms_job_t *j = arg;
  const fp_mode_t mode = flush_subnormals();
  const int64_t P = j->P;
  for (int64_t r = j->r0; r < j->r1; r++) {
    const float *sp = j->sp + r * P;
    int64_t n;
    const int64_t *c = table_row(j->cols, j->ldc, j->col_row, j->cnt, P, r, &n);
    float *dsp = j->dsp + r * P;
    const int64_t self = j->self_col ? j->self_col[r] : -1;
    const float g = j->neg[r];
    float ls[LANES], gs[LANES];
    for (int l = 0; l < LANES; l++) ls[l] = gs[l] = 0.0f;
    if (j->include) {
#define SOFTPLUS_TERM(I, L)                                                       \
  do {                                                                            \
    const float z_ = g - sp[I], e_ = hn_exp(-fabsf(z_)), u_ = 1.0f + e_;          \
    const float m_ = u_ - 1.0f, lp_ = m_ == 0.0f ? e_ : hn_log(u_) * (e_ / m_);   \
    const float s_ = (z_ >= 0.0f ? 1.0f : e_) / u_, ok_ = c[I] != self;           \
    ls[L] += ok_ ? (z_ > 0.0f ? z_ : 0.0f) + lp_ : 0.0f;                          \
    gs[L] += ok_ ? s_ : 0.0f;                                                     \
    dsp[I] = ok_ ? -s_ : 0.0f;                                                    \
  } while (0)
      LANE_LOOP(0, n, SOFTPLUS_TERM);
#undef SOFTPLUS_TERM
    } else {
#define LINEAR_TERM(I, L)                        \
  do {                                           \
    const float ok_ = c[I] != self;              \
    ls[L] += ok_ ? g - sp[I] : 0.0f;             \
    gs[L] += ok_;                                \
    dsp[I] = -ok_;                               \
  } while (0)
      LANE_LOOP(0, n, LINEAR_TERM);
#undef LINEAR_TERM
    }
    for (int64_t p = n; p < P; p++) dsp[p] = 0.0f;
    float lsum = 0.0f, gsum = 0.0f;
    for (int l = 0; l < LANES; l++) {
      lsum += ls[l];
      gsum += gs[l];
    }
    j->loss[r] = lsum;
    j->gsum[r] = gsum;
  }
  restore_fp_mode(mode);
  return NULL;
}

void hn_label_terms(const float *sp, const int64_t *cols, const int64_t *col_row, int64_t ldc, int64_t rows,
                    int64_t P, const int64_t *cnt, const int64_t *self_col, const float *neg, int include, float *loss,
                    float *gsum, float *dsp, int threads) {
  terms_job_t jobs[MAX_THREADS];
  threads = range_threads(threads, rows);
  for (int t = 0; t < threads; t++)
    jobs[t] = (terms_job_t){sp, cols, col_row, cnt, self_col, P, ldc, neg, include, loss, gsum, dsp,
                            rows * t / threads, rows * (t + 1) / threads};
  PARALLEL_RANGES(run_terms, jobs, threads);
}

/* The positives' terms into the gradient tile (hardneg.losses.kernel._products_): X[r, c_p] +=
 * vals[r, p] h[r] for the first cnt[r] of row r's columns (table_row); vals is 0 where the column
 * is no positive of the row. */
typedef struct {
  float *X;
  int64_t ld;
  const int64_t *cols, *col_row, *cnt;
  int64_t P, ldc;
  const float *vals, *h;
  int64_t r0, r1;
} scatter_job_t;

static void *run_scatter(void *arg) {
  const scatter_job_t *j = arg;
  for (int64_t r = j->r0; r < j->r1; r++) {
    int64_t n;
    const int64_t *c = table_row(j->cols, j->ldc, j->col_row, j->cnt, j->P, r, &n);
    float *x = j->X + r * j->ld;
    const float *v = j->vals + r * j->P;
    const float h = j->h[r];
    for (int64_t p = 0; p < n; p++) x[c[p]] += v[p] * h;
  }
  return NULL;
}

void hn_label_scatter(float *X, int64_t rows, int64_t ld, const int64_t *cols, const int64_t *col_row, int64_t ldc,
                      const int64_t *cnt, int64_t P, const float *vals, const float *h, int threads) {
  scatter_job_t jobs[MAX_THREADS];
  threads = range_threads(threads, rows);
  for (int t = 0; t < threads; t++)
    jobs[t] = (scatter_job_t){X, ld, cols, col_row, cnt, P, ldc, vals, h, rows * t / threads,
                              rows * (t + 1) / threads};
  PARALLEL_RANGES(run_scatter, jobs, threads);
}

/* The diagnostics' statistics of a few sampled rows (negatives.diagnostics.DiagnosticsAccumulator):
 * on each row, the valid entries are those with a finite log-weight w (w > -inf); their number,
 * the largest s and its column, the sum of s, a histogram of s over [lo, hi] in `bins` bins
 * (torch.histc's rule: the value hi in the last bin, values outside ignored; one histogram of
 * bins + 1 counts per range of rows, the last for the entries it does not count), and unless
 * `uniform` the softmax of w + beta_over_t s over them: its log-sum-exp, sum_j p_j s_j and
 * sum_j p_j^2. */
typedef struct {
  const float *S, *W;
  int64_t m, lds, ldw, bins;
  int uniform;
  float beta_over_t, lo, hi;
  int64_t *hist, *n_valid, *hard_j;
  float *hard, *lse;
  double *sum_s, *sum_ps, *sum_pp;
  int64_t r0, r1;
} stats_job_t;

static void *run_stats(void *arg) {
  const stats_job_t *j = arg;
  const fp_mode_t mode = flush_subnormals(); /* e^{w - max} of distance weights reach e^-87 */
  const int64_t m = j->m, bins = j->bins;
  const double to_bin = (double)bins / ((double)j->hi - (double)j->lo);
  for (int64_t r = j->r0; r < j->r1; r++) {
    const float *s = j->S + r * j->lds, *w = j->W + r * j->ldw;
    const float bt = j->beta_over_t, lo = j->lo, hi = j->hi;
    /* in lanes: the count, the sum (double), the first largest s and its column, the largest logit */
    int32_t nl[LANES] = {0};
    double sl[LANES] = {0};
    float bl[LANES], ml[LANES];
    int64_t al[LANES];
    for (int l = 0; l < LANES; l++) {
      bl[l] = ml[l] = -INFINITY;
      al[l] = m;
    }
#define STATS_ONE(I, L)                                               \
  do {                                                                \
    const float x = s[I];                                             \
    const int k = w[I] > -INFINITY;                                   \
    nl[L] += k;                                                       \
    sl[L] += k ? (double)x : 0.0;                                     \
    const int better = k & ((x > bl[L]) | (al[L] == m));              \
    bl[L] = better ? x : bl[L];                                       \
    al[L] = better ? (I) : al[L];                                     \
    const float lg = k ? w[I] + bt * x : -INFINITY;                   \
    ml[L] = lg > ml[L] ? lg : ml[L];                                  \
  } while (0)
    LANE_LOOP(0, m, STATS_ONE);
#undef STATS_ONE
    int64_t n = 0, at = m;
    double sum = 0.0;
    float best = -INFINITY, mx = -INFINITY;
    for (int l = 0; l < LANES; l++) {
      n += nl[l];
      sum += sl[l];
      mx = ml[l] > mx ? ml[l] : mx;
      if (al[l] < m && (at == m || bl[l] > best || (bl[l] == best && al[l] < at))) {
        best = bl[l];
        at = al[l];
      }
    }
    /* the histogram: bins in lanes, a block at a time, then the counts (a branch per entry on
     * whether it counts mispredicts on rows whose valid entries are scattered) */
    for (int64_t b0 = 0; b0 < m; b0 += 256) {
      const int64_t b1 = b0 + 256 < m ? b0 + 256 : m;
      int32_t bin[256];
#define BIN_ONE(I, L)                                                                   \
  do {                                                                                  \
    const float x = s[I];                                                               \
    const int ok = (w[I] > -INFINITY) & (x >= lo) & (x <= hi);                          \
    const int32_t b = (int32_t)((ok ? (double)x - (double)lo : 0.0) * to_bin);          \
    bin[(I) - b0] = ok ? (b < bins ? b : (int32_t)bins - 1) : (int32_t)bins;             \
  } while (0)
      LANE_LOOP(b0, b1, BIN_ONE);
#undef BIN_ONE
      for (int64_t i = 0; i < b1 - b0; i++) j->hist[bin[i]]++; /* no branch: the rest count in bin `bins` */
    }
    j->n_valid[r] = n;
    j->hard[r] = n ? best : -INFINITY;
    j->hard_j[r] = at == m ? 0 : at;
    j->sum_s[r] = sum;
    if (j->uniform || n == 0) {
      j->lse[r] = n ? logf((float)n) : -INFINITY;
      j->sum_ps[r] = n ? sum / (double)n : 0.0;
      j->sum_pp[r] = n ? 1.0 / (double)n : 0.0;
      continue;
    }
    /* float terms in lanes (each within 2 ulp, e <= 1 after the shift), summed in double */
    float zl[LANES] = {0}, zsl[LANES] = {0}, zzl[LANES] = {0};
#define STATS_EXP(I, L)                                \
  do {                                                 \
    const int k = w[I] > -INFINITY;                    \
    float e = hn_exp(k ? w[I] + bt * s[I] - mx : 0.0f); \
    e = k ? e : 0.0f;                                  \
    zl[L] += e;                                        \
    zsl[L] += e * s[I];                                \
    zzl[L] += e * e;                                   \
  } while (0)
    LANE_LOOP(0, m, STATS_EXP);
#undef STATS_EXP
    double z = 0.0, zs = 0.0, zz = 0.0;
    for (int l = 0; l < LANES; l++) {
      z += zl[l];
      zs += zsl[l];
      zz += zzl[l];
    }
    j->lse[r] = mx + (float)log(z);
    j->sum_ps[r] = zs / z;
    j->sum_pp[r] = zz / (z * z);
  }
  restore_fp_mode(mode);
  return NULL;
}

void hn_row_stats(const float *S, int64_t lds, const float *W, int64_t ldw, int64_t rows, int64_t m, int uniform,
                  float beta_over_t, float lo, float hi, int64_t bins, int64_t *hist, int64_t *n_valid,
                  float *hard, int64_t *hard_j, double *sum_s, float *lse, double *sum_ps, double *sum_pp,
                  int threads) {
  stats_job_t jobs[MAX_THREADS];
  threads = range_threads(threads, rows);
  for (int t = 0; t < threads; t++)
    jobs[t] = (stats_job_t){S, W, m, lds, ldw, bins, uniform, beta_over_t, lo, hi, hist + (int64_t)t * (bins + 1),
                            n_valid, hard_j, hard, lse, sum_s, sum_ps, sum_pp, rows * t / threads,
                            rows * (t + 1) / threads};
  PARALLEL_RANGES(run_stats, jobs, threads);
}

/* The gradient of y = x / |x| per row (losses.candidates._UnitRows): out = (g - y (y.g)) / |x|. */
typedef struct {
  const float *y, *g, *norms;
  float *out;
  int64_t d, r0, r1;
} unit_job_t;

static void *run_unit(void *arg) {
  const unit_job_t *j = arg;
  const int64_t d = j->d;
  for (int64_t r = j->r0; r < j->r1; r++) {
    const float *y = j->y + r * d, *g = j->g + r * d;
    float *o = j->out + r * d;
    float dl[LANES] = {0};
    const int64_t db = d - d % LANES;
    for (int64_t i = 0; i < db; i += LANES)
      for (int l = 0; l < LANES; l++) dl[l] += y[i + l] * g[i + l];
    float dot = 0.0f;
    for (int64_t i = db; i < d; i++) dot += y[i] * g[i];
    for (int l = 0; l < LANES; l++) dot += dl[l];
    const float inv = 1.0f / j->norms[r];
    for (int64_t i = 0; i < d; i++) o[i] = (g[i] - y[i] * dot) * inv;
  }
  return NULL;
}

void hn_unit_rows_backward(const float *y, const float *g, const float *norms, float *out, int64_t rows, int64_t d,
                           int threads) {
  unit_job_t jobs[MAX_THREADS];
  threads = range_threads(threads, rows);
  for (int t = 0; t < threads; t++)
    jobs[t] = (unit_job_t){y, g, norms, out, d, rows * t / threads, rows * (t + 1) / threads};
  PARALLEL_RANGES(run_unit, jobs, threads);
}

/* The whole pass over rows [0, rows) of X, in `threads` contiguous ranges of rows
 * (PARALLEL_RANGES); `scratch` holds `threads` rows of m floats (distance weighting). A row r with
 * rec_slot[r] >= 0 (the diagnostics' sample) leaves itself as it was before the rule in that row
 * of rec_x and what each entry gained by the rule (-inf where removed) in that row of rec_lw. */
void hn_weighted_softmax_rows(float *X, int64_t rows, int64_t m, int64_t ld, const float *lo, const float *hi, int kind,
                              const float *centre, float half, float two_t, float p_v, float u_lo,
                              float u_hi, const uint8_t *inactive, int free_exp, int64_t *cnt, float *lse_b,
                              float *lse_a, float *scale, uint8_t *fallback, const int32_t *rec_slot, float *rec_x,
                              float *rec_lw, int64_t rec_ld, int64_t rec_rows, float *scratch, int threads) {
  job_t jobs[MAX_THREADS];
  threads = range_threads(threads, rows);
  for (int t = 0; t < threads; t++)
    jobs[t] = (job_t){X, m, ld, lo, hi, kind, centre, half, two_t, p_v, u_lo, u_hi, inactive, free_exp,
                      cnt, lse_b, lse_a, scale, fallback,
                      scratch ? scratch + (int64_t)t * DISTANCE_SCRATCH(m) : NULL, rec_slot,
                      rec_x, rec_lw, rec_ld, rec_rows, rows * t / threads, rows * (t + 1) / threads};
  PARALLEL_RANGES(run_rows, jobs, threads);
}
