/* The CPU kernels, written once and compiled once per instruction set (see kernels.c).
 *
 * Including file defines: ISA (suffix of every function name here) and VL (floats per vector), and may
 * define BCAST(p), the instruction set's broadcast of the float at p.
 * GCC/Clang vector extensions instead of intrinsics: the same source becomes AVX-512, AVX2+FMA,
 * NEON or SSE2 code, depending on the target the including file switched on around it.
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, ISA)

typedef float CAT(vf, ISA) __attribute__((vector_size(VL * 4)));
typedef uint32_t CAT(vu, ISA) __attribute__((vector_size(VL * 4)));
typedef int32_t CAT(vi, ISA) __attribute__((vector_size(VL * 4)));
typedef uint8_t CAT(vb, ISA) __attribute__((vector_size(VL)));
#define vf CAT(vf, ISA)
#define vu CAT(vu, ISA)
#define vi CAT(vi, ISA)
#define vb CAT(vb, ISA)

/* Output rows dequantized together, and tokens per register block: ROWS x TOKENS accumulators. Chosen
 * by measurement (benchmarks/results/kernel-*.jsonl): 4 x 3 fills AVX2's 16 registers; AVX-512 and NEON
 * have 32. EG_ROWS / EG_TOKENS override them for such measurements. */
#ifdef EG_ROWS
#define ROWS EG_ROWS
#else
#define ROWS 4
#endif
#ifdef EG_TOKENS
#define TOKENS EG_TOKENS
#elif VL >= 16 || defined(__aarch64__)
#define TOKENS 4
#else
#define TOKENS 3
#endif

static inline vf FN(load)(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v); /* unaligned: mapped safetensors data has no alignment */
    return v;
}

