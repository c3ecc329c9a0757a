/* Quantized matmul with int8 activations, for CPUs with AVX-512 VNNI (vpdpbusd: 64 byte products summed
 * into 16 int32 lanes per instruction, four times the multiply-adds of a float FMA).
 *
 * Included by kernels_impl.h for that target only (it needs FN, vf, vu, vi and FN(code_words) from there).
 *
 * y[t][n] = sum over groups g of  scale[n][g] * dx[t][g] * sum_k q[n][k] * xq[t][k]  +  bias[n][g] * xsum[t][g]
 *
 * where the weight codes q are MLX's (unsigned, 4 or 8 bits) and each token's activations are rounded per
 * weight group to int8: xq = rint(x * 127 / absmax), dx = absmax / 127 (as llama.cpp's Q8 activations, per
 * group instead of per 32). xsum is the exact float sum of the group's activations, so the biases see no
 * rounding. The integer sums are exact; the only error against the float matmul is the activations'
 * rounding, at most dx / 2 per value. */

/* Lanes 0..15 of one group of 16 activations, reordered for 4-bit codes: a code word holds k .. k + 7 as
 * nibbles, split into the even and the odd ones, so each 8 activations are stored as x0 x2 x4 x6 x1 x3 x5 x7. */
typedef int8_t CAT(vq, ISA) __attribute__((vector_size(VL)));
#define vq CAT(vq, ISA)

/* Tokens m0 .. m1 - 1 of x (rows of K) to int8 codes (rows of K bytes), scales and sums (rows of K / group). */
static void FN(quantize_tokens)(const float *x, int64_t m0, int64_t m1, int64_t K, int group, int bits, int8_t *q,
                                int8_t *q2, float *dx, float *sum) {
    const int64_t G = K / group;
    for (int64_t t = m0; t < m1; t++)
        for (int64_t g = 0; g < G; g++) {
            const float *xg = x + t * K + g * group;
            vf mx = {0}, sv = {0};
            for (int k = 0; k < group; k += VL) {
                const vf v = FN(load)(xg + k);
                vi bits_;
                memcpy(&bits_, &v, sizeof bits_);
                bits_ &= 0x7FFFFFFF;
                vf a;
                memcpy(&a, &bits_, sizeof a);
                const vi more = (vi)(a > mx);
                vi mb, ab;
                memcpy(&mb, &mx, sizeof mb);
                memcpy(&ab, &a, sizeof ab);
                mb = (mb & ~more) | (ab & more);
                memcpy(&mx, &mb, sizeof mx);
                sv += v;
            }
            float absmax = 0.f;
            for (int i = 0; i < VL; i++) absmax = mx[i] > absmax ? mx[i] : absmax;
            const float id = absmax > 0.f ? 127.f / absmax : 0.f;
            dx[t * G + g] = absmax / 127.f;
            sum[t * G + g] = FN(hsum)(sv);
            /* Rounding by the conversion instruction (nearest even), on products rounded to float first:
             * written as (x * id + 1.5 * 2^23) - 1.5 * 2^23, GCC fused the add into the multiply, and a few
             * values near a tie rounded the other way than the float32 arithmetic this is specified in. */
            const __m512 idv = _mm512_set1_ps(id), k256 = _mm512_set1_ps(256.f);
            for (int k = 0; k < group; k += VL) {
                const __m512 u = _mm512_mul_ps(_mm512_loadu_ps(xg + k), idv);
                const __m512i r = _mm512_cvtps_epi32(u);
                vq c;
                _mm_storeu_si128((__m128i *)&c, _mm512_cvtepi32_epi8(r));
                if (bits == 4) c = __builtin_shufflevector(c, c, 0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
                memcpy(q + t * K + g * group + k, &c, sizeof c);
                if (q2) { /* the rounding error in 1/256ths of a step: q + q2 / 256 is x * id to 16 bits */
                    const __m512 e = _mm512_sub_ps(_mm512_mul_ps(u, k256), _mm512_mul_ps(_mm512_cvtepi32_ps(r), k256));
                    const __m512i e8 = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(e), _mm512_set1_epi32(127)),
                                                        _mm512_set1_epi32(-127));
                    vq c2;
                    _mm_storeu_si128((__m128i *)&c2, _mm512_cvtepi32_epi8(e8));
                    if (bits == 4) c2 = __builtin_shufflevector(c2, c2, 0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
                    memcpy(q2 + t * K + g * group + k, &c2, sizeof c2);
                }
            }
        }
}

