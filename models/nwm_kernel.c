/* The NWM recurrence on the CPU, one image at a time through all the steps of a call
 * (models/nwm_cpu.py compiles it once per dtype and channel count and calls it).
 *
 * One image's state stays in cache across the steps, and each step is one pass: the
 * 3x3 circular stencil of a row, its tanh and the update of (y, z) for that row. The
 * circular halo comes from a ring of three padded rows per channel (the rows r-1, r,
 * r+1 of the input), so the state itself is never copied into a padded tensor.
 * Arithmetic as in models/nwm_fused.py; only the summation order differs.
 *
 * Compiled with -DNC=<channels> and models/cpu_kernels.h's flags.
 */
#include "cpu_kernels.h"

/* The stencils work on blocks of BW columns held in JB vectors of VL lanes per channel:
 * for few channels several vectors, so that enough independent sums are in flight. */
#define JB (NC >= 8 ? 1 : 8 / NC)
#define BW (VL * JB)

/* Rows in the workspace are Wb = W rounded up to whole blocks wide (zeros beyond W). */
static long block_width(long W) { return (W + BW - 1) / BW * BW; }

/* acc (NC rows of Wb) = the 3x3 circular convolution with w (NC x NC x 3 x 3) at output
 * row r of the image whose rows r-1, r, r+1 the ring holds. */
static void conv_row(real *restrict acc, const real *restrict ring, const real *restrict w, long Wb, long r) {
    for (long j = 0; j < Wb; j += BW) {
        vec a[NC][JB];
        for (int co = 0; co < NC; co++)
            for (int b = 0; b < JB; b++) a[co][b] = (vec){0};
        for (int ci = 0; ci < NC; ci++) {
            for (int di = 0; di < 3; di++) {
                const real *p = slot(ring, NC, Wb, r, di, ci) + j;
                for (int b = 0; b < JB; b++) {
                    vec x0 = load(p + b * VL), x1 = load(p + b * VL + 1), x2 = load(p + b * VL + 2);
#pragma GCC unroll 16
                    for (int co = 0; co < NC; co++) {
                        const real *k = w + ((co * NC + ci) * 3 + di) * 3;
                        a[co][b] += k[0] * x0;  /* three fused multiply-adds */
                        a[co][b] += k[1] * x1;
                        a[co][b] += k[2] * x2;
                    }
                }
            }
        }
        for (int co = 0; co < NC; co++)
            for (int b = 0; b < JB; b++) store(acc + co * Wb + j + b * VL, a[co][b]);
    }
}

/* gv (NC x NC x 3 x 3 vectors, summed over lanes later) += the weight gradient of output
 * row r: dL/da of the row (ga: NC x H rows of Wb) times the input rows the ring holds.
 * Sums over the row stay in registers, for G output channels at a time. */
#define G (NC % 4 == 0 ? 4 : NC % 2 == 0 ? 2 : 1)
static void weight_row(vec *restrict gv, const real *restrict ga, long H, const real *restrict ring, long Wb, long r) {
    for (int c0 = 0; c0 < NC; c0 += G) {
        const real *g = ga + ((long)c0 * H + r) * Wb;
        for (int ci = 0; ci < NC; ci++) {
            for (int di = 0; di < 3; di++) {
                const real *p = slot(ring, NC, Wb, r, di, ci);
                vec s[G][3];
                for (int k = 0; k < G; k++) s[k][0] = s[k][1] = s[k][2] = (vec){0};
                for (long j = 0; j < Wb; j += VL) {
                    vec x0 = load(p + j), x1 = load(p + j + 1), x2 = load(p + j + 2);
                    for (int k = 0; k < G; k++) {
                        vec gk = load(g + k * H * Wb + j);
                        s[k][0] += gk * x0;
                        s[k][1] += gk * x1;
                        s[k][2] += gk * x2;
                    }
                }
                for (int k = 0; k < G; k++) {
                    vec *acc = gv + (((c0 + k) * NC + ci) * 3 + di) * 3;
                    acc[0] += s[k][0];
                    acc[1] += s[k][1];
                    acc[2] += s[k][2];
                }
            }
        }
    }
}

/* Per-thread scratch: rings of padded rows for y and for dL/da, one row of sums per
 * channel, dL/da of one step (rows of Wb), the weight gradient's vector sums. */