static inline void FN(store)(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* One float in every lane, read straight from memory: `(vf){0} + x` became an add and a register
 * broadcast, both competing with the FMAs for the same ports. */
static inline vf FN(bcast)(const float *p) {
#ifdef BCAST
    return (vf)BCAST(p); /* the ISA's broadcast-from-memory instruction, set by kernels.c */
#else
    vf v;
    for (int i = 0; i < VL; i++) v[i] = *p;
    return v;
#endif
}

/* Sum of the lanes by halving: independent adds, where a lane-by-lane loop is a chain of VL dependent
 * ones (that chain cost more than the dot product itself at K = 768). */
static inline float FN(hsum)(vf v) {
#if VL == 16
    typedef float h8 __attribute__((vector_size(32)));
    typedef float h4 __attribute__((vector_size(16)));
    const h8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const h4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
#elif VL == 8
    typedef float h4 __attribute__((vector_size(16)));
    const h4 b = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
#else
    float s[VL];
    memcpy(s, &v, sizeof s);
    for (int h = VL / 2; h >= 1; h /= 2)
        for (int i = 0; i < h; i++) s[i] += s[i + h];
    return s[0];
#endif
}

/* Interleaves of two vectors' lanes: lo = a0 b0 a1 b1 ... (first halves), hi = the second halves. */
#if VL == 16
#define ZIP_LO 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define ZIP_HI 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#elif VL == 8
#define ZIP_LO 0, 8, 1, 9, 2, 10, 3, 11
#define ZIP_HI 4, 12, 5, 13, 6, 14, 7, 15
#else
#define ZIP_LO 0, 4, 1, 5
#define ZIP_HI 2, 6, 3, 7
#endif

/* m[j][r] = old m[r][j]: VL x VL words transposed in registers. Each round sends row i and row i + VL/2 to
 * rows 2i and 2i + 1, interleaved; that rotates the bits of every lane's (row, column) address by one, so
 * log2(VL) rounds swap row and column. One two-source permute per row and round on AVX-512 (zip on NEON),
 * where gathering one word from each of VL rows cost more than all the arithmetic on it. */
static inline void FN(transpose)(vu m[VL]) {
    for (int round = 1; round < VL; round *= 2) {
        vu t[VL];
        for (int i = 0; i < VL / 2; i++) {
            t[2 * i] = __builtin_shufflevector(m[i], m[i + VL / 2], ZIP_LO);
            t[2 * i + 1] = __builtin_shufflevector(m[i], m[i + VL / 2], ZIP_HI);
        }
        memcpy(m, t, sizeof t);
    }
}
#undef ZIP_LO
#undef ZIP_HI

/* float16 bit patterns (one per lane) to floats, exactly: the magnitude bits moved to a float's place and
 * scaled by 2^112 (which also makes subnormals right); infinities and NaNs keep an all-ones exponent. */
static inline vf FN(halves)(vu h) {
    const vu mag = (h & 0x7FFF) << 13;
    vf f;
    memcpy(&f, &mag, sizeof f);
    f *= 0x1p112f;
    vu bits;
    memcpy(&bits, &f, sizeof bits);
    bits |= (vu)((h & 0x7C00) == 0x7C00) & 0x7F800000; /* exponent 31: Inf or NaN */
    bits |= (h & 0x8000) << 16;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Row n of an affine-quantized matrix as floats: w = scale * q + bias, group by group, as mx.dequantize. */
static void FN(dequant_row)(const struct weights *w, int64_t n, float *out) {
    const int64_t K = w->K, groups = K / w->group;
    const uint16_t *s = w->scales + n * groups, *b = w->biases + n * groups;
    if (w->bits == 4) {
        const uint8_t *row = (const uint8_t *)w->data + n * (K / 2);
        vu shifts, high = {0}; /* lane i takes nibble i % 8 of word i / 8 */
        for (int i = 0; i < VL; i++) shifts[i] = 4 * (i % 8), high[i] = i >= 8 ? ~0u : 0u;
        for (int64_t g = 0; g < groups; g++) {
            const float sc = half_to_float(s[g]), bi = half_to_float(b[g]);
            for (int64_t k = g * w->group; k < (g + 1) * w->group; k += VL) {
                /* element k sits in the low nibble of byte k / 2 (MLX packs little-endian) */
                uint32_t packed[2] = {0, 0};
                memcpy(packed, row + k / 2, VL / 2 < 8 ? VL / 2 : 8);
                const vu words = VL > 8 ? (((vu){0} + packed[0]) & ~high) | (((vu){0} + packed[1]) & high) : (vu){0} + packed[0];
                const vi q = (vi)((words >> shifts) & 0xF);
                FN(store)(out + k, __builtin_convertvector(q, vf) * sc + bi);
            }
        }
    } else { /* 8 bits */
        const uint8_t *row = (const uint8_t *)w->data + n * K;
        for (int64_t g = 0; g < groups; g++) {
            const float sc = half_to_float(s[g]), bi = half_to_float(b[g]);
            for (int64_t k = g * w->group; k < (g + 1) * w->group; k += VL) {
                vb q;
                memcpy(&q, row + k, sizeof q);
                FN(store)(out + k, __builtin_convertvector(__builtin_convertvector(q, vi), vf) * sc + bi);
            }
        }
    }
}

static void FN(bf16_row)(const uint16_t *src, int64_t K, float *out) {
    int64_t k = 0;
    for (; k + VL <= K; k += VL) {
        vu v;
        for (int i = 0; i < VL; i++) v[i] = (uint32_t)src[k + i] << 16;
        vf f;
        memcpy(&f, &v, sizeof f);
        FN(store)(out + k, f);
    }
    for (; k < K; k++) {
        uint32_t v = (uint32_t)src[k] << 16;
        memcpy(out + k, &v, 4);
    }
}

/* Dot products of `rows` weight rows (stride K) with `tokens` activation rows (stride ldx), K values each:
 * y[t * ldy + r] = sum_k x[t][k] * w[r][k]. The register block is ROWS x TOKENS accumulators. */
static void FN(dot_block)(const float *x, int64_t ldx, int tokens, const float *w, int64_t ldw, int rows, int64_t K,
                          float *y, int64_t ldy) {
    vf acc[TOKENS][ROWS];
    for (int t = 0; t < TOKENS; t++)
        for (int r = 0; r < ROWS; r++) acc[t][r] = (vf){0};
    int64_t k = 0;
    if (rows == ROWS && tokens == TOKENS) {
        for (; k + VL <= K; k += VL) {
            vf xv[TOKENS];
            for (int t = 0; t < TOKENS; t++) xv[t] = FN(load)(x + t * ldx + k);
            for (int r = 0; r < ROWS; r++) {
                const vf wv = FN(load)(w + r * ldw + k);
                for (int t = 0; t < TOKENS; t++) acc[t][r] += xv[t] * wv;
            }
        }
    } else {
        for (; k + VL <= K; k += VL)
            for (int r = 0; r < rows; r++) {
                const vf wv = FN(load)(w + r * ldw + k);
                for (int t = 0; t < tokens; t++) acc[t][r] += FN(load)(x + t * ldx + k) * wv;
            }
    }
    for (int t = 0; t < tokens; t++)
        for (int r = 0; r < rows; r++) {
            float s = FN(hsum)(acc[t][r]);
            for (int64_t j = k; j < K; j++) s += x[t * ldx + j] * w[r * ldw + j];
            y[t * ldy + r] = s;
        }
}

/* Few tokens (a query's pooled vector, a short pass): y[m, n0:n1] for m in [m0, m1) as dot products, rows of
 * W made float ROWS at a time (into `buf`, or read in place when the weights are float32) and multiplied with
 * every token while they sit in L1. */
static void FN(matmul_dots)(const struct weights *w, const float *x, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                            float *y, int64_t N, float *buf) {
    const int64_t K = w->K;
    for (int64_t n = n0; n < n1; n += ROWS) {
        const int rows = (int)(n1 - n < ROWS ? n1 - n : ROWS);
        const float *rowsp;
        if (w->kind == W_F32) {
            rowsp = (const float *)w->data + n * K;
        } else {
            for (int r = 0; r < rows; r++) {
                if (w->kind == W_BF16)
                    FN(bf16_row)((const uint16_t *)w->data + (n + r) * K, K, buf + r * K);
                else
                    FN(dequant_row)(w, n + r, buf + r * K);
            }
            rowsp = buf;
        }
        for (int64_t m = m0; m < m1; m += TOKENS) {
            const int tokens = (int)(m1 - m < TOKENS ? m1 - m : TOKENS);
            float out[TOKENS * ROWS];
            FN(dot_block)(x + m * K, K, tokens, rowsp, K, rows, K, out, ROWS);
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < rows; r++) y[(m + t) * N + n + r] = out[t * ROWS + r];
        }
    }
}

/* ---- Outer products: the path for MR tokens or more.
 * A panel of NR output rows is dequantized once, transposed (panel[k][NR]), and every block of MR tokens
 * runs through it: per k, NR / VL vector loads of the panel and MR broadcasts of x feed MR x NR / VL
 * independent FMAs, with no horizontal sums. Dot products (above) need two vector loads per FMA pair and
 * ran at a quarter of the FMA peak here, bound by reading the activations from L2. */
#ifdef EG_NV /* overrides, for measuring other shapes */
#define NV EG_NV
#define MR EG_MR
#elif VL >= 16 || defined(__aarch64__)
#define NV 2
#define MR 12 /* 24 accumulators + 3 of 32 registers */
#else
#define NV 2
#define MR 6 /* 12 accumulators + 3 of 16 */
#endif
#define NR (NV * VL) /* outputs per panel: NV vectors */

/* Columns of K per panel: a panel (KC x NR floats, 16 KB on AVX-512) stays in L1 while every block of
 * tokens runs through it. A multiple of every group size. */
#define KC 128

/* words[j] = code word c + j of rows 0 .. live - 1 (row r in lane r, rows `row_bytes` apart), j < chunk: a
 * whole VL x VL block is loaded row by row and transposed in registers, a partial one read word by word. */
static inline void FN(code_words)(const uint8_t *src, int64_t row_bytes, int live, int64_t c, int chunk, vu words[VL]) {
    if (live == VL && chunk == VL) {
        for (int r = 0; r < VL; r++) memcpy(&words[r], src + r * row_bytes + c * 4, sizeof(vu));
        FN(transpose)(words);
        return;
    }
    for (int j = 0; j < chunk; j++) {
        words[j] = (vu){0};
        for (int r = 0; r < live; r++) memcpy((uint32_t *)&words[j] + r, src + r * row_bytes + (c + j) * 4, 4);
    }
}

/* The quantized part of a panel: rows n .. n + live - 1 (live <= VL) of columns k0 .. k1 - 1 as floats, row r in
 * lane r: out[k * NR + r] (out already offset by -k0 * NR). Codes are read as 32-bit words, one word per lane:
 * whole chunks of VL words per row are loaded contiguously and transposed in registers; a partial chunk
 * (fewer than VL rows, or a short tail of K) is read word by word. */
static void FN(pack_codes)(const struct weights *w, int64_t n, int live, int64_t k0, int64_t k1, float *out) {
    const int64_t K = w->K, groups = K / w->group, row_bytes = K * w->bits / 8;
    const uint8_t *src = (const uint8_t *)w->data + n * row_bytes;
    const int per_word = 32 / w->bits, words_per_group = (int)(w->group / per_word);
    const int64_t w0 = k0 / per_word, w1 = k1 / per_word; /* the words of each row this panel covers */
    vf sc = {0}, bi = {0};
    for (int64_t c = w0; c < w1; c += VL) {
        const int chunk = (int)(w1 - c < VL ? w1 - c : VL);
        vu words[VL];
        FN(code_words)(src, row_bytes, live, c, chunk, words);
        for (int j = 0; j < chunk; j++) {
            const int64_t word = c + j;
            if (word % words_per_group == 0 || j == 0) { /* a new group: its scales and biases, one per row */
                const int64_t g = word / words_per_group;
                vu hs = {0}, hb = {0};
                for (int r = 0; r < live; r++) {
                    hs[r] = w->scales[(n + r) * groups + g];
                    hb[r] = w->biases[(n + r) * groups + g];
                }
                sc = FN(halves)(hs);
                bi = FN(halves)(hb);
            }
            float *o = out + word * per_word * NR;
            if (w->bits == 4) /* constant shifts, unrolled */
                for (int i = 0; i < 8; i++) FN(store)(o + i * NR, __builtin_convertvector((vi)((words[j] >> (4 * i)) & 0xF), vf) * sc + bi);
            else
                for (int i = 0; i < 4; i++) FN(store)(o + i * NR, __builtin_convertvector((vi)((words[j] >> (8 * i)) & 0xFF), vf) * sc + bi);
        }
    }
}

/* panel[(k - k0) * NR + j] = W[n + j][k] for j < rows (rows past the end: zero), k0 <= k < k1. */
static void FN(pack_panel)(const struct weights *w, int64_t n, int rows, int64_t k0, int64_t k1, float *panel) {
    const int64_t K = w->K;
    for (int jb = 0; jb < NR; jb += VL) { /* VL rows at a time: one lane per row */
        const int live = rows - jb < VL ? (rows - jb > 0 ? rows - jb : 0) : VL;
        float *out = panel + jb - k0 * NR;
        if (!live) {
            for (int64_t k = k0; k < k1; k++) FN(store)(out + k * NR, (vf){0});
        } else if (w->kind == W_F32) {
            const float *src = (const float *)w->data + (n + jb) * K;
            for (int64_t k = k0; k < k1; k++) {
                vf v = {0};
                for (int r = 0; r < live; r++) v[r] = src[r * K + k];
                FN(store)(out + k * NR, v);
            }
        } else if (w->kind == W_BF16) {
            const uint16_t *src = (const uint16_t *)w->data + (n + jb) * K;
            for (int64_t k = k0; k < k1; k++) {
                vu v = {0};
                for (int r = 0; r < live; r++) v[r] = (uint32_t)src[r * K + k] << 16;
                vf f;
                memcpy(&f, &v, sizeof f);
                FN(store)(out + k * NR, f);
            }
        } else {
            FN(pack_codes)(w, n + jb, live, k0, k1, out);
        }
    }
}

/* xp[k * MR + t] = x[t][k] for t < tokens, zero after: the broadcasts then read one cache line per k. */
static void FN(pack_tokens)(const float *x, int64_t K, int tokens, float *xp) {
    for (int64_t k = 0; k < K; k++)
        for (int t = 0; t < MR; t++) xp[k * MR + t] = t < tokens ? x[t * K + k] : 0.f;
}

/* y[t][0:cols] (+)= sum over the panel's kc columns of xp[k][t] * panel[k][0:cols], for t < tokens; `add`
 * accumulates onto y (the panels after the first). */
static void FN(outer_block)(const float *xp, const float *panel, int64_t kc, int tokens, int cols, float *y, int64_t ldy,
                            int add) {
    vf acc[MR][NV];
    for (int t = 0; t < MR; t++)
        for (int v = 0; v < NV; v++) acc[t][v] = (vf){0};
    for (int64_t k = 0; k < kc; k++) {
        vf w[NV];
        for (int v = 0; v < NV; v++) w[v] = FN(load)(panel + k * NR + v * VL);
        for (int t = 0; t < MR; t++) {
            const vf xb = FN(bcast)(xp + k * MR + t);
            for (int v = 0; v < NV; v++) acc[t][v] += xb * w[v];
        }
    }
    for (int t = 0; t < tokens; t++) {
        float row[NR];
        if (cols == NR) {
            for (int v = 0; v < NV; v++)
                FN(store)(y + t * ldy + v * VL, add ? FN(load)(y + t * ldy + v * VL) + acc[t][v] : acc[t][v]);
            continue;
        }
        for (int v = 0; v < NV; v++) FN(store)(row + v * VL, acc[t][v]);
        for (int c = 0; c < cols; c++) y[t * ldy + c] = add ? y[t * ldy + c] + row[c] : row[c];
    }
}

/* Floats of scratch the outer-product path needs for a tile of m tokens: the packed tokens and one panel. */
static size_t FN(outer_scratch)(int64_t m, int64_t K) { return (size_t)(((m + MR - 1) / MR) * MR * K + NR * KC); }
static int FN(outer_rows)(void) { return NR; }

/* `packed`: buf already holds these tokens packed (this thread's previous tile of the same job). */
static void FN(matmul_outer)(const struct weights *w, const float *x, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                             float *y, int64_t N, float *buf, int packed) {
    const int64_t K = w->K, blocks = (m1 - m0 + MR - 1) / MR;
    float *xp = buf, *panel = buf + blocks * MR * K;
    for (int64_t b = 0; b < blocks && !packed; b++) {
        const int64_t m = m0 + b * MR;
        FN(pack_tokens)(x + m * K, K, (int)(m1 - m < MR ? m1 - m : MR), xp + b * MR * K);
    }
    /* Panels along K inside each slab of NR rows: every row's codes are read front to back, which the
     * hardware prefetchers follow (K outermost read one cache line per row per panel, strided, and stalled). */
    for (int64_t n = n0; n < n1; n += NR) {
        const int cols = (int)(n1 - n < NR ? n1 - n : NR);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t k1 = k0 + KC < K ? k0 + KC : K;
            FN(pack_panel)(w, n, cols, k0, k1, panel);
            for (int64_t b = 0; b < blocks; b++) {
                const int64_t m = m0 + b * MR;
                FN(outer_block)(xp + b * MR * K + k0 * MR, panel, k1 - k0, (int)(m1 - m < MR ? m1 - m : MR), cols,
                                y + m * N + n, N, k0 > 0);
            }
        }
    }
}

