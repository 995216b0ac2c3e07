/* The ConvLSTM recurrence (models/conv_rnn.py) on the CPU, one image at a time through all
 * the steps of a call (models/convlstm_fused.py compiles it once per dtype and channel count
 * and calls it).
 *
 * An image's state s = [u; h; c] (3 NC channels) stays in cache across the steps, in rows of
 * Wb >= W columns whose columns beyond W stay zero, so that sums over whole vectors of a row
 * are exact. Each step is one pass over the rows: the gates' 3x3 circular convolution of
 * [u; h] (2 NC -> 4 NC channels, its halo from a ring of padded rows), the gates, the cell
 * update and the per-pixel MLP u = W2 relu(W1 h + b1) + b2. The backward pass recomputes an
 * image's steps, keeping every state, the gates and the MLP's hidden units, then runs the
 * adjoint steps (models/convlstm_fused.py has the equations). Arithmetic as in the eager
 * model; only the summation order differs.
 *
 * The parameters come packed in one vector theta: the gates' weight (4 NC x 2 NC x 3 x 3)
 * and bias, then W1 (2 NC x NC), b1, W2 (NC x 2 NC), b2; their gradients likewise.
 * Compiled with -DNC=<channels> and models/cpu_kernels.h's flags.
 */
#include "cpu_kernels.h"

#define NI (2 * NC) /* inputs [u; h] of the gates' convolution, and the MLP's hidden units */
#define NG (4 * NC) /* gates: input, forget, output, candidate */
#define NS (3 * NC) /* the state [u; h; c] */
#define NA (6 * NC) /* what a step keeps for the backward pass: the gates and the MLP's hidden units */
enum { WG = 0, BG = WG + NG * NI * 9, W1 = BG + NG, B1 = W1 + NI * NC, W2 = B1 + NI, B2 = W2 + NC * NI,
       NP = B2 + NC };

/* The stencils work on blocks of JB vectors per output channel: for few channels several
 * vectors, so that enough independent sums are in flight. Rows are whole blocks wide. */
#define JB(nout) ((nout) >= 8 ? 1 : 8 / (nout))
#define BW (VL * JB(NI))
static long block_width(long W) { return (W + BW - 1) / BW * BW; }

/* acc (nout rows of Wb) = the 3x3 circular convolution with w (nout x nin x 3 x 3) at output
 * row r of the image whose rows r-1, r, r+1 the ring (nin channels) holds. */
static inline __attribute__((always_inline)) void conv_row(real *restrict acc, const real *restrict ring,
                                                           const real *restrict w, int nin, int nout, long Wb,
                                                           long r) {
    for (long j = 0; j < Wb; j += VL * JB(nout)) {
        vec a[NG][4]; /* JB(nout) <= 4: nout >= 2 */
#pragma GCC unroll 32
        for (int co = 0; co < nout; co++)
            for (int b = 0; b < JB(nout); b++) a[co][b] = (vec){0};
        for (int ci = 0; ci < nin; ci++) {
            for (int di = 0; di < 3; di++) {
                const real *p = slot(ring, nin, Wb, r, di, ci) + j;
                for (int b = 0; b < JB(nout); b++) {
                    vec x0 = load(p + b * VL), x1 = load(p + b * VL + 1), x2 = load(p + b * VL + 2);
#pragma GCC unroll 32
                    for (int co = 0; co < nout; co++) {
                        const real *k = w + ((co * nin + ci) * 3 + di) * 3;
                        a[co][b] += k[0] * x0; /* three fused multiply-adds */
                        a[co][b] += k[1] * x1;
                        a[co][b] += k[2] * x2;
                    }
                }
            }
        }
#pragma GCC unroll 32
        for (int co = 0; co < nout; co++)
            for (int b = 0; b < JB(nout); b++) store(acc + co * Wb + j + b * VL, a[co][b]);
    }
}

/* gv (NG x NI x 3 x 3 vectors, summed over lanes later) += the gates' weight gradient of
 * output row r: dL/da of the row (ga: NG x H rows of Wb) times the input rows the ring holds.
 * Sums over the row stay in registers, for four output channels at a time. */
static void weight_row(vec *restrict gv, const real *restrict ga, long H, const real *restrict ring, long Wb,
                       long r) {
    for (int c0 = 0; c0 < NG; c0 += 4) {
        const real *g = ga + ((long)c0 * H + r) * Wb;
        for (int ci = 0; ci < NI; ci++) {
            for (int di = 0; di < 3; di++) {
                const real *p = slot(ring, NI, Wb, r, di, ci);
                vec s[4][3];
                for (int k = 0; k < 4; k++) s[k][0] = s[k][1] = s[k][2] = (vec){0};
                for (long j = 0; j < Wb; j += VL) {
                    vec x0 = load(p + j), x1 = load(p + j + 1), x2 = load(p + j + 2);
                    for (int k = 0; k < 4; k++) {
                        vec gk = load(g + k * H * Wb + j);
                        s[k][0] += gk * x0;
                        s[k][1] += gk * x1;
                        s[k][2] += gk * x2;
                    }
                }
                for (int k = 0; k < 4; k++) {
                    vec *acc = gv + (((c0 + k) * NI + ci) * 3 + di) * 3;
                    acc[0] += s[k][0];
                    acc[1] += s[k][1];
                    acc[2] += s[k][2];
                }
            }
        }
    }
}

