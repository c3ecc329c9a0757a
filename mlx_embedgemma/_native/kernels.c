/* mlx-embedgemma's CPU kernels: matmul straight from MLX's affine-quantized layout, attention with
 * EmbeddingGemma's masks, and the gated GELU. Loaded with ctypes (mlx_embedgemma/native.py); no
 * Python API, no dependency beyond libc and pthreads.
 *
 * Why they exist: MLX's CPU backend has no fast quantized matmul and, on x86, runs transcendental and
 * attention code in scalar loops; the stock Linux wheel also links the reference BLAS. The benchmark
 * records in benchmarks/results/ show what each of these costs and buys.
 *
 * One source, several instruction sets: kernels_impl.h is included once per target (AVX-512, AVX2+FMA,
 * SSE2 on x86-64; NEON on arm64; plain C elsewhere), and the best one the CPU supports is chosen at
 * run time. Work is split over a small pool of threads that survives fork() (pthread_atfork).
 */

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SPIN_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define SPIN_PAUSE() __asm__ __volatile__("yield")
#else
#define SPIN_PAUSE() ((void)0)
#endif

#define EG_ABI_VERSION 3

enum { W_AFFINE = 0, W_F32 = 1, W_BF16 = 2 };

struct weights {
    int kind;
    const void *data; /* packed codes (uint32 words), or float32 / bfloat16 values, N x K */
    const uint16_t *scales, *biases; /* float16, N x K / group (affine only) */
    int64_t K;
    int group, bits;
};

