/* The NWM recurrence on the CPU, one image at a time through all the steps of a call
 * (models/nwm_cpu.py compiles it once per dtype and channel count and calls it).
 *
 * One image's state stays in cache across the steps, and each step is one pass: the
 * 3x3 circular stencil of a row (or of a block of 4 rows, below), its tanh and the update of
 * (y, z) for that row. The circular halo comes from a ring of three padded rows per channel
 * (the rows r-1, r, r+1 of the input), or from the padded transformed rows of a block, so the
 * state itself is never copied into a padded tensor. Arithmetic as in models/nwm_fused.py;
 * only the summation order (and with Winograd's products, the rounding) differs.
 *
 * Compiled with -DNC=<channels> and models/cpu_kernels.h's flags.
 *
 * Where the CPU has AVX512-BF16, NC is even and the reals are float, the coupling's three
 * products (W * y, the adjoint W^T * dL/da and the weight gradient) can also run as bfloat16
 * dot products with float32 sums (half_coupling): twice the multiply-adds per instruction.
 * y, z, tanh, the update and the adjoint's sums stay in the reals.
 *
 * With 8 or more channels the coupling's forward and adjoint products otherwise run as
 * Winograd's F(4, 3) along the rows (wino_rows, wino_block): 4 output rows from 6 transformed
 * input rows, 6 x 3 taps per channel pair instead of 4 x 9, half the multiply-adds, in the reals.
 */
#include "cpu_kernels.h"
#if defined(__AVX512BF16__) && defined(REAL_FLOAT) && NC % 2 == 0
#include <immintrin.h>
#define HALF_COUPLING 1
#else
#define HALF_COUPLING 0
#endif

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

/* Winograd's F(4, 3) along the rows, for 8 or more channels, where the products are most of a
 * step: output rows r..r+3 = A^T [(G w) . (B^T x)] over the six input rows r-1..r+4 (circular),
 * each transformed row then convolved along the columns with the 3 taps of its transformed
 * weights. The transforms are exact in the reals up to rounding (tests/test_speed.py checks
 * them in float64 against the eager steps). */
#define WINOGRAD (NC >= 8)
#define WR 4 /* output rows per block */
#define WM 6 /* transformed rows per block */

static const double wino_g[WM][3] = {{1 / 4., 0, 0},          {-1 / 6., -1 / 6., -1 / 6.}, {-1 / 6., 1 / 6., -1 / 6.},
                                     {1 / 24., 1 / 12., 1 / 6.}, {1 / 24., -1 / 12., 1 / 6.}, {0, 0, 1}};

/* u[((m * NC + ci) * 3 + dj) * NC + co] = sum_di G[m][di] w[co, ci, di, dj], summed in double */
static void winograd_weights(real *restrict u, const real *restrict w) {
    for (int m = 0; m < WM; m++)
        for (int ci = 0; ci < NC; ci++)
            for (int dj = 0; dj < 3; dj++)
                for (int co = 0; co < NC; co++) {
                    double sum = 0;
                    for (int di = 0; di < 3; di++) sum += wino_g[m][di] * w[((co * NC + ci) * 3 + di) * 3 + dj];
                    u[((m * NC + ci) * 3 + dj) * NC + co] = (real)sum;
                }
}

/* v (WM x NC padded rows of Wb + 2, one wrapped column on each side) = B^T of the input rows
 * r-1..r+4 of x (NC x H rows of `stride`), per column. */
static void wino_rows(real *restrict v, const real *restrict x, long H, long W, long Wb, long stride, long r) {
    for (int ci = 0; ci < NC; ci++) {
        const real *d[WM];
        real *o[WM];
        for (int k = 0; k < WM; k++) {
            d[k] = x + ((long)ci * H + (r - 1 + k + H) % H) * stride;
            o[k] = v + ((long)k * NC + ci) * (Wb + 2) + 1;
        }
#pragma omp simd
        for (long j = 0; j < W; j++) {
            real d0 = d[0][j], d1 = d[1][j], d2 = d[2][j], d3 = d[3][j], d4 = d[4][j], d5 = d[5][j];
            o[0][j] = 4 * d0 - 5 * d2 + d4;
            o[1][j] = d4 + d3 - 4 * (d1 + d2);
            o[2][j] = d4 - d3 + 4 * (d1 - d2);
            o[3][j] = d4 - d2 + 2 * (d3 - d1);
            o[4][j] = d4 - d2 - 2 * (d3 - d1);
            o[5][j] = 4 * d1 - 5 * d3 + d5;
        }
        for (int k = 0; k < WM; k++) o[k][-1] = o[k][W - 1], o[k][W] = o[k][0];
    }
}