/* *sum += sum_j a[j] and dots[k] += sum_j a[j] b[k * stride + j] (k < nb) over a row of Wb, as
 * vectors of partial sums */
static inline void row_sums(vec *sum, vec *dots, const real *a, const real *b, long stride, int nb, long Wb) {
    vec s = {0}, d[NI];
    for (int k = 0; k < nb; k++) d[k] = (vec){0};
    for (long j = 0; j < Wb; j += VL) {
        vec x = load(a + j);
        s += x;
        for (int k = 0; k < nb; k++) d[k] += x * load(b + k * stride + j);
    }
    *sum += s;
    for (int k = 0; k < nb; k++) dots[k] += d[k];
}

static inline real sigmoid(real x) { return 1 / (1 + EXP(-x)); }

/* Per-thread scratch: rings of padded rows ([u; h] and dL/da), one row of sums per channel,
 * one row of what a step keeps (where it is not kept), the states s_0..s_n and the kept
 * values a_1..a_n of one image (rows of Wb; in the forward pass two states), dL/ds, dL/da of
 * one step, dL/du and dL/dm of one row, the adjoint weight, and the parameters' gradient as
 * vector sums. */
typedef struct {
    long Wb;
    real *ring, *ring_x, *acc, *kept, *s, *a, *gs, *ga, *gu, *gm, *wadj;
    vec *gv;
} scratch;

static int scratch_init(scratch *s, long H, long W, long n, int backward) {
    long Wb = block_width(W), plane = H * Wb, ring = 3 * NG * (Wb + 2);
    long states = backward ? (n + 1) * NS * plane + n * NA * plane : 2 * NS * plane;
    long grads = backward ? NS * plane + NG * plane + NC * Wb + NI * Wb : 0;
    s->Wb = Wb;
    s->gv = aligned_alloc(64, sizeof(vec) * NP);
    s->ring = calloc(2 * ring + NG * Wb + NA * Wb + NI * NG * 9 + states + grads, sizeof(real));
    if (!s->gv || !s->ring) {
        free(s->gv);
        free(s->ring);
        return -1;
    }
    s->ring_x = s->ring + ring;
    s->acc = s->ring_x + ring;
    s->kept = s->acc + NG * Wb;
    s->wadj = s->kept + NA * Wb;
    s->s = s->wadj + NI * NG * 9;
    s->a = backward ? s->s + (n + 1) * NS * plane : NULL;
    s->gs = s->s + states;
    s->ga = s->gs + NS * plane;
    s->gu = s->ga + NG * plane;
    s->gm = s->gu + NC * Wb;
    return 0;
}

static void scratch_free(scratch *s) {
    free(s->gv);
    free(s->ring);
}

/* `rows` rows of W columns into rows of Wb, and back */
static void widen(real *dst, const real *src, long rows, long W, long Wb) {
    for (long i = 0; i < rows; i++) memcpy(dst + i * Wb, src + i * W, W * sizeof(real));
}
static void narrow(real *dst, const real *src, long rows, long W, long Wb) {
    for (long i = 0; i < rows; i++) memcpy(dst + i * W, src + i * Wb, W * sizeof(real));
}

/* One step of one image from the state s into s_out (NS x H rows of Wb): the gates and the
 * MLP's hidden units go to `keep` (NA x H rows of Wb) if not NULL, the new u also to `copy`.
 * Each pass is over a row of one channel, so that it vectorises along the row. */