/* Lanes of v limited to [lo, hi], by compare masks (C has no vector ?:). */
static inline vf FN(clamp)(vf v, float lo, float hi) {
    const vf l = (vf){0} + lo, h = (vf){0} + hi;
    vi bits, lb, hb;
    memcpy(&bits, &v, sizeof bits);
    memcpy(&lb, &l, sizeof lb);
    memcpy(&hb, &h, sizeof hb);
    const vi under = (vi)(v < l), over = (vi)(v > h);
    bits = (bits & ~(under | over)) | (lb & under) | (hb & over);
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* exp of each lane: 2^j * exp(r), r in [-ln2/2, ln2/2], exp(r) by a degree-6 polynomial (relative error
 * < 2e-7); j by round-to-nearest through the 1.5 * 2^23 trick. Lanes are clamped to [-80, 80] first. */
static inline vf FN(expv)(vf u) {
    u = FN(clamp)(u, -80.f, 80.f);
    const vf big = (vf){0} + 12582912.f;
    const vf j = (u * 1.4426950408889634f + big) - big;
    const vf r = u - j * 0.693145751953125f - j * 1.428606765330187e-06f;
    vf p = (vf){0} + 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    const vi bits = (__builtin_convertvector(j, vi) + 127) << 23;
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* out[i] = gelu_tanh(gate[i]) * up[i]; tanh(u) = 1 - 2 / (exp(2u) + 1), exp by range reduction and a
 * degree-6 polynomial (relative error < 2e-7 over the clamped range), VL lanes at a time. */
static inline vf FN(gelu_vec)(vf g, vf up) {
    const float c = 0.7978845608028654f, c3 = 0.044715f * 0.7978845608028654f;
    const vf u = 2.f * g * (c + c3 * g * g);
    const vf e = FN(expv)(u);
    const vf t = 1.f - 2.f / (e + 1.f);
    return 0.5f * g * (1.f + t) * up;
}

static void FN(gelu_mul)(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + VL <= n; i += VL) FN(store)(out + i, FN(gelu_vec)(FN(load)(gate + i), FN(load)(up + i)));
    if (i < n) { /* the tail through one zero-padded vector */
        float g[VL] = {0}, u[VL] = {0}, o[VL];
        memcpy(g, gate + i, (size_t)(n - i) * sizeof(float));
        memcpy(u, up + i, (size_t)(n - i) * sizeof(float));
        FN(store)(o, FN(gelu_vec)(FN(load)(g), FN(load)(u)));
        memcpy(out + i, o, (size_t)(n - i) * sizeof(float));
    }
}

/* One query block of one head of one sequence: scores against the keys it may see, softmax, weighted
 * values. q: (Lq, D) rows with stride ldq; k, v: the sequence's L real keys, (L, D) rows with stride ldk;
 * out rows with stride ldo. */
static void FN(attend_block)(const float *q, int64_t ldq, const float *k, const float *v, int64_t ldk, int64_t i0,
                             int64_t i1, int64_t L, int64_t D, float scale, int64_t radius, float *out, int64_t ldo,
                             float *scores) {
    const int64_t lo = radius < 0 ? 0 : (i0 - radius > 0 ? i0 - radius : 0);
    const int64_t hi = radius < 0 ? L : (i1 + radius < L ? i1 + radius : L);
    const int64_t R = hi - lo, Lq = i1 - i0;
    /* scores[i][j] = q_i . k_j, TOKENS queries x ROWS keys at a time */
    for (int64_t i = 0; i < Lq; i += TOKENS) {
        const int tokens = (int)(Lq - i < TOKENS ? Lq - i : TOKENS);
        for (int64_t j = 0; j < R; j += ROWS) {
            const int rows = (int)(R - j < ROWS ? R - j : ROWS);
            FN(dot_block)(q + i * ldq, ldq, tokens, k + (lo + j) * ldk, ldk, rows, D, scores + i * R + j, R);
        }
    }
    for (int64_t i = 0; i < Lq; i++) {
        float *s = scores + i * R;
        const int64_t qi = i0 + i;
        float mx = -3.4e38f;
        for (int64_t j = 0; j < R; j++) {
            const int64_t kj = lo + j, d = kj > qi ? kj - qi : qi - kj;
            const int seen = radius < 0 || d <= radius;
            s[j] = seen ? s[j] * scale : -3.4e38f;
            mx = s[j] > mx ? s[j] : mx;
        }
        vf sums = (vf){0};
        int64_t j = 0;
        for (; j + VL <= R; j += VL) {
            const vf v = FN(load)(s + j);
            const vf e = FN(expv)(v - mx);
            vi bits;
            memcpy(&bits, &e, sizeof bits);
            bits &= (vi)(v > -3.4e38f); /* masked keys weigh exactly 0 */
            vf kept;
            memcpy(&kept, &bits, sizeof kept);
            FN(store)(s + j, kept);
            sums += kept;
        }
        float sum = FN(hsum)(sums);
        for (; j < R; j++) {
            s[j] = s[j] <= -3.4e38f ? 0.f : expf(s[j] - mx);
            sum += s[j];
        }
        const float inv = 1.f / sum;
        for (int64_t j = 0; j < R; j++) s[j] *= inv;
    }
    /* out_i = sum_j p_ij v_j, four queries and two vectors of D at a time */
    for (int64_t d = 0; d < D; d += 2 * VL) {
        const int wide = d + 2 * VL <= D;
        for (int64_t i = 0; i < Lq; i += 4) {
            const int n = (int)(Lq - i < 4 ? Lq - i : 4);
            if (wide) {
                vf a0[4], a1[4];
                for (int t = 0; t < 4; t++) a0[t] = a1[t] = (vf){0};
                for (int64_t j = 0; j < R; j++) {
                    const vf v0 = FN(load)(v + (lo + j) * ldk + d), v1 = FN(load)(v + (lo + j) * ldk + d + VL);
                    for (int t = 0; t < n; t++) {
                        const float p = scores[(i + t) * R + j];
                        a0[t] += p * v0;
                        a1[t] += p * v1;
                    }
                }
                for (int t = 0; t < n; t++) {
                    FN(store)(out + (i + t) * ldo + d, a0[t]);
                    FN(store)(out + (i + t) * ldo + d + VL, a1[t]);
                }
            } else {
                for (int t = 0; t < n; t++)
                    for (int64_t dd = d; dd < D; dd++) {
                        float a = 0.f;
                        for (int64_t j = 0; j < R; j++) a += scores[(i + t) * R + j] * v[(lo + j) * ldk + dd];
                        out[(i + t) * ldo + dd] = a;
                    }
            }
        }
    }
}

/* out = x * rsqrt(mean(x^2) + eps) * scale, row by row (scale is Gemma's 1 + weight). */
static void FN(rms_norm)(const float *x, const float *scale, float *out, int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * dim;
        float *o = out + r * dim;
        vf acc = (vf){0};
        int64_t k = 0;
        for (; k + VL <= dim; k += VL) {
            const vf v = FN(load)(row + k);
            acc += v * v;
        }
        float ss = FN(hsum)(acc);
        for (; k < dim; k++) ss += row[k] * row[k];
        const float inv = 1.f / sqrtf(ss / (float)dim + eps);
        for (k = 0; k + VL <= dim; k += VL) FN(store)(o + k, FN(load)(row + k) * inv * FN(load)(scale + k));
        for (; k < dim; k++) o[k] = row[k] * inv * scale[k];
    }
}

/* Rotary embedding, halves rotated (MLX's traditional=False), in place: x holds `heads` vectors of D per
 * token; cos and sin (D / 2 each) are the angles of the token's position. */
static void FN(rope)(float *x, const float *c, const float *s, int64_t heads, int64_t D) {
    const int64_t h = D / 2;
    for (int64_t r = 0; r < heads; r++) {
        float *a = x + r * D;
        int64_t i = 0;
        for (; i + VL <= h; i += VL) {
            const vf x1 = FN(load)(a + i), x2 = FN(load)(a + h + i), cv = FN(load)(c + i), sv = FN(load)(s + i);
            FN(store)(a + i, x1 * cv - x2 * sv);
            FN(store)(a + h + i, x1 * sv + x2 * cv);
        }
        for (; i < h; i++) {
            const float x1 = a[i], x2 = a[h + i];
            a[i] = x1 * c[i] - x2 * s[i];
            a[h + i] = x1 * s[i] + x2 * c[i];
        }
    }
}

#ifdef INT8_DOTS
#include "kernels_int8.h"
#endif

#undef vf
#undef vu
#undef vi
#undef vb
#undef ROWS
#undef TOKENS
#undef NR
#undef NV
#undef MR
#undef KC