/* acc (WR x NC rows of Wb) at columns j..j+VL-1 = A^T of the transformed rows' products with u:
 * per transformed row m, NC sums of NC channels x 3 taps, then the output transform. */
static void wino_block(real *restrict acc, const real *restrict v, const real *restrict u, long Wb, long j) {
    vec M[WM][NC];
    for (int m = 0; m < WM; m++) {
        vec a[NC];
        for (int co = 0; co < NC; co++) a[co] = (vec){0};
        for (int ci = 0; ci < NC; ci++)
            for (int dj = 0; dj < 3; dj++) {
                vec x = load(v + ((long)m * NC + ci) * (Wb + 2) + j + dj);
                const real *k = u + ((m * NC + ci) * 3 + dj) * NC;
#pragma GCC unroll 16
                for (int co = 0; co < NC; co++) a[co] += k[co] * x;
            }
        for (int co = 0; co < NC; co++) M[m][co] = a[co];
    }
    for (int co = 0; co < NC; co++) {
        vec s12 = M[1][co] + M[2][co], d12 = M[1][co] - M[2][co];
        vec s34 = M[3][co] + M[4][co], d34 = M[3][co] - M[4][co];
        store(acc + ((long)0 * NC + co) * Wb + j, M[0][co] + s12 + s34);
        store(acc + ((long)1 * NC + co) * Wb + j, d12 + 2 * d34);
        store(acc + ((long)2 * NC + co) * Wb + j, s12 + 4 * s34);
        store(acc + ((long)3 * NC + co) * Wb + j, d12 + 8 * d34 + M[5][co]);
    }
}

/* The weight gradient the same way, F(4, 3) transposed: over output rows r..r+3, the sums
 * sum_q g_q d_(q+di) of dL/da's rows g and the input rows d = r-1..r+4 are (G^T [(A g) . (B^T d)])_di,
 * so the products per transformed row m (3 taps along the columns) are summed over the image in
 * gs (WM x NC x NC x 3 vectors) and G^T applied once at its end (wino_weight_gradient). It runs
 * over bands of WBLK blocks of 4 rows, whose transformed rows stay in cache. */
#define WBLK 2
#define GRADIENT_SUMS (NC * NC * 9 + (WINOGRAD ? WM * NC * NC * 3 : 0)) /* gv, then gs: vectors */
#define GW (NC % 8 == 0 ? 8 : NC % 4 == 0 ? 4 : NC % 2 == 0 ? 2 : 1)

/* ag (WM x NC rows of Wb) = A g for dL/da's rows r..r+3 (ga: NC x H rows of Wb; rows past H - 1 read
 * `zero`, a row of zeros) */
static void wino_grad_rows(real *restrict ag, const real *restrict ga, const real *restrict zero, long H, long W,
                           long Wb, long r) {
    for (int co = 0; co < NC; co++) {
        const real *g[WR];
        real *o[WM];
        for (int q = 0; q < WR; q++) g[q] = r + q < H ? ga + ((long)co * H + r + q) * Wb : zero;
        for (int m = 0; m < WM; m++) o[m] = ag + ((long)m * NC + co) * Wb;
#pragma omp simd
        for (long j = 0; j < W; j++) {
            real s02 = g[0][j] + g[2][j], s13 = g[1][j] + g[3][j];
            real e = g[0][j] + 4 * g[2][j], f = 2 * g[1][j] + 8 * g[3][j];
            o[0][j] = g[0][j], o[1][j] = s02 + s13, o[2][j] = s02 - s13, o[3][j] = e + f, o[4][j] = e - f;
            o[5][j] = g[3][j];
        }
    }
}

/* gs += the products of a band of `blocks` blocks: ag (per block, WM x NC rows of Wb, from
 * wino_grad_rows) times v (per block, WM x NC padded rows of Wb + 2, from wino_rows) at the 3 taps,
 * for GW output channels at a time, their sums in registers over the band. */
static void wino_grad_band(vec *restrict gs, const real *restrict ag, const real *restrict v, long blocks, long Wb) {
    for (int m = 0; m < WM; m++)
        for (int c0 = 0; c0 < NC; c0 += GW)
            for (int ci = 0; ci < NC; ci++) {
                vec a[GW][3];
                for (int k = 0; k < GW; k++) a[k][0] = a[k][1] = a[k][2] = (vec){0};
                for (long b = 0; b < blocks; b++) {
                    const real *x = v + ((b * WM + m) * NC + ci) * (Wb + 2);
                    const real *g = ag + ((b * WM + m) * NC + c0) * Wb;
                    for (long j = 0; j < Wb; j += VL) {
                        vec x0 = load(x + j), x1 = load(x + j + 1), x2 = load(x + j + 2);
                        for (int k = 0; k < GW; k++) {
                            vec gk = load(g + k * Wb + j);
                            a[k][0] += gk * x0;
                            a[k][1] += gk * x1;
                            a[k][2] += gk * x2;
                        }
                    }
                }
                for (int k = 0; k < GW; k++) {
                    vec *acc = gs + ((m * NC + c0 + k) * NC + ci) * 3;
                    acc[0] += a[k][0];
                    acc[1] += a[k][1];
                    acc[2] += a[k][2];
                }
            }
}

