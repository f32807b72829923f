/* gemm.c: the local matmul seam (see gemm.h): engine choice, oneDNN matmul primitives cached
 * by shape, bf16 rounding of the operands and the bf16 shadow of the weights.
 *
 * oneDNN (built with MPIFORMER_ONEDNN, the Makefile's default when dnnl.h is present): a
 * matmul primitive is created for each (transposes, m, n, k, lda, ldb, ldc, alpha, beta, data
 * type) seen and kept in an open-addressing hash table (creation costs far more than a small
 * product; oneDNN's own primitive cache would still make us rebuild the descriptors each
 * call). A row-major operand that is transposed is described by its strides ({1, ld} instead
 * of {ld, 1}), so nothing is copied. alpha is the primitive's output scale and beta a sum
 * post-op, so C = alpha A B + beta C is one primitive. Debian's libdnnl2 uses OpenMP threads:
 * gemm_setup calls omp_set_num_threads so that oneDNN runs the requested threads (1 per rank
 * by default), whatever OMP_NUM_THREADS says.
 *
 * bf16: rounding is round to nearest even on the fp32 bit pattern (what oneDNN's reorder and
 * PyTorch do), NaN kept quiet. Without native bf16 kernels the operands are rounded into fp32
 * scratch (compact, leading dimension = stored columns) and multiplied by the fp32 engine.
 * Scratch buffers only grow, so after the first steps no product allocates.
 */
#include "gemm.h"

#include "common.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#ifdef MPIFORMER_ONEDNN
#include <dnnl.h>
void omp_set_num_threads(int n); /* libgomp, which libdnnl uses (no omp.h without -fopenmp) */
#endif

static int engine_ = GEMM_OPENBLAS, precision_ = GEMM_FP32, threads_ = 1;

/* ---- bf16 ------------------------------------------------------------------------------ */

static inline uint16_t f32_to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float x;
  memcpy(&x, &u, 4);
  return x;
}

float gemm_round_bf16(float x) {
  return bf16_to_f32(f32_to_bf16(x));
}

/* Grow-only scratch. */
typedef struct scratch {
  void *p;
  size_t bytes;
} scratch;
static scratch scr_a_, scr_b_;

static void *scratch_get(scratch *s, size_t bytes) {
  if (bytes > s->bytes) {
    free(s->p);
    s->bytes = bytes + bytes / 4;
    s->p = malloc(s->bytes);
    CHECK(s->p, "gemm: out of memory for %zu bytes of scratch", s->bytes);
  }
  return s->p;
}

/* ---- the bf16 shadow of the weights ---------------------------------------------------- */

typedef struct shadow {
  const float *base;
  int64_t n;
  uint16_t *bf;
} shadow;
enum { MAX_SHADOWS = 16 };
static shadow shadows_[MAX_SHADOWS];

static shadow *shadow_of(const float *p) {
  for (int i = 0; i < MAX_SHADOWS; i++)
    if (shadows_[i].base && p >= shadows_[i].base && p < shadows_[i].base + shadows_[i].n)
      return &shadows_[i];
  return NULL;
}

static void shadow_fill(shadow *s) {
  for (int64_t i = 0; i < s->n; i++)
    s->bf[i] = f32_to_bf16(s->base[i]);
}

void gemm_shadow_add(const float *base, int64_t n) {
  if (precision_ != GEMM_BF16 || !base || n <= 0) return;
  for (int i = 0; i < MAX_SHADOWS; i++)
    if (!shadows_[i].base) {
      shadows_[i] = (shadow){base, n, malloc((size_t)n * sizeof(uint16_t))};
      CHECK(shadows_[i].bf, "gemm: out of memory for a bf16 shadow of %lld floats", (long long)n);
      shadow_fill(&shadows_[i]);
      return;
    }
  CHECK(0, "gemm_shadow_add: more than %d shadows registered", MAX_SHADOWS);
}

void gemm_shadow_refresh(const float *base) {
  for (int i = 0; i < MAX_SHADOWS; i++)
    if (base && shadows_[i].base == base) shadow_fill(&shadows_[i]);
}