/* The slab of 16 weight rows n .. n + live - 1, all of K, as the tile below reads it: per code word, the
 * unsigned bytes of 16 rows (4-bit: the even codes' vector, then the odd codes'), and per group the 16
 * rows' scales and biases as floats. Rows past `live` are zero. */
static void FN(pack_slab_int8)(const struct weights *w, int64_t n, int live, int next_live, __m512i *codes,
                               __m512 *scales, __m512 *biases) {
    const int64_t K = w->K, G = K / w->group, row_bytes = K * w->bits / 8, words = K * w->bits / 32;
    const uint8_t *src = (const uint8_t *)w->data + n * row_bytes, *next = src + VL * row_bytes;
    for (int64_t c = 0; c < words; c += VL) {
        const int chunk = (int)(words - c < VL ? words - c : VL);
        /* The next slab's codes on their way to the cache while this one is worked on: waiting for weights
         * that come from memory was the largest single cost of a query. */
        for (int r = 0; r < next_live; r++) __builtin_prefetch(next + r * row_bytes + c * 4);
        vu m[VL];
        FN(code_words)(src, row_bytes, live, c, chunk, m);
        for (int j = 0; j < chunk; j++) {
            if (w->bits == 4) {
                const vu lo = m[j] & 0x0F0F0F0F, hi = (m[j] >> 4) & 0x0F0F0F0F;
                memcpy(&codes[2 * (c + j)], &lo, sizeof lo);
                memcpy(&codes[2 * (c + j) + 1], &hi, sizeof hi);
            } else {
                memcpy(&codes[c + j], &m[j], sizeof m[j]);
            }
        }
    }
    for (int64_t g = 0; g < G; g++) {
        vu hs = {0}, hb = {0};
        for (int r = 0; r < live; r++) {
            hs[r] = w->scales[(n + r) * G + g];
            hb[r] = w->biases[(n + r) * G + g];
        }
        const vf s = FN(halves)(hs), b = FN(halves)(hb);
        memcpy(&scales[g], &s, sizeof s);
        memcpy(&biases[g], &b, sizeof b);
    }
}