/* g_w (NC x NC x 3 x 3) += G^T of the summed products gs */
static void wino_weight_gradient(real *restrict g_w, const vec *restrict gs) {
    for (int co = 0; co < NC; co++)
        for (int ci = 0; ci < NC; ci++)
            for (int dj = 0; dj < 3; dj++) {
                double sum[WM];
                for (int m = 0; m < WM; m++) {
                    sum[m] = 0;
                    for (int l = 0; l < VL; l++) sum[m] += gs[((m * NC + co) * NC + ci) * 3 + dj][l];
                }
                for (int di = 0; di < 3; di++) {
                    double d = 0;
                    for (int m = 0; m < WM; m++) d += wino_g[m][di] * sum[m];
                    g_w[((co * NC + ci) * 3 + di) * 3 + dj] += (real)d;
                }
            }
}

#if HALF_COUPLING
/* The bfloat16 coupling. Its ring holds bfloat16 rows with the channels of each pair
 * (2p, 2p+1) interleaved pixel by pixel, so 32 bfloat16 = 16 pixels x 2 channels make one
 * vector, and one dot-product instruction adds both channels' products for 16 pixels:
 * slot (3) x pair (NC / 2) x padded row (Wb + 2 pixels x 2). */
#define NP (NC / 2)
#define HW 32 /* pixels per bfloat16 vector of the weight gradient (one pair of pixels a lane) */
static long half_width(long W) { return (W + HW - 1) / HW * HW; }

/* wp[((p * 3 + di) * 3 + dj) * NC + co] = (w[co, 2p, di, dj], w[co, 2p+1, di, dj]) in bfloat16 */
static void pack_weight_pairs(unsigned *restrict wp, const float *restrict w) {
    for (int co = 0; co < NC; co++)
        for (int p = 0; p < NP; p++)
            for (int k = 0; k < 9; k++)
                wp[(p * 9 + k) * NC + co] = to_bf16(w[(co * NC + 2 * p) * 9 + k]) |
                                            (unsigned)to_bf16(w[(co * NC + 2 * p + 1) * 9 + k]) << 16;
}

/* Slot `slot` of the pair ring = input row `row` of x (NC x H x rows of `stride` floats),
 * with one wrapped column on each side. */
static void fill_pair_slot(bf16 *ring, const float *x, long H, long W, long Wb, long stride, long row, int slot) {
    /* interleaves the low (even channel) and high (odd channel) halves of a converted vector */
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    row = (row + H) % H;
    for (int p = 0; p < NP; p++) {
        bf16 *dst = ring + ((long)slot * NP + p) * (Wb + 2) * 2;
        const float *a = x + ((long)2 * p * H + row) * stride, *b = a + H * stride;
        long j = 0;
        for (; j + 16 <= W; j += 16) {
            __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(b + j), _mm512_loadu_ps(a + j));
            _mm512_storeu_si512(dst + (j + 1) * 2, _mm512_permutexvar_epi16(order, v));
        }
        for (; j < W; j++) {
            dst[(j + 1) * 2] = to_bf16(a[j]);
            dst[(j + 1) * 2 + 1] = to_bf16(b[j]);
        }
        dst[0] = to_bf16(a[W - 1]), dst[1] = to_bf16(b[W - 1]);
        dst[(W + 1) * 2] = to_bf16(a[0]), dst[(W + 1) * 2 + 1] = to_bf16(b[0]);
    }
}

/* Slot `slot` of plain bfloat16 rows (NC padded rows of Wh + 2 a slot) = row `row` of x, as fill_slot. */
static void fill_half_slot(bf16 *ring, const float *x, long H, long W, long Wh, long stride, long row, int slot) {
    row = (row + H) % H;
    for (int c = 0; c < NC; c++) {
        bf16 *dst = ring + ((long)slot * NC + c) * (Wh + 2);
        const float *src = x + ((long)c * H + row) * stride;
        long j = 0;
        for (; j + 16 <= W; j += 16)
            _mm256_storeu_si256((__m256i *)(dst + j + 1), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + j)));
        for (; j < W; j++) dst[j + 1] = to_bf16(src[j]);
        dst[0] = to_bf16(src[W - 1]);
        dst[W + 1] = to_bf16(src[0]);
    }
}