static void step(const real *s, real *s_out, real *keep, frame copy, const real *theta, long H, long W,
                 scratch *sc) {
    long Wb = sc->Wb, plane = H * Wb, kp = keep ? plane : Wb; /* kp: channel stride of the kept values */
    const real *bg = theta + BG, *w1 = theta + W1, *b1 = theta + B1, *w2 = theta + W2, *b2 = theta + B2;
    for (long r = 0; r < H; r++) {
        advance_ring(sc->ring_x, NI, s, H, W, Wb, Wb, r);
        conv_row(sc->acc, sc->ring_x, theta + WG, NI, NG, Wb, r);
        real *u = s_out + r * Wb, *h = u + NC * plane, *kept = keep ? keep + r * Wb : sc->kept;
        for (int c = 0; c < NC; c++) {
            const real *a = sc->acc + c * Wb, *c_in = s + (2 * NC + c) * plane + r * Wb;
            real *k = kept + c * kp, *hc = h + c * plane, *cc = h + (NC + c) * plane;
#pragma omp simd
            for (long j = 0; j < W; j++) {
                real i = sigmoid(a[j] + bg[c]), f = sigmoid(a[NC * Wb + j] + bg[NC + c]);
                real o = sigmoid(a[2 * NC * Wb + j] + bg[2 * NC + c]), g = TANH(a[3 * NC * Wb + j] + bg[3 * NC + c]);
                real cell = f * c_in[j] + i * g;
                k[j] = i;
                k[NC * kp + j] = f;
                k[2 * NC * kp + j] = o;
                k[3 * NC * kp + j] = g;
                cc[j] = cell;
                hc[j] = o * TANH(cell);
            }
        }
        for (int k = 0; k < NI; k++) {
            real *m = kept + (NG + k) * kp;
#pragma omp simd
            for (long j = 0; j < W; j++) {
                real sum = 0;
#pragma GCC unroll 64
                for (int c = 0; c < NC; c++) sum += w1[k * NC + c] * h[c * plane + j];
                sum += b1[k];
                m[j] = sum > 0 ? sum : 0;
            }
        }
        for (int c = 0; c < NC; c++) {
            const real *m = kept + NG * kp;
#pragma omp simd
            for (long j = 0; j < W; j++) {
                real sum = 0;
#pragma GCC unroll 64
                for (int k = 0; k < NI; k++) sum += w2[c * NI + k] * m[k * kp + j];
                u[c * plane + j] = sum + b2[c];
                put_frame(copy, (c * H + r) * W + j, sum + b2[c]);
            }
        }
    }
}

/* n steps of images b0..b1-1 from (u0, h0, c0) (B x NC x H x W each): frames[t] (n x B x NC x
 * H x W, float, or bfloat16 if bf16_frames) = u after step t+1. Returns 0, or -1 without memory. */
int convlstm_forward(long b0, long b1, long B, long H, long W, long n, const real *u0, const real *h0,
                     const real *c0, const real *theta, void *frames, int bf16_frames) {
    long S = NC * H * W;
    scratch sc;
    if (scratch_init(&sc, H, W, n, 0)) return -1;
    long Wb = sc.Wb, plane = H * Wb;
    for (long b = b0; b < b1; b++) {
        widen(sc.s, u0 + b * S, NC * H, W, Wb);
        widen(sc.s + NC * plane, h0 + b * S, NC * H, W, Wb);
        widen(sc.s + 2 * NC * plane, c0 + b * S, NC * H, W, Wb);
        for (long t = 0; t < n; t++)
            step(sc.s + (t % 2) * NS * plane, sc.s + ((t + 1) % 2) * NS * plane, NULL,
                 frame_at(frames, bf16_frames, (t * B + b) * S), theta, H, W, &sc);
    }
    scratch_free(&sc);
    return 0;
}

/* The adjoint of n steps for images b0..b1-1 (see models/convlstm_fused.py): recomputes the
 * steps from (u0, h0, c0), then runs them backwards. g_frames (n x B x NC x H x W, float or,
 * if half, bfloat16) are the gradients of the frames; gu0, gh0, gc0 (B x NC x H x W) receive
 * the gradients of the initial state, g_theta (B x NP, per image) accumulates the parameters'.
 * frames (n x B x ..., float or bfloat16, or NULL) receives u_1..u_n, for the gradient of the
 * time basis. Returns 0, or -1 without memory. */