typedef struct {
    long Wb;
    real *ring, *ring_y, *acc, *ga;
    vec *gv;
} scratch;

static int scratch_init(scratch *s, long H, long W) {
    long Wb = block_width(W), ring = 3 * NC * (Wb + 2);
    s->Wb = Wb;
    s->gv = aligned_alloc(64, sizeof(vec) * NC * NC * 9);
    s->ring = calloc(2 * ring + NC * Wb + NC * H * Wb, sizeof(real));
    if (!s->gv || !s->ring) {
        free(s->gv);
        free(s->ring);
        return -1;
    }
    s->ring_y = s->ring + ring;
    s->acc = s->ring_y + ring;
    s->ga = s->acc + NC * Wb;
    return 0;
}

static void scratch_free(scratch *s) {
    free(s->gv);
    free(s->ring);
}

/* One step of one image: y_out = y + dt z_out, z_out = damping z - dt_omega y + dt tanh(W * y);
 * tanh(W * y) goes to th if th is not NULL, y_out also to `copy`. z_out may be z; y_out may not be y. */
static void step(const real *y, const real *z, real *y_out, real *z_out, real *th, frame copy, const real *dto,
                 const real *damp, const real *w, real dt, long H, long W, scratch *s) {
    for (long r = 0; r < H; r++) {
        advance_ring(s->ring, NC, y, H, W, s->Wb, W, r);
        conv_row(s->acc, s->ring, w, s->Wb, r);
        for (int c = 0; c < NC; c++) {
            long o = ((long)c * H + r) * W;
            const real *a = s->acc + (long)c * s->Wb;
            /* one pass: tanh, the update, and the copies the caller asked for */
#pragma omp simd
            for (long j = 0; j < W; j++) {
                real t = TANH(a[j]);
                real zn = damp[o + j] * z[o + j] - dto[o + j] * y[o + j] + dt * t;
                real yn = y[o + j] + dt * zn;
                z_out[o + j] = zn;
                y_out[o + j] = yn;
                if (th) th[o + j] = t;
                put_frame(copy, o + j, yn);
            }
        }
    }
}

/* n steps of images b0..b1-1 from (y0, z) (B x NC x H x W; z is updated in place):
 * frames[t] (n x B x NC x H x W, float, or bfloat16 if bf16_frames) = y after step t+1.
 * ck (B x (segments - 1) x 2 x NC x H x W, or NULL) receives (y, z) after steps K, 2K, ...
 * before the last step: the starts of nwm_backward's segments of K steps after the first.
 * Returns 0, or -1 without memory. */
int nwm_forward(long b0, long b1, long B, long H, long W, long n, long K, const real *y0, real *z,
                const real *dto, const real *damp, const real *w, double dt, void *frames, int bf16_frames,
                real *ck) {
    long S = NC * H * W, segments = (n + K - 1) / K;
    scratch s;
    real *ys = malloc(sizeof(real) * 2 * S);  /* y before and after a step */
    if (!ys || scratch_init(&s, H, W)) {
        free(ys);
        return -1;
    }
    for (long b = b0; b < b1; b++) {
        const real *y = y0 + b * S;
        for (long t = 0; t < n; t++) {
            real *out = ys + (t % 2) * S;
            step(y, z + b * S, out, z + b * S, NULL, frame_at(frames, bf16_frames, (t * B + b) * S), dto + b * S,
                 damp + b * S, w, (real)dt, H, W, &s);
            y = out;
            if (ck && (t + 1) % K == 0 && t + 1 < n) {  /* the start of segment (t + 1) / K */
                real *c = ck + (b * (segments - 1) + (t + 1) / K - 1) * 2 * S;
                memcpy(c, out, S * sizeof(real));
                memcpy(c + S, z + b * S, S * sizeof(real));
            }
        }
    }
    scratch_free(&s);
    free(ys);
    return 0;
}