/* As advance_ring, for the pair ring. */
static void advance_pair_ring(bf16 *ring, const float *x, long H, long W, long Wb, long stride, long r) {
    if (r == 0) {
        fill_pair_slot(ring, x, H, W, Wb, stride, -1, 2);
        fill_pair_slot(ring, x, H, W, Wb, stride, 0, 0);
    }
    fill_pair_slot(ring, x, H, W, Wb, stride, r + 1, (int)((r + 1) % 3));
}

/* conv_row with pair rows and the packed weight pairs: per vector of 16 pixels, NP pairs x 9
 * taps x NC dot products of (2 channels of a pixel) . (their 2 weights), sums in float32. The
 * input rows r-1, r, r+1 are the slots slots[0..2] of `rows` (slot k, pair p: padded row k * NP + p,
 * as in the pair ring). CB output channels of nb (at most NB) vectors at a time: each broadcast
 * weight pair serves nb vectors and each loaded vector CB channels, with the sums in 24 or fewer
 * registers. */
#define CB (NC % 8 == 0 ? 8 : NC % 4 == 0 ? 4 : 2)
#define NB 3
static inline __attribute__((always_inline)) void conv_block_half(float *restrict acc, const bf16 *restrict rows,
                                                                  const unsigned *restrict wp, long Wb,
                                                                  const long slots[3], long j, const int nb) {
    for (int c0 = 0; c0 < NC; c0 += CB) {
        __m512 a[CB][NB];
        for (int co = 0; co < CB; co++)
            for (int b = 0; b < nb; b++) a[co][b] = _mm512_setzero_ps();
        for (int p = 0; p < NP; p++)
            for (int di = 0; di < 3; di++) {
                const bf16 *row = rows + (slots[di] * NP + p) * (Wb + 2) * 2;
                for (int dj = 0; dj < 3; dj++) {
                    __m512bh x[NB];
                    for (int b = 0; b < nb; b++) x[b] = (__m512bh)_mm512_loadu_si512(row + (j + 16 * b + dj) * 2);
                    const unsigned *k = wp + ((p * 3 + di) * 3 + dj) * NC + c0;
#pragma GCC unroll 16
                    for (int co = 0; co < CB; co++) {
                        __m512bh pair = (__m512bh)_mm512_set1_epi32((int)k[co]);
                        for (int b = 0; b < nb; b++) a[co][b] = _mm512_dpbf16_ps(a[co][b], x[b], pair);
                    }
                }
            }
        for (int co = 0; co < CB; co++)
            for (int b = 0; b < nb; b++) _mm512_storeu_ps(acc + (c0 + co) * Wb + j + 16 * b, a[co][b]);
    }
}

static void conv_row_half(float *restrict acc, const bf16 *restrict rows, const unsigned *restrict wp, long Wb,
                          const long slots[3]) {
    long j = 0;
    for (; j + 16 * NB <= Wb; j += 16 * NB) conv_block_half(acc, rows, wp, Wb, slots, j, NB);
    for (; j < Wb; j += 16) conv_block_half(acc, rows, wp, Wb, slots, j, 1);
}

/* gv (NC x NC x 3 x 3 vectors, summed over lanes later) += the weight gradient of one step:
 * gh (NC x H rows of Wh, dL/da in bfloat16) times yh (H slots of NC padded rows of Wh + 2, the
 * input y in bfloat16), each lane summing two neighbouring pixels. The sums of GH output channels
 * stay in registers over the whole image (per-row sums would spend as long adding them up). */
#define GH (NC % 8 == 0 ? 8 : NC % 4 == 0 ? 4 : 2)
static void weight_step_half(vec *restrict gv, const bf16 *restrict gh, const bf16 *restrict yh, long H, long Wh) {
    for (int c0 = 0; c0 < NC; c0 += GH)
        for (int ci = 0; ci < NC; ci++)
            for (int di = 0; di < 3; di++) {
                __m512 s[GH][3];
                for (int k = 0; k < GH; k++) s[k][0] = s[k][1] = s[k][2] = _mm512_setzero_ps();
                for (long r = 0; r < H; r++) {
                    const bf16 *g = gh + ((long)c0 * H + r) * Wh;
                    const bf16 *p = yh + (((r + di - 1 + H) % H) * NC + ci) * (Wh + 2);
                    for (long j = 0; j < Wh; j += HW) {
                        __m512bh x0 = (__m512bh)_mm512_loadu_si512(p + j),
                                 x1 = (__m512bh)_mm512_loadu_si512(p + j + 1),
                                 x2 = (__m512bh)_mm512_loadu_si512(p + j + 2);
                        for (int k = 0; k < GH; k++) {
                            __m512bh gk = (__m512bh)_mm512_loadu_si512(g + k * H * Wh + j);
                            s[k][0] = _mm512_dpbf16_ps(s[k][0], gk, x0);
                            s[k][1] = _mm512_dpbf16_ps(s[k][1], gk, x1);
                            s[k][2] = _mm512_dpbf16_ps(s[k][2], gk, x2);
                        }
                    }
                }
                for (int k = 0; k < GH; k++) {
                    vec *acc = gv + (((c0 + k) * NC + ci) * 3 + di) * 3;
                    acc[0] += (vec)s[k][0];
                    acc[1] += (vec)s[k][1];
                    acc[2] += (vec)s[k][2];
                }
            }
}
#endif

