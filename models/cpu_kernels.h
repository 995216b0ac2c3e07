/* What the CPU kernels (models/*_kernel.c, compiled by models/cpu_kernels.py) share: the
 * element type, vectors at the CPU's native width, vector tanh and exp, bfloat16 frames,
 * and the ring of padded rows that gives a 3x3 stencil its circular halo.
 *
 * Compiled with -DREAL=float|double (and -DREAL_FLOAT or -DREAL_DOUBLE, for the preprocessor),
 * and -DMVEC where the C library has vector tanh and exp (glibc's libmvec), which lets the
 * compiler vectorise them over a row.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef REAL real;
#if defined(MVEC)
#pragma omp declare simd notinbranch
float tanhf(float);
#pragma omp declare simd notinbranch
double tanh(double);
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
#endif
#define TANH(x) (sizeof(real) == sizeof(float) ? tanhf(x) : tanh(x))
#define EXP(x) (sizeof(real) == sizeof(float) ? expf(x) : exp(x))

#if defined(__AVX512F__)
#define VBYTES 64
#elif defined(__AVX__)
#define VBYTES 32
#else
#define VBYTES 16
#endif
#define VL (VBYTES / (int)sizeof(real))
typedef real vec __attribute__((vector_size(VBYTES)));
/* the same vector at any address of a real: loads and stores in one instruction each */
typedef real uvec __attribute__((vector_size(VBYTES), aligned(sizeof(real)), may_alias));
static inline vec load(const real *p) { return *(const uvec *)p; }
static inline void store(real *p, vec v) { *(uvec *)p = v; }

/* bfloat16 as the upper half of a float's bits, rounded to nearest even (the frames and
 * their gradients where the projection on the time basis runs in bfloat16) */
typedef unsigned short bf16;
static inline bf16 to_bf16(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return (bf16)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
static inline float from_bf16(bf16 h) {
    unsigned u = (unsigned)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Where a step's frame also goes: a float frame, a bfloat16 frame, or nowhere (NULL). */
typedef struct {
    real *f;
    bf16 *h;
} frame;

static frame frame_at(void *frames, int bf16_frames, long offset) {
    frame f = {NULL, NULL};
    if (frames && bf16_frames) f.h = (bf16 *)frames + offset;
    else if (frames) f.f = (real *)frames + offset;
    return f;
}

static inline void put_frame(frame f, long p, real v) {
    if (f.f) f.f[p] = v;
    if (f.h) f.h[p] = to_bf16((float)v);
}

static inline real get_frame(const real *f, const bf16 *h, long p) { return h ? (real)from_bf16(h[p]) : f[p]; }

/* The ring: three slots of nch padded rows of Wb + 2 (Wb >= W, zeros beyond W + 1). Copy
 * input row `row` of every channel of x (nch x H x rows of `stride`) into slot `slot`, with
 * one wrapped column on each side. */
static inline void fill_slot(real *ring, int nch, const real *x, long H, long W, long Wb, long stride, long row,
                             int slot) {
    row = (row + H) % H;
    for (int c = 0; c < nch; c++) {
        real *dst = ring + ((long)slot * nch + c) * (Wb + 2);
        const real *src = x + ((long)c * H + row) * stride;
        memcpy(dst + 1, src, W * sizeof(real));
        dst[0] = src[W - 1];
        dst[W + 1] = src[0];
    }
}

/* Make the ring hold the rows r-1, r, r+1 of x in slots (r-1+di) mod 3, given that it
 * held those of row r-1. */
static inline void advance_ring(real *ring, int nch, const real *x, long H, long W, long Wb, long stride, long r) {
    if (r == 0) {
        fill_slot(ring, nch, x, H, W, Wb, stride, -1, 2);
        fill_slot(ring, nch, x, H, W, Wb, stride, 0, 0);
    }
    fill_slot(ring, nch, x, H, W, Wb, stride, r + 1, (int)((r + 1) % 3));
}

/* Channel c of row r + di - 1 in the ring. */
static inline const real *slot(const real *ring, int nch, long Wb, long r, int di, int c) {
    return ring + (((r + 2 + di) % 3) * nch + c) * (Wb + 2);
}