/* The adjoint of n steps for images b0..b1-1 (see models/nwm_fused.py), image by image, in
 * segments of K ~ sqrt(n) steps: each segment, last first, is recomputed from its start (its
 * y, z and tanh kept) and its adjoint steps run. The first starts at (y_start, z_start), the
 * others at the (y, z) that nwm_forward kept in ck (B x (segments - 1) x 2 x NC x H x W). So
 * one image's history is ~3 sqrt(n) states instead of 3 n (in cache for small images, and
 * little memory per thread for large ones), for one more forward pass. gy, gz (B x NC x H x W)
 * enter as the gradients after the last step and leave as those before the first; g_frames
 * (n x B x ..., float or, if half, bfloat16) are the gradients of the frames; g_dto, g_damp
 * (B x ...) and g_w (B x NC x NC x 3 x 3, per image) accumulate. frames (n x B x ..., float
 * or bfloat16, or NULL) receives y_1..y_n, for the gradient of the time basis. wadj:
 * the adjoint kernel (flipped, in and out channels swapped). Returns 0, or -1 without memory. */
int nwm_backward(long b0, long b1, long B, long H, long W, long n, long K, const real *y_start,
                 const real *z_start, const real *ck, const real *dto, const real *damp, const real *w,
                 const real *wadj, double dt_, const void *g_frames, real *gy, real *gz,
                 real *g_dto, real *g_damp, real *g_w, void *frames, int half) {
    long S = NC * H * W, Wb = block_width(W);
    long segments = (n + K - 1) / K;
    real dt = (real)dt_;
    scratch s;
    /* y and z before each step of a segment and after its last, tanh of each step */
    real *history = malloc(sizeof(real) * (3 * K + 2) * S);
    if (!history || scratch_init(&s, H, W)) {
        free(history);
        return -1;
    }
    real *ys = history, *zs = ys + (K + 1) * S, *th = zs + (K + 1) * S;
    for (long b = b0; b < b1; b++) {
        const real *om = dto + b * S, *dm = damp + b * S;
        real *gyb = gy + b * S, *gzb = gz + b * S, *gob = g_dto + b * S, *gdb = g_damp + b * S;
        memset(s.gv, 0, sizeof(vec) * NC * NC * 9);
        for (long g = segments - 1; g >= 0; g--) {
            long t0 = g * K, steps = n - t0 < K ? n - t0 : K;
            const real *yc = g ? ck + (b * (segments - 1) + g - 1) * 2 * S : y_start + b * S;
            memcpy(ys, yc, S * sizeof(real));
            memcpy(zs, g ? yc + S : z_start + b * S, S * sizeof(real));
            for (long i = 0; i < steps; i++)
                step(ys + i * S, zs + i * S, ys + (i + 1) * S, zs + (i + 1) * S, th + i * S,
                     frame_at(frames, half, ((t0 + i) * B + b) * S), om, dm, w, dt, H, W, &s);
            for (long i = steps - 1; i >= 0; i--) {
                const real *yi = ys + i * S, *zi = zs + i * S, *t = th + i * S;
                const real *gf = half ? NULL : (const real *)g_frames + ((t0 + i) * B + b) * S;
                const bf16 *gh = half ? (const bf16 *)g_frames + ((t0 + i) * B + b) * S : NULL;
                for (long row = 0; row < NC * H; row++) {
                    real *ga = s.ga + row * Wb;
#pragma omp simd
                    for (long j = 0; j < W; j++) {
                        long p = row * W + j;
                        real gyp = gyb[p] + get_frame(gf, gh, p);
                        real gzp = gzb[p] + dt * gyp;  /* the total dL/dz_t */
                        gdb[p] += gzp * zi[p];
                        gob[p] -= gzp * yi[p];
                        ga[j] = dt * (gzp - gzp * t[p] * t[p]);
                        gyb[p] = gyp - om[p] * gzp;
                        gzb[p] = gzp * dm[p];
                    }
                }
                for (long r = 0; r < H; r++) {
                    advance_ring(s.ring, NC, s.ga, H, W, Wb, Wb, r);
                    advance_ring(s.ring_y, NC, yi, H, W, Wb, W, r);
                    conv_row(s.acc, s.ring, wadj, Wb, r);
                    for (long c = 0; c < NC; c++)
#pragma omp simd
                        for (long j = 0; j < W; j++) gyb[(c * H + r) * W + j] += s.acc[c * Wb + j];
                    weight_row(s.gv, s.ga, H, s.ring_y, Wb, r);
                }
            }
        }
        real *gwb = g_w + b * NC * NC * 9;
        for (int k = 0; k < NC * NC * 9; k++)
            for (int l = 0; l < VL; l++) gwb[k] += s.gv[k][l];
    }
    scratch_free(&s);
    free(history);
    return 0;
}