/* Whether this build has the bfloat16 coupling (half_coupling may be 1). */
int nwm_half_coupling(void) { return HALF_COUPLING; }

/* Whether this build runs the float coupling's products as Winograd's F(4, 3). */
int nwm_winograd(void) { return WINOGRAD; }

/* Per-thread scratch: rings of padded rows for y and for dL/da (the direct products), the rows
 * of sums (WR rows of NC channels), dL/da of one step (rows of Wb), the weight gradient's vector
 * sums; with Winograd's products their transformed rows (a block's, and a band's of y and of
 * dL/da for the weight gradient, and a row of zeros for the rows past the last), transformed
 * weights (w, and the adjoint's) and the weight gradient's sums per transformed row; with the
 * bfloat16 coupling also its pair ring, one step's dL/da as pair rows (H slots), y as plain
 * padded rows (H slots) and dL/da in rows of Wh, all bfloat16, and the packed weights (w, and
 * the adjoint's). */
typedef struct {
    long Wb, Wh;
    real *ring, *ring_y, *acc, *ga, *transformed, *u, *uadj, *band_g, *band_y, *zero_row;
    vec *gv, *gs;
    bf16 *ring_h, *gpair, *yh, *gah;
    unsigned *wp, *wadjp;
} scratch;

static int scratch_init(scratch *s, long H, long W, int half) {
    long Wb = block_width(W), ring = 3 * NC * (Wb + 2);
    memset(s, 0, sizeof *s);
    s->Wb = Wb;
    /* a whole number of alignments, as C11 asks */
    s->gv = aligned_alloc(64, (sizeof(vec) * GRADIENT_SUMS + 63) / 64 * 64);
    long winograd = WINOGRAD ? WM * NC * (Wb + 2) + 2 * WM * NC * 3 * NC + WBLK * WM * NC * (2 * Wb + 2) + W : 0;
    s->ring = calloc(2 * ring + WR * NC * Wb + NC * H * Wb + winograd, sizeof(real));
#if HALF_COUPLING
    if (half) {
        long Wh = half_width(W), pair_ring = 3 * NC * (Wb + 2), gpair = H * NC * (Wb + 2), yh = H * NC * (Wh + 2);
        s->Wh = Wh;
        s->ring_h = calloc(pair_ring + gpair + yh + NC * H * Wh, sizeof(bf16));
        s->wp = malloc(sizeof(unsigned) * NC * NC * 9);
        if (s->ring_h && s->wp) {
            s->gpair = s->ring_h + pair_ring;
            s->yh = s->gpair + gpair;
            s->gah = s->yh + yh;
            s->wadjp = s->wp + NC * NC * 9 / 2;
        }
    }
#endif
    if (!s->gv || !s->ring || (half && (!HALF_COUPLING || !s->ring_h || !s->wp))) {
        free(s->gv);
        free(s->ring);
        free(s->ring_h);
        free(s->wp);
        return -1;
    }
    s->ring_y = s->ring + ring;
    s->acc = s->ring_y + ring;
    s->ga = s->acc + WR * NC * Wb;
    if (WINOGRAD) {
        s->transformed = s->ga + NC * H * Wb;
        s->u = s->transformed + WM * NC * (Wb + 2);
        s->uadj = s->u + WM * NC * 3 * NC;
        s->band_y = s->uadj + WM * NC * 3 * NC;
        s->band_g = s->band_y + WBLK * WM * NC * (Wb + 2);
        s->zero_row = s->band_g + WBLK * WM * NC * Wb;
        s->gs = s->gv + NC * NC * 9;
    }
    return 0;
}

static void scratch_free(scratch *s) {
    free(s->gv);
    free(s->ring);
    free(s->ring_h);
    free(s->wp);
}

/* How a product with a coupling weight runs: as packed bfloat16 pairs (wp, the bfloat16
 * coupling), with Winograd's transformed weights (u), or plainly with the weight (w). */
typedef struct {
    const real *w, *u;
    const unsigned *wp;
} coupling;

/* The weight w (the forward's, or if adjoint the adjoint's) prepared for its products: in
 * bfloat16 pairs where half asks for the bfloat16 coupling, else for Winograd's where it applies. */