int convlstm_backward(long b0, long b1, long B, long H, long W, long n, const real *u0, const real *h0,
                      const real *c0, const real *theta, const void *g_frames, real *gu0, real *gh0, real *gc0,
                      real *g_theta, void *frames, int half) {
    long S = NC * H * W;
    scratch sc;
    if (scratch_init(&sc, H, W, n, 1)) return -1;
    long Wb = sc.Wb, plane = H * Wb;
    const real *w1 = theta + W1, *w2 = theta + W2;
    /* the adjoint of the gates' convolution: flipped, inputs and outputs swapped */
    for (int co = 0; co < NG; co++)
        for (int ci = 0; ci < NI; ci++)
            for (int k = 0; k < 9; k++) sc.wadj[(ci * NG + co) * 9 + 8 - k] = theta[WG + (co * NI + ci) * 9 + k];
    for (long b = b0; b < b1; b++) {
        widen(sc.s, u0 + b * S, NC * H, W, Wb);
        widen(sc.s + NC * plane, h0 + b * S, NC * H, W, Wb);
        widen(sc.s + 2 * NC * plane, c0 + b * S, NC * H, W, Wb);
        for (long i = 0; i < n; i++)
            step(sc.s + i * NS * plane, sc.s + (i + 1) * NS * plane, sc.a + i * NA * plane,
                 frame_at(frames, half, (i * B + b) * S), theta, H, W, &sc);
        memset(sc.gs, 0, sizeof(real) * NS * plane);
        memset(sc.gv, 0, sizeof(vec) * NP);
        for (long i = n - 1; i >= 0; i--) {
            const real *prev = sc.s + i * NS * plane, *next = sc.s + (i + 1) * NS * plane, *a = sc.a + i * NA * plane;
            const real *gf = half ? NULL : (const real *)g_frames + (i * B + b) * S;
            const bf16 *gh = half ? (const bf16 *)g_frames + (i * B + b) * S : NULL;
            for (long r = 0; r < H; r++) {
                long q = r * Wb;
                const real *ar = a + q, *pr = prev + q, *nr = next + q;
                real *gs = sc.gs + q, *ga = sc.ga + q, *gu = sc.gu, *gm = sc.gm;
                for (int c = 0; c < NC; c++) {
                    const real *gfc = gf ? gf + (c * H + r) * W : NULL, *ghc = gh ? gh + (c * H + r) * W : NULL;
#pragma omp simd
                    for (long j = 0; j < W; j++) gu[c * Wb + j] = gs[c * plane + j] + get_frame(gfc, ghc, j);
                }
                for (int k = 0; k < NI; k++) {
#pragma omp simd
                    for (long j = 0; j < W; j++) {
                        real sum = 0;
#pragma GCC unroll 64
                        for (int c = 0; c < NC; c++) sum += w2[c * NI + k] * gu[c * Wb + j];
                        gm[k * Wb + j] = ar[(NG + k) * plane + j] > 0 ? sum : 0;
                    }
                }
                for (int c = 0; c < NC; c++) {
                    const real *ac = ar + c * plane;
                    real *gc_ = gs + (2 * NC + c) * plane, *gac = ga + c * plane;
#pragma omp simd
                    for (long j = 0; j < W; j++) {
                        real gh_ = gs[(NC + c) * plane + j];
#pragma GCC unroll 64
                        for (int k = 0; k < NI; k++) gh_ += w1[k * NC + c] * gm[k * Wb + j];
                        real i = ac[j], f = ac[NC * plane + j], o = ac[2 * NC * plane + j], g = ac[3 * NC * plane + j];
                        real tc = TANH(nr[(2 * NC + c) * plane + j]);
                        real gc = gc_[j] + gh_ * o * (1 - tc * tc);
                        gac[j] = gc * g * i * (1 - i);
                        gac[NC * plane + j] = gc * pr[(2 * NC + c) * plane + j] * f * (1 - f);
                        gac[2 * NC * plane + j] = gh_ * tc * o * (1 - o);
                        gac[3 * NC * plane + j] = gc * i * (1 - g * g);
                        gc_[j] = gc * f;
                    }
                }
                /* the biases' and the MLP's weights' gradients: sums over the row */
                for (int c = 0; c < NC; c++)
                    row_sums(sc.gv + B2 + c, sc.gv + W2 + c * NI, gu + c * Wb, ar + NG * plane, plane, NI, Wb);
                for (int k = 0; k < NI; k++)
                    row_sums(sc.gv + B1 + k, sc.gv + W1 + k * NC, gm + k * Wb, nr + NC * plane, plane, NC, Wb);
                for (int k = 0; k < NG; k++) row_sums(sc.gv + BG + k, NULL, ga + k * plane, NULL, 0, 0, Wb);
            }
            /* dL/d[u; h] before the step through the adjoint convolution, and the gates' weight gradient */
            for (long r = 0; r < H; r++) {
                advance_ring(sc.ring, NG, sc.ga, H, W, Wb, Wb, r);
                advance_ring(sc.ring_x, NI, prev, H, W, Wb, Wb, r);
                conv_row(sc.acc, sc.ring, sc.wadj, NG, NI, Wb, r);
                for (int c = 0; c < NI; c++) memcpy(sc.gs + c * plane + r * Wb, sc.acc + c * Wb, W * sizeof(real));
                weight_row(sc.gv + WG, sc.ga, H, sc.ring_x, Wb, r);
            }
        }
        narrow(gu0 + b * S, sc.gs, NC * H, W, Wb);
        narrow(gh0 + b * S, sc.gs + NC * plane, NC * H, W, Wb);
        narrow(gc0 + b * S, sc.gs + 2 * NC * plane, NC * H, W, Wb);
        for (int k = 0; k < NP; k++)
            for (int l = 0; l < VL; l++) g_theta[b * NP + k] += sc.gv[k][l];
    }
    scratch_free(&sc);
    return 0;
}