static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            int e = -1;
            uint32_t m = mant;
            do {
                e++;
                m <<= 1;
            } while (!(m & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((m & 0x3FF) << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ------------------------------------------------------------------ one copy of the kernels per ISA */

#if defined(__x86_64__)
#if defined(__clang__)
#define TARGET_PUSH(t) _Pragma("clang attribute push (__attribute__((target(\"" t "\"))), apply_to = function)")
#define TARGET_POP _Pragma("clang attribute pop")
#else
#define PRAGMA_(x) _Pragma(#x)
#define TARGET_PUSH(t) _Pragma("GCC push_options") PRAGMA_(GCC target(t))
#define TARGET_POP _Pragma("GCC pop_options")
#endif

TARGET_PUSH("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#define ISA avx512
#define VL 16
#define BCAST(p) _mm512_set1_ps(*(p))
#include "kernels_impl.h"
#undef BCAST
#undef ISA
#undef VL
TARGET_POP

TARGET_PUSH("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx2,fma")
#define ISA avx512vnni
#define VL 16
#define BCAST(p) _mm512_set1_ps(*(p))
#define INT8_DOTS 1
#include "kernels_impl.h"
#undef INT8_DOTS
#undef BCAST
#undef ISA
#undef VL
TARGET_POP

TARGET_PUSH("avx2,fma")
#define ISA avx2
#define VL 8
#define BCAST(p) _mm256_set1_ps(*(p))
#include "kernels_impl.h"
#undef BCAST
#undef ISA
#undef VL
TARGET_POP
#endif

#if defined(__aarch64__)
#include <arm_neon.h>
#define ISA neon
#define VL 4
#define BCAST(p) vld1q_dup_f32(p)
#include "kernels_impl.h"
#undef BCAST
#undef ISA
#undef VL
#endif

#define ISA generic
#define VL 4
#if defined(__x86_64__)
#define BCAST(p) _mm_set1_ps(*(p)) /* SSE2: part of x86-64 */
#endif
#include "kernels_impl.h"
#undef BCAST
#undef ISA
#undef VL

struct isa {
    const char *name;
    void (*matmul_dots)(const struct weights *, const float *, int64_t, int64_t, int64_t, int64_t, float *, int64_t, float *);
    void (*matmul_outer)(const struct weights *, const float *, int64_t, int64_t, int64_t, int64_t, float *, int64_t, float *,
                         int);
    size_t (*outer_scratch)(int64_t, int64_t);
    int (*outer_rows)(void);
    void (*gelu_mul)(const float *, const float *, float *, int64_t);
    void (*attend_block)(const float *, int64_t, const float *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                         float, int64_t, float *, int64_t, float *);
    void (*rms_norm)(const float *, const float *, float *, int64_t, int64_t, float);
    void (*rope)(float *, const float *, const float *, int64_t, int64_t);
    /* int8 activations (NULL where the instruction set has no integer dot products) */
    void (*quantize_tokens)(const float *, int64_t, int64_t, int64_t, int, int, int8_t *, int8_t *, float *, float *);
    void (*matmul_int8)(const struct weights *, const int8_t *, const int8_t *, const float *, const float *, int64_t, int64_t, int64_t,
                        int64_t, float *, int64_t, float *);
    size_t (*int8_scratch)(int64_t, int);
};

#define ISA_ENTRY(s) {#s, matmul_dots_##s, matmul_outer_##s, outer_scratch_##s, outer_rows_##s, gelu_mul_##s, attend_block_##s, rms_norm_##s, rope_##s, NULL, NULL, NULL}
#define ISA_ENTRY_INT8(s) {#s, matmul_dots_##s, matmul_outer_##s, outer_scratch_##s, outer_rows_##s, gelu_mul_##s, attend_block_##s, rms_norm_##s, rope_##s, quantize_tokens_##s, matmul_int8_##s, int8_scratch_##s}
static const struct isa ISAS[] = {
#if defined(__x86_64__)
    ISA_ENTRY_INT8(avx512vnni),
    ISA_ENTRY(avx512),
    ISA_ENTRY(avx2),
#endif
#if defined(__aarch64__)
    ISA_ENTRY(neon),
#endif
    ISA_ENTRY(generic),
};
#define N_ISAS ((int)(sizeof ISAS / sizeof ISAS[0]))

static int isa_supported(const struct isa *isa) {
#if defined(__x86_64__)
    if (!strcmp(isa->name, "avx512vnni"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
    if (!strcmp(isa->name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
    if (!strcmp(isa->name, "avx2")) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    (void)isa;
    return 1; /* neon is part of arm64; generic runs anywhere */
}

static const struct isa *current;

static const struct isa *isa_now(void) {
    if (!current)
        for (int i = 0; i < N_ISAS && !current; i++)
            if (isa_supported(&ISAS[i])) current = &ISAS[i];
    return current;
}

/* ------------------------------------------------------------------------------------- thread pool */

typedef void (*task_fn)(void *ctx, int64_t task, float **scratch, size_t *capacity);

static struct {
    pthread_mutex_t run; /* one job at a time, whoever calls */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    int threads;   /* wanted, the calling thread included */
    int started;   /* workers running */
    pthread_t *workers;
    int stop;
    /* the current job */
    task_fn fn;
    void *ctx;
    int64_t tasks;
    atomic_llong next;
    atomic_int busy;
    atomic_ulong generation;
    unsigned long born; /* the generation new workers start from: the next job is theirs */
} pool = {.run = PTHREAD_MUTEX_INITIALIZER, .mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .threads = 1};

/* Spin briefly for the next job before sleeping: a forward pass issues ~200 calls in a row, but a longer
 * spin steals the core from whatever runs between them (BLAS threads of numpy or torch, MLX). */
#define SPIN_ROUNDS 2000

static void take_tasks(float **scratch, size_t *capacity) {
    for (;;) {
        const int64_t t = atomic_fetch_add(&pool.next, 1);
        if (t >= pool.tasks) break;
        pool.fn(pool.ctx, t, scratch, capacity);
    }
}

static void *worker(void *arg) {
    (void)arg;
    float *scratch = NULL;
    size_t capacity = 0;
    unsigned long seen = pool.born;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen) {
            if (++spins < SPIN_ROUNDS) {
                SPIN_PAUSE();
                continue;
            }
            pthread_mutex_lock(&pool.mu);
            while (atomic_load(&pool.generation) == seen && !pool.stop) pthread_cond_wait(&pool.wake, &pool.mu);
            pthread_mutex_unlock(&pool.mu);
            break;
        }
        if (pool.stop) break;
        seen = atomic_load(&pool.generation);
        take_tasks(&scratch, &capacity);
        atomic_fetch_sub_explicit(&pool.busy, 1, memory_order_release);
    }
    free(scratch);
    return NULL;
}

static void stop_workers(void) {
    if (!pool.started) return;
    pthread_mutex_lock(&pool.mu);
    pool.stop = 1;
    atomic_fetch_add(&pool.generation, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.started; i++) pthread_join(pool.workers[i], NULL);
    free(pool.workers);
    pool.workers = NULL;
    pool.started = 0;
    pool.stop = 0;
}

static void start_workers(void) {
    const int n = pool.threads - 1;
    if (pool.started || n <= 0) return;
    pool.workers = calloc((size_t)n, sizeof(pthread_t));
    if (!pool.workers) return;
    pool.born = atomic_load(&pool.generation);
    for (int i = 0; i < n; i++) {
        if (pthread_create(&pool.workers[i], NULL, worker, NULL)) break;
        pool.started++;
    }
}

/* After fork() only the forking thread exists: forget the workers, start new ones on the next call. */
static void atfork_prepare(void) { pthread_mutex_lock(&pool.run); }
static void atfork_parent(void) { pthread_mutex_unlock(&pool.run); }
static void atfork_child(void) {
    pthread_mutex_init(&pool.run, NULL);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
    free(pool.workers);
    pool.workers = NULL;
    pool.started = 0;
    pool.stop = 0;
    atomic_store(&pool.busy, 0);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

static __thread float *caller_scratch;
static __thread size_t caller_capacity;

static void run(task_fn fn, void *ctx, int64_t tasks) {
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&pool.run);
    if (tasks <= 1 || pool.threads <= 1) {
        for (int64_t t = 0; t < tasks; t++) fn(ctx, t, &caller_scratch, &caller_capacity);
        pthread_mutex_unlock(&pool.run);
        return;
    }
    start_workers();
    pool.fn = fn;
    pool.ctx = ctx;
    pool.tasks = tasks;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.busy, pool.started);
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    take_tasks(&caller_scratch, &caller_capacity);
    while (atomic_load_explicit(&pool.busy, memory_order_acquire) > 0) SPIN_PAUSE();
    pthread_mutex_unlock(&pool.run);
}

static float *scratch_of(float **scratch, size_t *capacity, size_t floats) {
    if (*capacity < floats) {
        free(*scratch);
        *scratch = malloc(floats * sizeof(float));
        *capacity = *scratch ? floats : 0;
    }
    return *scratch;
}

/* -------------------------------------------------------------------------------------- public API */

#ifdef _WIN32
/* Built as a Python extension by setuptools, which exports this name on Windows; never called. */
__declspec(dllexport) void *PyInit_eg_kernels(void) { return NULL; }
#endif

int eg_abi_version(void) { return EG_ABI_VERSION; }

const char *eg_isa(void) { return isa_now()->name; }

/* Names of the kernels this build has, comma-separated, best first (whether this CPU runs them or not). */
const char *eg_isas(void) {
    static char names[128];
    if (!names[0])
        for (int i = 0; i < N_ISAS; i++) {
            if (i) strcat(names, ",");
            strcat(names, ISAS[i].name);
        }
    return names;
}

/* 1 if this build has the named kernel and this CPU runs it. */
int eg_isa_runs(const char *name) {
    for (int i = 0; i < N_ISAS; i++)
        if (!strcmp(ISAS[i].name, name)) return isa_supported(&ISAS[i]);
    return 0;
}

/* Use the named kernel; 0 if this build lacks it or this CPU cannot run it. */
int eg_select_isa(const char *name) {
    for (int i = 0; i < N_ISAS; i++)
        if (!strcmp(ISAS[i].name, name)) {
            if (!isa_supported(&ISAS[i])) return 0;
            current = &ISAS[i];
            return 1;
        }
    return 0;
}

/* 1 if the kernel in use has integer dot products (activations 8 and 16 of eg_matmul / struct block). */
int eg_has_int8(void) { return isa_now()->matmul_int8 != NULL; }

int eg_threads(void) { return pool.threads; }

void eg_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    pthread_mutex_lock(&pool.run);
    if (n != pool.threads) {
        stop_workers();
        pool.threads = n;
    }
    pthread_mutex_unlock(&pool.run);
}


struct matmul_job {
    struct weights w;
    const float *x;
    float *y;
    int64_t M, N, m_block, n_block, n_tiles;
    unsigned long id; /* tells a thread's packed tokens from a previous job's */
};

static atomic_ulong matmul_jobs;
/* The job and token tile whose packed tokens this thread's scratch holds: the tasks of one tile (one per
 * slice of N) are taken in a row, and repacking the tokens for each cost a fifth of a query's matmul time. */
static __thread unsigned long packed_job;
static __thread int64_t packed_m0 = -1;

/* Fewer tokens than this take the dot-product path: an outer-product block would be mostly padding. */
#define OUTER_MIN_TOKENS 4

static void matmul_task(void *p, int64_t t, float **scratch, size_t *capacity) {
    const struct matmul_job *j = p;
    const int64_t m0 = (t / j->n_tiles) * j->m_block, n0 = (t % j->n_tiles) * j->n_block;
    const int64_t m1 = m0 + j->m_block < j->M ? m0 + j->m_block : j->M, n1 = n0 + j->n_block < j->N ? n0 + j->n_block : j->N;
    const struct isa *isa = isa_now();
    if (j->M >= OUTER_MIN_TOKENS) {
        float *const before = *scratch;
        float *buf = scratch_of(scratch, capacity, isa->outer_scratch(m1 - m0, j->w.K));
        if (!buf) return;
        const int packed = buf == before && packed_job == j->id && packed_m0 == m0;
        isa->matmul_outer(&j->w, j->x, m0, m1, n0, n1, j->y, j->N, buf, packed);
        packed_job = j->id;
        packed_m0 = m0;
        return;
    }
    float *buf = j->w.kind == W_F32 ? NULL : scratch_of(scratch, capacity, (size_t)(8 * j->w.K)); /* ROWS <= 8 */
    if (j->w.kind != W_F32 && !buf) return;
    isa->matmul_dots(&j->w, j->x, m0, m1, n0, n1, j->y, j->N, buf);
}

/* Tokens per tile: each dequantized panel serves all of them, and they stay in L2 (96 x 1,152 floats). */
#define M_BLOCK 96

static int weights_ok(const struct weights *w) {
    if (w->K <= 0 || (w->kind != W_AFFINE && w->kind != W_F32 && w->kind != W_BF16) || !w->data) return 0;
    if (w->kind == W_AFFINE && ((w->bits != 4 && w->bits != 8) || w->group < 8 || w->group % 8 || w->K % w->group ||
                                !w->scales || !w->biases))
        return 0;
    return 1;
}

/* ---- int8 activations: each token's values rounded once per matmul, then shared by every task */

struct quantize_job {
    const float *x;
    int64_t M, K, per_task;
    int group, bits;
    int8_t *q, *q2;
    float *dx, *sum;
};

static void quantize_task(void *p, int64_t t, float **scratch, size_t *capacity) {
    (void)scratch, (void)capacity;
    const struct quantize_job *j = p;
    const int64_t m0 = t * j->per_task, m1 = m0 + j->per_task < j->M ? m0 + j->per_task : j->M;
    isa_now()->quantize_tokens(j->x, m0, m1, j->K, j->group, j->bits, j->q, j->q2, j->dx, j->sum);
}

struct int8_job {
    struct weights w;
    const int8_t *q, *q2;
    const float *dx, *sum;
    float *y;
    int64_t M, N, m_block, n_block, n_tiles;
};

static void int8_task(void *p, int64_t t, float **scratch, size_t *capacity) {
    const struct int8_job *j = p;
    const int64_t m0 = (t / j->n_tiles) * j->m_block, n0 = (t % j->n_tiles) * j->n_block;
    const int64_t m1 = m0 + j->m_block < j->M ? m0 + j->m_block : j->M, n1 = n0 + j->n_block < j->N ? n0 + j->n_block : j->N;
    const struct isa *isa = isa_now();
    float *buf = scratch_of(scratch, capacity, isa->int8_scratch(j->w.K, j->w.group));
    if (buf) isa->matmul_int8(&j->w, j->q, j->q2, j->dx, j->sum, m0, m1, n0, n1, j->y, j->N, buf);
}

/* The calling thread's rounded activations, kept for the next call (a pass makes ~170 of them). */
static __thread void *int8_buf;
static __thread size_t int8_capacity;

/* 1 if the integer path served the call; 0 if this CPU or these weights need the float path.
 * activations 8: int8 per group; 16: int8 plus a second int8 for its rounding error (16 bits, twice the dot
 * products). */
static int matmul_int8(const struct weights *w, const float *x, int64_t M, int64_t N, float *y, int64_t n_block,
                       int64_t n_tiles, int64_t m_tiles, int activations) {
    const struct isa *isa = isa_now();
    if (!isa->matmul_int8 || w->kind != W_AFFINE || w->group % 16 || (activations != 8 && activations != 16)) return 0;
    const int64_t G = w->K / w->group;
    const int residual = activations == 16;
    const size_t bytes = 2 * (size_t)M * (size_t)w->K + 2 * (size_t)M * (size_t)G * sizeof(float);
    if (int8_capacity < bytes) {
        free(int8_buf);
        int8_buf = malloc(bytes);
        int8_capacity = int8_buf ? bytes : 0;
        if (!int8_buf) return 0;
    }
    float *dx = int8_buf, *sum = dx + M * G;
    int8_t *q = (int8_t *)(sum + M * G), *q2 = residual ? q + M * w->K : NULL;
    const int64_t per_task = M < 16 ? M : (M + 4 * pool.threads - 1) / (4 * pool.threads);
    struct quantize_job qj = {x, M, w->K, per_task, w->group, w->bits, q, q2, dx, sum};
    run(quantize_task, &qj, (M + per_task - 1) / per_task);
    struct int8_job j = {*w, q, q2, dx, sum, y, M, N, M_BLOCK, n_block, n_tiles};
    run(int8_task, &j, m_tiles * n_tiles);
    return 1;
}

/* activations: 32 (float), or 8 / 16 for the integer path where the CPU has one (see matmul_int8). */
static void matmul(const struct weights *w, const float *x, int64_t M, int64_t N, float *y, int activations) {
    if (M <= 0) return;
    struct matmul_job j = {*w, x, y, M, N, M_BLOCK, 0, 0, atomic_fetch_add(&matmul_jobs, 1) + 1};
    const int64_t m_tiles = (M + M_BLOCK - 1) / M_BLOCK;
    /* about four tiles per thread for balance, in whole panels */
    const int64_t unit = isa_now()->outer_rows();
    int64_t want = (int64_t)pool.threads * 4 / m_tiles;
    if (want < 1) want = 1;
    int64_t n_block = (N + want - 1) / want;
    n_block = (n_block + unit - 1) / unit * unit;
    j.n_block = n_block;
    j.n_tiles = (N + n_block - 1) / n_block;
    if (matmul_int8(w, x, M, N, y, j.n_block, j.n_tiles, m_tiles, activations)) return;
    run(matmul_task, &j, m_tiles * j.n_tiles);
}

/* y (M x N) = x (M x K) @ W.T for W of `kind`: affine codes with float16 scales and biases (bits 4 or 8,
 * group 32/64/128), float32, or bfloat16. activations: 32, 16 or 8 (see matmul). Returns 0, or -1 for
 * arguments it cannot serve. */
int eg_matmul(const float *x, int64_t M, int64_t K, int kind, const void *w, const void *scales, const void *biases,
              int64_t N, int group, int bits, int activations, float *y) {
    const struct weights wt = {kind, w, scales, biases, K, group, bits};
    if (M < 0 || N <= 0 || !weights_ok(&wt) || (activations != 8 && activations != 16 && activations != 32)) return -1;
    matmul(&wt, x, M, N, y, activations);
    return 0;
}

struct gelu_job {
    const float *gate, *up;
    float *out;
    int64_t n, chunk;
};

static void gelu_task(void *p, int64_t t, float **scratch, size_t *capacity) {
    (void)scratch, (void)capacity;
    const struct gelu_job *j = p;
    const int64_t i0 = t * j->chunk, i1 = i0 + j->chunk < j->n ? i0 + j->chunk : j->n;
    isa_now()->gelu_mul(j->gate + i0, j->up + i0, j->out + i0, i1 - i0);
}

/* out = gelu_tanh(gate) * up, elementwise over n floats (out may be up). */
void eg_gelu_mul(const float *gate, const float *up, float *out, int64_t n) {
    struct gelu_job j = {gate, up, out, n, 16384};
    run(gelu_task, &j, (n + j.chunk - 1) / j.chunk);
}

/* Sequences packed one after another, padding left out: sequence b holds tokens [start[b], start[b] + len[b]). */
struct packing {
    int64_t B;
    const int64_t *len;
    int64_t *start;
};

struct attention_job {
    const float *q, *k, *v;
    float *out;
    struct packing seqs;
    int64_t Hq, Hkv, D, radius, q_blocks;
    float scale;
};

/* Queries per task: their scores against up to 2,048 keys stay in L2. */
#define Q_BLOCK 32

static void attention_task(void *p, int64_t t, float **scratch, size_t *capacity) {
    const struct attention_job *j = p;
    const int64_t blk = t % j->q_blocks, h = (t / j->q_blocks) % j->Hq, b = t / (j->q_blocks * j->Hq);
    const int64_t L = j->seqs.len[b], i0 = blk * Q_BLOCK;
    if (i0 >= L) return;
    const int64_t i1 = i0 + Q_BLOCK < L ? i0 + Q_BLOCK : L;
    const int64_t kv = h / (j->Hq / j->Hkv), D = j->D, first = j->seqs.start[b];
    float *scores = scratch_of(scratch, capacity, (size_t)(Q_BLOCK * L));
    if (!scores) return;
    const int64_t ldq = j->Hq * D, ldk = j->Hkv * D;
    isa_now()->attend_block(j->q + (first + i0) * ldq + h * D, ldq, j->k + first * ldk + kv * D, j->v + first * ldk + kv * D,
                            ldk, i0, i1, L, D, j->scale, j->radius, j->out + (first + i0) * ldq + h * D, ldq, scores);
}

static void attention(const float *q, const float *k, const float *v, const struct packing *seqs, int64_t Hq,
                      int64_t Hkv, int64_t D, float scale, int64_t radius, float *out) {
    int64_t longest = 0;
    for (int64_t b = 0; b < seqs->B; b++) longest = seqs->len[b] > longest ? seqs->len[b] : longest;
    struct attention_job j = {q, k, v, out, *seqs, Hq, Hkv, D, radius, (longest + Q_BLOCK - 1) / Q_BLOCK, scale};
    run(attention_task, &j, seqs->B * Hq * j.q_blocks);
}

static int packing_of(struct packing *p, int64_t B, const int64_t *len) {
    p->B = B;
    p->len = len;
    p->start = malloc((size_t)(B > 0 ? B : 1) * sizeof(int64_t));
    if (!p->start) return 0;
    int64_t at = 0;
    for (int64_t b = 0; b < B; b++) {
        p->start[b] = at;
        at += len[b];
    }
    return 1;
}

static int64_t tokens_of(int64_t B, const int64_t *len) {
    int64_t T = 0;
    for (int64_t b = 0; b < B; b++) {
        if (len[b] < 0) return -1;
        T += len[b];
    }
    return T;
}

/* Bidirectional attention as EmbeddingGemma runs it, over packed sequences (no padding): q, out (T, Hq, D);
 * k, v (T, Hkv, D); sequence b is len[b] tokens long and they follow one another (T = sum of len). A query
 * sees the keys of its own sequence within `radius` positions (radius < 0: all of them). */
int eg_attention(const float *q, const float *k, const float *v, const int64_t *len, int64_t B, int64_t Hq, int64_t Hkv,
                 int64_t D, float scale, int64_t radius, float *out) {
    if (B <= 0 || Hq <= 0 || Hkv <= 0 || Hq % Hkv || D <= 0 || tokens_of(B, len) < 0) return -1;
    struct packing seqs;
    if (!packing_of(&seqs, B, len)) return -1;
    attention(q, k, v, &seqs, Hq, Hkv, D, scale, radius, out);
    free(seqs.start);
    return 0;
}

/* Gemma's RMSNorm over the last axis: out = x / sqrt(mean(x^2) + eps) * scale (scale = 1 + weight).
 * Memory-bound and short: runs on the calling thread. */
void eg_rms_norm(const float *x, const float *scale, float *out, int64_t rows, int64_t dim, float eps) {
    isa_now()->rms_norm(x, scale, out, rows, dim, eps);
}

static void rope(float *x, const struct packing *seqs, int64_t heads, int64_t D, const float *cos_, const float *sin_) {
    for (int64_t b = 0; b < seqs->B; b++)
        for (int64_t i = 0; i < seqs->len[b]; i++)
            isa_now()->rope(x + (seqs->start[b] + i) * heads * D, cos_ + i * (D / 2), sin_ + i * (D / 2), heads, D);
}

/* Rotary position embedding with rotated halves, in place, over packed sequences: x (T, heads, D); positions
 * restart at 0 with each sequence; cos, sin (at least the longest len, D / 2) hold each position's angles. */
int eg_rope(float *x, const int64_t *len, int64_t B, int64_t heads, int64_t D, const float *cos_, const float *sin_) {
    if (B <= 0 || heads <= 0 || D <= 0 || D % 2 || tokens_of(B, len) < 0) return -1;
    struct packing seqs;
    if (!packing_of(&seqs, B, len)) return -1;
    rope(x, &seqs, heads, D, cos_, sin_);
    free(seqs.start);
    return 0;
}

/* ----------------------------------------------------------------------- one Gemma 3 encoder block */

/* Everything one block of model.py's TransformerBlock reads, as ctypes fills it in (native.py). */
struct block {
    int64_t hidden, heads, kv_heads, head_dim, intermediate, radius, positions; /* positions: rows of cos/sin */
    float eps, scale;
    /* RMSNorm scales (1 + weight, float32): input, post-attention, pre-feedforward, post-feedforward
     * (hidden each), then q and k (head_dim each) */
    const float *norm[6];
    const float *cos_, *sin_;
    /* q, k, v, o, gate, up, down */
    struct weights proj[7];
    int activations[7]; /* of each projection's input: 32, 16 or 8 (see matmul) */
};

enum { Q, K, V, O, GATE, UP, DOWN };

static void add_normed(float *x, float *y, const float *scale, int64_t rows, int64_t dim, float eps) {
    isa_now()->rms_norm(y, scale, y, rows, dim, eps);
    for (int64_t i = 0; i < rows * dim; i++) x[i] += y[i];
}

/* Sequences of a padded batch (B, L, width), right-padded, moved to the front one after another, and back:
 * padding costs no work in the block. `in` may be `out`: each sequence moves towards the front when packed,
 * towards the back (last one first) when unpacked, so no source is overwritten before it is read. */
static void pack(const float *in, float *out, const struct packing *seqs, int64_t L, int64_t width) {
    for (int64_t b = 0; b < seqs->B; b++)
        memmove(out + seqs->start[b] * width, in + b * L * width, (size_t)(seqs->len[b] * width) * sizeof(float));
}

static void unpack(float *x, const struct packing *seqs, int64_t L, int64_t width) {
    for (int64_t b = seqs->B - 1; b >= 0; b--) {
        memmove(x + b * L * width, x + seqs->start[b] * width, (size_t)(seqs->len[b] * width) * sizeof(float));
        memset(x + (b * L + seqs->len[b]) * width, 0, (size_t)((L - seqs->len[b]) * width) * sizeof(float));
    }
}

/* One TransformerBlock of model.py on a right-padded batch: in, out (B, L, hidden), sequence b real for its
 * first len[b] tokens (the rest of out is zeroed; `in` may be `out`):
 *   h = x + norm(attention(norm(x)));  out = h + norm(mlp(norm(h)))
 * with everything in between (projections, q/k norms, RoPE, windowed attention, gated GELU) done here, on
 * the real tokens only, so a pass costs one call per layer instead of a round trip per operation.
 * Returns 0, -1 for arguments it cannot serve, -3 when out of memory. */
int eg_block(const struct block *a, const float *in, float *out, int64_t B, int64_t L, const int64_t *len) {
    const int64_t T = tokens_of(B, len), H = a->hidden, hd = a->head_dim, I = a->intermediate;
    const int64_t qw = a->heads * hd, kw = a->kv_heads * hd;
    if (T < 0 || B <= 0 || L <= 0 || L > a->positions || H <= 0 || hd <= 0 || hd % 2 || a->heads <= 0 ||
        a->kv_heads <= 0 || a->heads % a->kv_heads)
        return -1;
    for (int64_t b = 0; b < B; b++)
        if (len[b] > L) return -1;
    const int64_t in_of[7] = {H, H, H, qw, H, H, I};
    for (int i = 0; i < 7; i++)
        if (!weights_ok(&a->proj[i]) || a->proj[i].K != in_of[i] ||
            (a->activations[i] != 8 && a->activations[i] != 16 && a->activations[i] != 32))
            return -1;
    struct packing seqs;
    if (!packing_of(&seqs, B, len)) return -3;
    /* xn: the normed input of each half; then the work area, reused: q k v and attention's output, later
     * gate and up */
    const int64_t attn_floats = qw + 2 * kw + qw, mlp_floats = 2 * I;
    float *xn = malloc((size_t)((T ? T : 1) * (H + (attn_floats > mlp_floats ? attn_floats : mlp_floats))) * sizeof(float));
    if (!xn) {
        free(seqs.start);
        return -3;
    }
    float *x = out, *q = xn + T * H, *k = q + T * qw, *v = k + T * kw, *att = v + T * kw;
    float *gate = xn + T * H, *up = gate + T * I;
    pack(in, x, &seqs, L, H);

    isa_now()->rms_norm(x, a->norm[0], xn, T, H, a->eps);
    matmul(&a->proj[Q], xn, T, qw, q, a->activations[Q]);
    matmul(&a->proj[K], xn, T, kw, k, a->activations[K]);
    matmul(&a->proj[V], xn, T, kw, v, a->activations[V]);
    isa_now()->rms_norm(q, a->norm[4], q, T * a->heads, hd, a->eps);
    isa_now()->rms_norm(k, a->norm[5], k, T * a->kv_heads, hd, a->eps);
    rope(q, &seqs, a->heads, hd, a->cos_, a->sin_);
    rope(k, &seqs, a->kv_heads, hd, a->cos_, a->sin_);
    attention(q, k, v, &seqs, a->heads, a->kv_heads, hd, a->scale, a->radius, att);
    matmul(&a->proj[O], att, T, H, xn, a->activations[O]);
    add_normed(x, xn, a->norm[1], T, H, a->eps);

    isa_now()->rms_norm(x, a->norm[2], xn, T, H, a->eps);
    matmul(&a->proj[GATE], xn, T, I, gate, a->activations[GATE]);
    matmul(&a->proj[UP], xn, T, I, up, a->activations[UP]);
    eg_gelu_mul(gate, up, up, T * I);
    matmul(&a->proj[DOWN], up, T, H, xn, a->activations[DOWN]);
    add_normed(x, xn, a->norm[3], T, H, a->eps);

    unpack(x, &seqs, L, H);
    free(xn);
    free(seqs.start);
    return 0;
}