static coupling prepare_coupling(scratch *s, const real *w, int adjoint, int half) {
    coupling k = {w, NULL, NULL};
#if HALF_COUPLING
    if (half) {
        unsigned *wp = adjoint ? s->wadjp : s->wp;
        pack_weight_pairs(wp, w);
        k.wp = wp;
        return k;
    }
#endif
    (void)half;
    if (WINOGRAD) {
        real *u = adjoint ? s->uadj : s->u;
        winograd_weights(u, w);
        k.u = u;
    }
    return k;
}

/* The output rows that one couple_rows gives. */
static long block_rows(coupling k) { return k.u ? WR : 1; }

/* s->acc (block_rows(k) rows from r, each NC rows of Wb) = the coupling k at those output rows
 * of x (NC x H rows of `stride`); rows past H - 1 come from wrapped rows, for the caller to
 * ignore. Called for r = 0, block_rows(k), ... in order (the rings assume it). */
static void couple_rows(scratch *s, const real *x, long H, long W, long stride, coupling k, long r) {
#if HALF_COUPLING
    if (k.wp) {
        const long slots[3] = {(r + 2) % 3, r % 3, (r + 1) % 3};
        advance_pair_ring(s->ring_h, x, H, W, s->Wb, stride, r);
        conv_row_half(s->acc, s->ring_h, k.wp, s->Wb, slots);
        return;
    }
#endif
    if (WINOGRAD && k.u) {  /* WINOGRAD: the compiler drops the branch where it is 0 */
        wino_rows(s->transformed, x, H, W, s->Wb, stride, r);
        for (long j = 0; j < s->Wb; j += VL) wino_block(s->acc, s->transformed, k.u, s->Wb, j);
        return;
    }
    advance_ring(s->ring, NC, x, H, W, s->Wb, stride, r);
    conv_row(s->acc, s->ring, k.w, s->Wb, r);
}

/* One step of one image: y_out = y + dt z_out, z_out = damping z - dt_omega y + dt tanh(W * y);
 * tanh(W * y) goes to th if th is not NULL, y_out also to `copy`. z_out may be z; y_out may not be y. */