void gemm_shadow_remove(const float *base) {
  for (int i = 0; i < MAX_SHADOWS; i++)
    if (base && shadows_[i].base == base) {
      free(shadows_[i].bf);
      memset(&shadows_[i], 0, sizeof shadows_[i]);
    }
}

/* The stored block of an operand: rows x cols with leading dimension ld. In bf16, fill `out`
 * (compact, ld = cols) with its rounded values, as fp32 (emul) or bf16; from the shadow when
 * the operand is a registered weight. DEBUG=1 builds check that a shadow is not stale. */
static void round_block(const float *x, int rows, int cols, int ld, void *out, int as_bf16) {
  shadow *s = shadow_of(x);
  const uint16_t *sx = s ? s->bf + (x - s->base) : NULL;
  for (int i = 0; i < rows; i++) {
    const float *xr = x + (int64_t)i * ld;
    if (as_bf16) {
      uint16_t *o = (uint16_t *)out + (int64_t)i * cols;
      if (sx)
        memcpy(o, sx + (int64_t)i * ld, (size_t)cols * sizeof *o);
      else
        for (int j = 0; j < cols; j++)
          o[j] = f32_to_bf16(xr[j]);
    } else {
      float *o = (float *)out + (int64_t)i * cols;
      if (sx)
        for (int j = 0; j < cols; j++)
          o[j] = bf16_to_f32(sx[(int64_t)i * ld + j]);
      else
        for (int j = 0; j < cols; j++)
          o[j] = bf16_to_f32(f32_to_bf16(xr[j]));
    }
#ifdef MPIFORMER_DEBUG
    if (sx)
      for (int j = 0; j < cols; j++)
        CHECK(sx[(int64_t)i * ld + j] == f32_to_bf16(xr[j]),
              "gemm: the bf16 shadow is stale (a weight changed without gemm_shadow_refresh)");
#endif
  }
}

/* ---- oneDNN ---------------------------------------------------------------------------- */