static inline __m512i FN(bcast32)(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

#define MRQ 12 /* tokens per tile: 12 int32 and 12 float accumulators of 32 registers */

/* y[t][0:cols] = 16 rows of the slab against `mr` tokens (xq rows of K bytes, dx / xsum rows of G). `mr` is a
 * constant at every call site, so each tile size is its own fully unrolled loop. */
static inline __attribute__((always_inline)) void FN(tile_int8)(const __m512i *codes, const __m512 *scales,
                                                                const __m512 *biases, int bits, int64_t K, int group,
                                                                const int8_t *xq, const int8_t *xq2, const float *dx,
                                                                const float *xsum, float *y, int64_t ldy, int cols,
                                                                const int mr) {
    const int64_t G = K / group;
    const int words_per_group = group * bits / 32;
    __m512 accf[MRQ];
    for (int t = 0; t < mr; t++) accf[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m512i acc[MRQ];
        for (int t = 0; t < mr; t++) acc[t] = _mm512_setzero_si512();
        const int64_t w0 = g * words_per_group;
        for (int pass = 0; pass < (xq2 ? 2 : 1); pass++) {
            const int8_t *a = pass ? xq2 : xq;
            if (pass)
                for (int t = 0; t < mr; t++) acc[t] = _mm512_slli_epi32(acc[t], 8);
            if (bits == 4) {
                for (int64_t wd = w0; wd < w0 + words_per_group; wd++) {
                    const __m512i lo = codes[2 * wd], hi = codes[2 * wd + 1];
                    for (int t = 0; t < mr; t++) {
                        acc[t] = _mm512_dpbusd_epi32(acc[t], lo, FN(bcast32)(a + t * K + wd * 8));
                        acc[t] = _mm512_dpbusd_epi32(acc[t], hi, FN(bcast32)(a + t * K + wd * 8 + 4));
                    }
                }
            } else {
                for (int64_t wd = w0; wd < w0 + words_per_group; wd++) {
                    const __m512i c = codes[wd];
                    for (int t = 0; t < mr; t++) acc[t] = _mm512_dpbusd_epi32(acc[t], c, FN(bcast32)(a + t * K + wd * 4));
                }
            }
        }
        const __m512 s = xq2 ? _mm512_mul_ps(scales[g], _mm512_set1_ps(1.f / 256.f)) : scales[g], b = biases[g];
        for (int t = 0; t < mr; t++) {
            const __m512 st = _mm512_mul_ps(s, _mm512_set1_ps(dx[t * G + g]));
            accf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), st, accf[t]);
            accf[t] = _mm512_fmadd_ps(b, _mm512_set1_ps(xsum[t * G + g]), accf[t]);
        }
    }
    const __mmask16 keep = (__mmask16)((1u << cols) - 1);
    for (int t = 0; t < mr; t++) _mm512_mask_storeu_ps(y + t * ldy, keep, accf[t]);
}

/* Floats of scratch per task: one slab (codes, then scales and biases), in 64-byte vectors. */
static size_t FN(int8_scratch)(int64_t K, int group) {
    return (size_t)(K / 4 + 2 * (K / group)) * 16 + 16; /* codes: K / 4 vectors at either width; + alignment slack */
}

/* y[m, n0:n1] for m in [m0, m1) from activations already rounded (quantize_tokens, whole rows of x). */
static void FN(matmul_int8)(const struct weights *w, const int8_t *xq, const int8_t *xq2, const float *dx, const float *xsum, int64_t m0,
                            int64_t m1, int64_t n0, int64_t n1, float *y, int64_t N, float *buf) {
    const int64_t K = w->K, G = K / w->group;
    __m512i *codes = (__m512i *)(((uintptr_t)buf + 63) & ~(uintptr_t)63);
    __m512 *scales = (__m512 *)(codes + K / 4), *biases = scales + G;
    for (int64_t n = n0; n < n1; n += VL) {
        const int cols = (int)(n1 - n < VL ? n1 - n : VL);
        const int64_t after = n1 - (n + VL);
        FN(pack_slab_int8)(w, n, cols, (int)(after <= 0 ? 0 : after < VL ? after : VL), codes, scales, biases);
        for (int64_t m = m0; m < m1; m += MRQ) {
            const int mr = (int)(m1 - m < MRQ ? m1 - m : MRQ);
            const int8_t *xt = xq + m * K, *xt2 = xq2 ? xq2 + m * K : NULL;
            const float *dt = dx + m * G, *st = xsum + m * G;
            float *yt = y + m * N + n;
#define TILE(r) FN(tile_int8)(codes, scales, biases, w->bits, K, w->group, xt, xt2, dt, st, yt, N, cols, r)
            switch (mr) {
            case 1: TILE(1); break;
            case 2: TILE(2); break;
            case 3: TILE(3); break;
            case 4: TILE(4); break;
            case 5: TILE(5); break;
            case 6: TILE(6); break;
            case 7: TILE(7); break;
            case 8: TILE(8); break;
            case 9: TILE(9); break;
            case 10: TILE(10); break;
            case 11: TILE(11); break;
            default: TILE(12); break;
            }
#undef TILE
        }
    }
}

#undef MRQ
#undef vq