static void step(const real *y, const real *z, real *y_out, real *z_out, real *th, frame copy, const real *dto,
                 const real *damp, coupling k, real dt, long H, long W, scratch *s) {
    long rows = block_rows(k);
    for (long r = 0; r < H; r += rows) {
        couple_rows(s, y, H, W, W, k, r);
        for (long q = 0; q < rows && r + q < H; q++)
            for (int c = 0; c < NC; c++) {
                long o = ((long)c * H + r + q) * W;
                const real *a = s->acc + (q * NC + c) * s->Wb;
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

/* The adjoint step's pass over the W pixels at offset o of one image (a row of a channel):
 * given gy, gz after step t, y, z before it and t its tanh, moves gy (without the coupling's
 * W^T * dL/da) and gz before the step, accumulates the gradients of dt_omega (g_om) and
 * damping (g_dm), and writes dL/da to ga (and in bfloat16 to gah, if not NULL). gf or gh:
 * the gradient of the frame y_t (float or bfloat16). */
static inline __attribute__((always_inline)) void adjoint_pixels_as(
    const int half_frames, const int half_ga, long o, long W, real dt, real *restrict gy, real *restrict gz,
    const real *restrict gf, const bf16 *restrict gh, const real *restrict y, const real *restrict z,
    const real *restrict t, const real *restrict om, const real *restrict dm, real *restrict g_om,
    real *restrict g_dm, real *restrict ga, bf16 *restrict gah) {
#pragma omp simd
    for (long j = 0; j < W; j++) {
        long p = o + j;
        real gyp = gy[p] + (half_frames ? (real)from_bf16(gh[p]) : gf[p]);
        real gzp = gz[p] + dt * gyp;  /* the total dL/dz_t */
        g_dm[p] += gzp * z[p];
        g_om[p] -= gzp * y[p];
        ga[j] = dt * (gzp - gzp * t[p] * t[p]);
        if (half_ga) gah[j] = to_bf16((float)ga[j]);
        gy[p] = gyp - om[p] * gzp;
        gz[p] = gzp * dm[p];
    }
}

/* adjoint_pixels_as with the choices as constants: the compiler would otherwise vectorise the
 * unused pointer's loads and stores as masked ones, which at a NULL pointer cost a microcode
 * assist each (half the adjoint's time on an AMD Zen 4). */
static void adjoint_pixels(long o, long W, real dt, real *gy, real *gz, const real *gf, const bf16 *gh,
                           const real *y, const real *z, const real *t, const real *om, const real *dm, real *g_om,
                           real *g_dm, real *ga, bf16 *gah) {
    if (gh && gah) adjoint_pixels_as(1, 1, o, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm, ga, gah);
    else if (gh) adjoint_pixels_as(1, 0, o, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm, ga, gah);
    else if (gah) adjoint_pixels_as(0, 1, o, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm, ga, gah);
    else adjoint_pixels_as(0, 0, o, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm, ga, gah);
}

#if HALF_COUPLING
/* The pixel pass of row q of every channel for adjoint_step_half: dL/da to s->gah and, as
 * pair rows, to slot q of s->gpair. */
static void adjoint_row_half(scratch *s, long q, long H, long W, real dt, real *gy, real *gz, const real *gf,
                             const bf16 *gh, const real *y, const real *z, const real *t, const real *om,
                             const real *dm, real *g_om, real *g_dm) {
    for (int c = 0; c < NC; c++)
        adjoint_pixels(((long)c * H + q) * W, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm,
                       s->ga + c * s->Wb, s->gah + ((long)c * H + q) * s->Wh);
    fill_pair_slot(s->gpair, s->ga, 1, W, s->Wb, s->Wb, 0, (int)q);
}

/* One adjoint step of one image (the arguments as adjoint_pixels', for whole images) with the
 * bfloat16 coupling, row by row so that dL/da is still in cache when the adjoint product
 * reads it: the pixel pass of row r + 1, then the product W^T * dL/da at row r added to gy.
 * The weight gradient then runs over the whole image (weight_step_half). */
static void adjoint_step_half(scratch *s, long H, long W, real dt, real *gy, real *gz, const real *gf,
                              const bf16 *gh, const real *y, const real *z, const real *t, const real *om,
                              const real *dm, real *g_om, real *g_dm) {
    for (long q = 0; q < H; q++) fill_half_slot(s->yh, y, H, W, s->Wh, W, q, (int)q);
    /* rows 0 and H - 1 first: the product at row 0 reads both */
    adjoint_row_half(s, 0, H, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm);
    if (H > 1) adjoint_row_half(s, H - 1, H, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm);
    for (long r = 0; r < H; r++) {
        if (r + 1 < H - 1) adjoint_row_half(s, r + 1, H, W, dt, gy, gz, gf, gh, y, z, t, om, dm, g_om, g_dm);
        const long slots[3] = {(r - 1 + H) % H, r, (r + 1) % H};
        conv_row_half(s->acc, s->gpair, s->wadjp, s->Wb, slots);
        for (int c = 0; c < NC; c++)
#pragma omp simd
            for (long j = 0; j < W; j++) gy[((long)c * H + r) * W + j] += s->acc[c * s->Wb + j];
    }
    weight_step_half(s->gv, s->gah, s->yh, H, s->Wh);
}
#endif

/* n steps of images b0..b1-1 from (y0, z) (B x NC x H x W; z is updated in place):
 * frames (float, or bfloat16 if bf16_frames): y after step t+1 of image b, at t * frame_t +
 * b * frame_b (n x B x NC x H x W: frame_t = B * NC * H * W, frame_b = NC * H * W; B x n x ...:
 * frame_t = NC * H * W, frame_b = n * NC * H * W).
 * ck (B x (segments - 1) x 2 x NC x H x W, or NULL) receives (y, z) after steps K, 2K, ...
 * before the last step: the starts of nwm_backward's segments of K steps after the first.
 * half_coupling: the coupling in bfloat16 (only where nwm_half_coupling() says this build has it).
 * Returns 0, or -1 without memory (or without the bfloat16 coupling asked for). */
int nwm_forward(long b0, long b1, long B, long H, long W, long n, long K, const real *y0, real *z,
                const real *dto, const real *damp, const real *w, double dt, void *frames, long frame_t,
                long frame_b, int bf16_frames, real *ck, int half_coupling) {
    long S = NC * H * W, segments = (n + K - 1) / K;
    scratch s;
    real *ys = malloc(sizeof(real) * 2 * S);  /* y before and after a step */
    if (!ys || scratch_init(&s, H, W, half_coupling)) {
        free(ys);
        return -1;
    }
    coupling k = prepare_coupling(&s, w, 0, half_coupling);
    for (long b = b0; b < b1; b++) {
        const real *y = y0 + b * S;
        for (long t = 0; t < n; t++) {
            real *out = ys + (t % 2) * S;
            step(y, z + b * S, out, z + b * S, NULL, frame_at(frames, bf16_frames, t * frame_t + b * frame_b),
                 dto + b * S, damp + b * S, k, (real)dt, H, W, &s);
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
 * (float or, if half, bfloat16, laid out as nwm_forward's frames) are the gradients of the
 * frames; g_dto, g_damp (B x ...) and g_w (B x NC x NC x 3 x 3, per image) accumulate. frames
 * (laid out as g_frames, or NULL) receives y_1..y_n, for the gradient of the time basis. wadj:
 * the adjoint kernel (flipped, in and out channels swapped). half_coupling: as in nwm_forward,
 * for the recomputed steps and both adjoint products. Returns 0, or -1 as nwm_forward. */
int nwm_backward(long b0, long b1, long B, long H, long W, long n, long K, const real *y_start,
                 const real *z_start, const real *ck, const real *dto, const real *damp, const real *w,
                 const real *wadj, double dt_, const void *g_frames, real *gy, real *gz,
                 real *g_dto, real *g_damp, real *g_w, void *frames, long frame_t, long frame_b, int half,
                 int half_coupling) {
    long S = NC * H * W, Wb = block_width(W);
    long segments = (n + K - 1) / K;
    real dt = (real)dt_;
    scratch s;
    /* y and z before each step of a segment and after its last, tanh of each step */
    real *history = malloc(sizeof(real) * (3 * K + 2) * S);
    if (!history || scratch_init(&s, H, W, half_coupling)) {
        free(history);
        return -1;
    }
    coupling k = prepare_coupling(&s, w, 0, half_coupling), kadj = prepare_coupling(&s, wadj, 1, half_coupling);
    real *ys = history, *zs = ys + (K + 1) * S, *th = zs + (K + 1) * S;
    for (long b = b0; b < b1; b++) {
        const real *om = dto + b * S, *dm = damp + b * S;
        real *gyb = gy + b * S, *gzb = gz + b * S, *gob = g_dto + b * S, *gdb = g_damp + b * S;
        memset(s.gv, 0, sizeof(vec) * GRADIENT_SUMS);
        for (long g = segments - 1; g >= 0; g--) {
            long t0 = g * K, steps = n - t0 < K ? n - t0 : K;
            const real *yc = g ? ck + (b * (segments - 1) + g - 1) * 2 * S : y_start + b * S;
            memcpy(ys, yc, S * sizeof(real));
            memcpy(zs, g ? yc + S : z_start + b * S, S * sizeof(real));
            for (long i = 0; i < steps; i++)
                step(ys + i * S, zs + i * S, ys + (i + 1) * S, zs + (i + 1) * S, th + i * S,
                     frame_at(frames, half, (t0 + i) * frame_t + b * frame_b), om, dm, k, dt, H, W, &s);
            for (long i = steps - 1; i >= 0; i--) {
                const real *yi = ys + i * S, *zi = zs + i * S, *t = th + i * S;
                const real *gf = half ? NULL : (const real *)g_frames + (t0 + i) * frame_t + b * frame_b;
                const bf16 *gh = half ? (const bf16 *)g_frames + (t0 + i) * frame_t + b * frame_b : NULL;
#if HALF_COUPLING
                if (k.wp) {
                    adjoint_step_half(&s, H, W, dt, gyb, gzb, gf, gh, yi, zi, t, om, dm, gob, gdb);
                    continue;
                }
#endif
                for (long row = 0; row < NC * H; row++)
                    adjoint_pixels(row * W, W, dt, gyb, gzb, gf, gh, yi, zi, t, om, dm, gob, gdb, s.ga + row * Wb,
                                   NULL);
                long rows = block_rows(kadj);
                for (long r = 0; r < H; r += rows) {
                    couple_rows(&s, s.ga, H, W, Wb, kadj, r);
                    for (long q = 0; q < rows && r + q < H; q++)
                        for (long c = 0; c < NC; c++)
#pragma omp simd
                            for (long j = 0; j < W; j++) gyb[(c * H + r + q) * W + j] += s.acc[(q * NC + c) * Wb + j];
                    if (!kadj.u) {
                        advance_ring(s.ring_y, NC, yi, H, W, Wb, W, r);
                        weight_row(s.gv, s.ga, H, s.ring_y, Wb, r);
                    }
                }
                if (WINOGRAD && kadj.u)
                    for (long r = 0; r < H; r += WBLK * WR) {
                        long blocks = 0;
                        for (; blocks < WBLK && r + blocks * WR < H; blocks++) {
                            wino_rows(s.band_y + blocks * WM * NC * (Wb + 2), yi, H, W, Wb, W, r + blocks * WR);
                            wino_grad_rows(s.band_g + blocks * WM * NC * Wb, s.ga, s.zero_row, H, W, Wb,
                                           r + blocks * WR);
                        }
                        wino_grad_band(s.gs, s.band_g, s.band_y, blocks, Wb);
                    }
            }
        }
        real *gwb = g_w + b * NC * NC * 9;
        for (int i = 0; i < NC * NC * 9; i++)
            for (int l = 0; l < VL; l++) gwb[i] += s.gv[i][l];
        if (WINOGRAD && kadj.u) wino_weight_gradient(gwb, s.gs);
    }
    scratch_free(&s);
    free(history);
    return 0;
}