#ifdef MPIFORMER_ONEDNN
#define DNNL_OK(call)                                                                              \
  do {                                                                                             \
    dnnl_status_t st_ = (call);                                                                    \
    CHECK(st_ == dnnl_success, "oneDNN: %s failed (status %d)", #call, (int)st_);                  \
  } while (0)

typedef struct prim_key {
  char ta, tb;
  int bf16;
  int m, n, k, lda, ldb, ldc;
  float alpha, beta;
} prim_key;
typedef struct prim {
  prim_key key;
  int used;
  dnnl_primitive_t p;
  dnnl_memory_t a, b, c;
} prim;
enum { CACHE_SLOTS = 1024, CACHE_MAX = 768 };
static prim cache_[CACHE_SLOTS];
static int cache_n_;
static dnnl_engine_t dnnl_eng_;
static dnnl_stream_t dnnl_stream_;
static int bf16_native_ = -1; /* -1: not probed yet */

static void dnnl_start(void) {
  if (dnnl_eng_) return;
  DNNL_OK(dnnl_engine_create(&dnnl_eng_, dnnl_cpu, 0));
  DNNL_OK(dnnl_stream_create(&dnnl_stream_, dnnl_eng_, dnnl_stream_default_flags));
}

static void cache_clear(void) {
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (cache_[i].used) {
      dnnl_primitive_destroy(cache_[i].p);
      dnnl_memory_destroy(cache_[i].a);
      dnnl_memory_destroy(cache_[i].b);
      dnnl_memory_destroy(cache_[i].c);
    }
  memset(cache_, 0, sizeof cache_);
  cache_n_ = 0;
}

static uint64_t key_hash(const prim_key *k) {
  const unsigned char *p = (const unsigned char *)k;
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < sizeof *k; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* The memory descriptor of a stored operand seen as its op: op 'N' rows x cols row-major
 * with ld; 'T' the transpose, by strides. */
static void op_desc(dnnl_memory_desc_t *md, char t, int r, int c, int ld, dnnl_data_type_t dt) {
  dnnl_dims_t dims = {r, c};
  dnnl_dims_t strides = {t == 'N' ? ld : 1, t == 'N' ? 1 : ld};
  DNNL_OK(dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides));
}

/* Create the primitive of key k; returns C_ERR (nothing created) when oneDNN has none. */
static int prim_create(const prim_key *k, prim *out) {
  dnnl_data_type_t dt = k->bf16 ? dnnl_bf16 : dnnl_f32;
  dnnl_memory_desc_t a, b, c;
  op_desc(&a, k->ta, k->m, k->k, k->lda, dt);
  op_desc(&b, k->tb, k->k, k->n, k->ldb, dt);
  op_desc(&c, 'N', k->m, k->n, k->ldc, dnnl_f32);
  dnnl_matmul_desc_t md;
  DNNL_OK(dnnl_matmul_desc_init(&md, &a, &b, NULL, &c));
  dnnl_primitive_attr_t attr;
  DNNL_OK(dnnl_primitive_attr_create(&attr));
  if (k->alpha != 1.0f) DNNL_OK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &k->alpha));
  dnnl_post_ops_t po = NULL;
  if (k->beta != 0.0f) {
    DNNL_OK(dnnl_post_ops_create(&po));
    DNNL_OK(dnnl_post_ops_append_sum(po, k->beta));
    DNNL_OK(dnnl_primitive_attr_set_post_ops(attr, po));
  }
  dnnl_primitive_desc_t pd;
  dnnl_status_t st = dnnl_primitive_desc_create(&pd, &md, attr, dnnl_eng_, NULL);
  dnnl_primitive_attr_destroy(attr);
  if (po) dnnl_post_ops_destroy(po);
  if (st != dnnl_success) return C_ERR;
  out->key = *k;
  DNNL_OK(dnnl_primitive_create(&out->p, pd));
  DNNL_OK(dnnl_primitive_desc_destroy(pd));
  DNNL_OK(dnnl_memory_create(&out->a, &a, dnnl_eng_, DNNL_MEMORY_NONE));
  DNNL_OK(dnnl_memory_create(&out->b, &b, dnnl_eng_, DNNL_MEMORY_NONE));
  DNNL_OK(dnnl_memory_create(&out->c, &c, dnnl_eng_, DNNL_MEMORY_NONE));
  out->used = 1;
  return C_OK;
}

static prim *prim_get(const prim_key *k) {
  if (cache_n_ >= CACHE_MAX) cache_clear(); /* many shapes: start again rather than probe long */
  uint64_t h = key_hash(k);
  for (int probe = 0;; probe++) {
    prim *e = &cache_[(h + (uint64_t)probe) % CACHE_SLOTS];
    if (e->used && !memcmp(&e->key, k, sizeof *k)) return e;
    if (!e->used) {
      CHECK(prim_create(k, e) == C_OK,
            "oneDNN has no matmul for %c%c m=%d n=%d k=%d (%s): gemm=openblas avoids oneDNN", k->ta,
            k->tb, k->m, k->n, k->k, k->bf16 ? "bf16" : "f32");
      cache_n_++;
      return e;
    }
  }
}

static void onednn_gemm(const prim_key *k, const void *a, const void *b, float *c) {
  prim *e = prim_get(k);
  DNNL_OK(dnnl_memory_set_data_handle(e->a, (void *)a));
  DNNL_OK(dnnl_memory_set_data_handle(e->b, (void *)b));
  DNNL_OK(dnnl_memory_set_data_handle(e->c, c));
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->a}, {DNNL_ARG_WEIGHTS, e->b}, {DNNL_ARG_DST, e->c}};
  DNNL_OK(dnnl_primitive_execute(e->p, dnnl_stream_, 3, args));
  DNNL_OK(dnnl_stream_wait(dnnl_stream_));
}

/* Can this CPU's oneDNN make a bf16 x bf16 -> f32 matmul? (AVX-512 CPUs: yes; 2.6.3 has no
 * bf16 matmul for AVX2.) */
