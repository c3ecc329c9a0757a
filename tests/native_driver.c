/* Runs the native kernels on raw files, for testing builds that Python cannot load here (arm64 under
 * qemu-user): tests/test_native_kernels.py writes the inputs, runs this, and checks the outputs against
 * references computed on the host.
 *
 *   driver ISA THREADS matmul M K N KIND GROUP BITS X W SCALES BIASES OUT [ACTIVATIONS]
 *   driver ISA THREADS attention B HQ HKV D SCALE RADIUS Q K V LENGTHS OUT   (T = sum of the int64 LENGTHS)
 *   driver ISA THREADS gelu N GATE UP OUT
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *eg_isa(void);
int eg_select_isa(const char *name);
void eg_set_threads(int n);
int eg_matmul(const float *x, int64_t M, int64_t K, int kind, const void *w, const void *scales, const void *biases,
              int64_t N, int group, int bits, int activations, float *y);
int eg_attention(const float *q, const float *k, const float *v, const int64_t *len, int64_t B, int64_t Hq, int64_t Hkv,
                 int64_t D, float scale, int64_t radius, float *out);
void eg_gelu_mul(const float *gate, const float *up, float *out, int64_t n);

static void *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(n ? (size_t)n : 1);
    if (fread(p, 1, (size_t)n, f) != (size_t)n) exit(2);
    fclose(f);
    return p;
}

static void spill(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) exit(2);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 4 || !eg_select_isa(argv[1])) {
        fprintf(stderr, "usage, or kernel %s not runnable here\n", argc > 1 ? argv[1] : "?");
        return 2;
    }
    eg_set_threads(atoi(argv[2]));
    const char *op = argv[3];
    if (!strcmp(op, "matmul") && (argc == 15 || argc == 16)) {
        const int64_t M = atoll(argv[4]), K = atoll(argv[5]), N = atoll(argv[6]);
        float *y = malloc((size_t)(M * N) * sizeof(float));
        int rc = eg_matmul(slurp(argv[10]), M, K, atoi(argv[7]), slurp(argv[11]), slurp(argv[12]), slurp(argv[13]), N,
                           atoi(argv[8]), atoi(argv[9]), argc == 16 ? atoi(argv[15]) : 32, y);
        spill(argv[14], y, (size_t)(M * N) * sizeof(float));
        return rc ? 1 : 0;
    }
    if (!strcmp(op, "attention") && argc == 15) {
        const int64_t B = atoll(argv[4]), Hq = atoll(argv[5]), Hkv = atoll(argv[6]), D = atoll(argv[7]);
        const int64_t *len = slurp(argv[13]);
        int64_t T = 0;
        for (int64_t b = 0; b < B; b++) T += len[b];
        float *out = malloc((size_t)(T * Hq * D) * sizeof(float));
        int rc = eg_attention(slurp(argv[10]), slurp(argv[11]), slurp(argv[12]), len, B, Hq, Hkv, D, (float)atof(argv[8]),
                              atoll(argv[9]), out);
        spill(argv[14], out, (size_t)(T * Hq * D) * sizeof(float));
        return rc ? 1 : 0;
    }
    if (!strcmp(op, "gelu") && argc == 8) {
        const int64_t n = atoll(argv[4]);
        float *out = malloc((size_t)n * sizeof(float));
        eg_gelu_mul(slurp(argv[5]), slurp(argv[6]), out, n);
        spill(argv[7], out, (size_t)n * sizeof(float));
        return 0;
    }
    fprintf(stderr, "bad arguments for %s\n", op);
    return 2;
}