static int probe_bf16(void) {
  dnnl_start();
  prim_key k = {'N', 'N', 1, 16, 16, 16, 16, 16, 16, 1.0f, 0.0f};
  prim p;
  memset(&p, 0, sizeof p);
  if (prim_create(&k, &p) != C_OK) return 0;
  dnnl_primitive_destroy(p.p);
  dnnl_memory_destroy(p.a);
  dnnl_memory_destroy(p.b);
  dnnl_memory_destroy(p.c);
  return 1;
}

static const char *isa_name(dnnl_cpu_isa_t isa) {
  switch ((int)isa) {
  case dnnl_cpu_isa_sse41:
    return "sse41";
  case dnnl_cpu_isa_avx:
    return "avx";
  case dnnl_cpu_isa_avx2:
    return "avx2";
  case dnnl_cpu_isa_avx2_vnni:
    return "avx2_vnni";
  case dnnl_cpu_isa_avx512_mic:
    return "avx512_mic";
  case dnnl_cpu_isa_avx512_mic_4ops:
    return "avx512_mic_4ops";
  case dnnl_cpu_isa_avx512_core:
    return "avx512_core";
  case dnnl_cpu_isa_avx512_core_vnni:
    return "avx512_core_vnni";
  case dnnl_cpu_isa_avx512_core_bf16:
    return "avx512_core_bf16";
  case dnnl_cpu_isa_avx512_core_amx:
    return "avx512_core_amx";
  default:
    return "other";
  }
}

const char *gemm_onednn_isa(void) {
  return isa_name(dnnl_get_effective_cpu_isa());
}

int gemm_bf16_native(void) {
  if (bf16_native_ < 0) bf16_native_ = probe_bf16();
  return bf16_native_;
}

/* bf16 kernels that are not emulated: avx512_core_bf16 or AMX. */
static int bf16_fast(void) {
  int isa = (int)dnnl_get_effective_cpu_isa();
  return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
}
#else
const char *gemm_onednn_isa(void) {
  return "none";
}
int gemm_bf16_native(void) {
  return 0;
}
#endif

/* ---- set-up and the product ------------------------------------------------------------ */

int gemm_setup(const char *engine, const char *precision, int threads, char *err, size_t err_len) {
  int prec = !strcmp(precision, "fp32") ? GEMM_FP32 : !strcmp(precision, "bf16") ? GEMM_BF16 : -1;
  if (prec < 0) {
    snprintf(err, err_len, "precision=%s: expected fp32 or bf16", precision);
    return C_ERR;
  }
  int eng;
  if (!strcmp(engine, "openblas")) {
    eng = GEMM_OPENBLAS;
  } else if (!strcmp(engine, "onednn") || !strcmp(engine, "auto")) {
#ifdef MPIFORMER_ONEDNN
    eng = GEMM_ONEDNN;
    if (!strcmp(engine, "auto")) {
      int isa = (int)dnnl_get_effective_cpu_isa();
      eng = (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core ? GEMM_ONEDNN
                                                                         : GEMM_OPENBLAS;
    }
#else
    if (!strcmp(engine, "onednn")) {
      snprintf(err, err_len,
               "gemm=onednn: this build has no oneDNN (install libdnnl-dev, "
               "make clean all), or use gemm=openblas");
      return C_ERR;
    }
    eng = GEMM_OPENBLAS;
#endif
  } else {
    snprintf(err, err_len, "gemm=%s: expected auto, openblas or onednn", engine);
    return C_ERR;
  }
  engine_ = eng, precision_ = prec, threads_ = threads > 0 ? threads : 1;
#ifdef MPIFORMER_ONEDNN
  cache_clear();
  if (eng == GEMM_ONEDNN || prec == GEMM_BF16) {
    omp_set_num_threads(threads_);
    dnnl_start();
  }
#endif
  return C_OK;
}

int gemm_engine(void) {
  return engine_;
}
int gemm_precision(void) {
  return precision_;
}

void gemm_describe(char *line, size_t cap, char *warning, size_t warning_cap) {
  char eng[160];
#ifdef MPIFORMER_ONEDNN
  const dnnl_version_t *v = dnnl_version();
  if (engine_ == GEMM_ONEDNN)
    snprintf(eng, sizeof eng, "oneDNN %d.%d.%d matmul (ISA %s, %d thread%s)", v->major, v->minor,
             v->patch, gemm_onednn_isa(), threads_, threads_ == 1 ? "" : "s");
  else
    snprintf(eng, sizeof eng, "OpenBLAS cblas_sgemm (oneDNN %d.%d.%d linked, ISA %s)", v->major,
             v->minor, v->patch, gemm_onednn_isa());
#else
  snprintf(eng, sizeof eng, "OpenBLAS cblas_sgemm (no oneDNN in this build)");
#endif
  warning[0] = 0;
  if (precision_ == GEMM_FP32) {
    snprintf(line, cap, "matmuls: %s, fp32", eng);
    return;
  }
  int native = engine_ == GEMM_ONEDNN && gemm_bf16_native();
  snprintf(line, cap, "matmuls: %s, bf16 operands (%s), fp32 accumulation and output", eng,
           native ? "oneDNN bf16 matmul" : "rounded to bf16, multiplied in fp32");
#ifdef MPIFORMER_ONEDNN
  int cpu_bf16 = bf16_fast(), fast = native && cpu_bf16;
#else
  int cpu_bf16 = 0, fast = 0;
#endif
  if (!fast && cpu_bf16)
    snprintf(warning, warning_cap,
             "warning: precision=bf16 with gemm=openblas is emulated and no faster than fp32: "
             "gemm=onednn (or auto) uses this CPU's bf16 instructions (oneDNN ISA %s)",
             gemm_onednn_isa());
  else if (!fast)
    snprintf(warning, warning_cap,
             "warning: precision=bf16 on a CPU without bf16 instructions (oneDNN ISA %s): bf16 "
             "is emulated and no faster than fp32 (slower by the rounding)",
             gemm_onednn_isa());
}

void gemm_sgemm(char trans_a, char trans_b, int m, int n, int k, float alpha, const float *a,
                int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  if (m <= 0 || n <= 0 || k <= 0) { /* nothing to multiply: cblas's semantics (C = beta C) */
    cblas_sgemm(CblasRowMajor, trans_a == 'N' ? CblasNoTrans : CblasTrans,
                trans_b == 'N' ? CblasNoTrans : CblasTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                ldc);
    return;
  }
  int ra = trans_a == 'N' ? m : k, ca = trans_a == 'N' ? k : m; /* stored shapes */
  int rb = trans_b == 'N' ? k : n, cb = trans_b == 'N' ? n : k;
  int bf16_dnnl = 0;
  if (precision_ == GEMM_BF16) {
#ifdef MPIFORMER_ONEDNN
    bf16_dnnl = engine_ == GEMM_ONEDNN && gemm_bf16_native();
#endif
    size_t es = bf16_dnnl ? sizeof(uint16_t) : sizeof(float);
    void *ra_buf = scratch_get(&scr_a_, (size_t)ra * ca * es);
    void *rb_buf = scratch_get(&scr_b_, (size_t)rb * cb * es);
    round_block(a, ra, ca, lda, ra_buf, bf16_dnnl);
    round_block(b, rb, cb, ldb, rb_buf, bf16_dnnl);
    a = ra_buf, lda = ca, b = rb_buf, ldb = cb;
  }
#ifdef MPIFORMER_ONEDNN
  if (engine_ == GEMM_ONEDNN) {
    prim_key key;
    memset(&key, 0, sizeof key); /* the hash and memcmp read the padding */
    key.ta = trans_a, key.tb = trans_b, key.bf16 = bf16_dnnl;
    key.m = m, key.n = n, key.k = k, key.lda = lda, key.ldb = ldb, key.ldc = ldc;
    key.alpha = alpha, key.beta = beta;
    onednn_gemm(&key, a, b, c);
    return;
  }
#endif
  cblas_sgemm(CblasRowMajor, trans_a == 'N' ? CblasNoTrans : CblasTrans,
              trans_b == 'N' ? CblasNoTrans : CblasTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
              ldc);
}
