/* tests/unit/test_sliding_window.c — sliding-window attention (issue 11).
 *
 * 1. The op (kattn_args.window) against a double-precision reference on the CPU backend:
 *    several sequences in one batch (prefill from 0, a chunk after earlier slots, decode
 *    rows, kv_start), windows 1, 3, 5 and one longer than every context, on both CPU paths
 *    (row tasks for short contexts, (row, KV head) tasks past ATTN_ROW_MAX_SLOTS). Cache slots
 *    that no query of a sequence may read (below its first query's window) are NaN, so a read
 *    outside the window poisons the output.
 * 2. Models from transformers 4.57 (tests/fixtures/make_window_fixtures.py ->
 *    tests/fixtures/window/reference.json): MistralForCausalLM, window 8 on every layer, and
 *    Qwen2ForCausalLM with use_sliding_window, max_window_layers 1 of 2 (layer 1 slides), on a
 *    24-token prompt (3x the window), prefilled at once and as a 3-token prefill then 21 decode
 *    steps. Tolerance 1e-4 as test_qwen2.c: f32 math on the same weights, only the summation
 *    order differs (~1e-6); attending one slot too many or too few moves logits by > 0.4
 *    (measured on the Mistral fixture at position 8, the first row the window cuts).
 */
#include <cJSON.h>
#include <math.h>

#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/logit_ref.h"
#include "tests/harness/test.h"

#define TOL 1e-4

/* ---- the op ---- */

typedef struct {
    int n_q, kv_len, kv_start;
} wseq;

static int first_slot(const wseq *s, int p, int W) {
    int lo = W > 0 ? p - W + 1 : 0;
    return lo > s->kv_start ? lo : s->kv_start;
}

static void check_op(const wseq *seqs, int n_seqs, int W, int threads) {
    const int KVH = 2, group = 2, H = KVH * group, hd = 20, kv_dim = KVH * hd, qdim = H * hd, bs = 4;
    kbackend *kb = kbackend_cpu_create(threads);
    ASSERT(kb);
    int32_t q_start[8] = {0}, kv_len[8], kv_start[8];
    int max_blocks = 0;
    for (int s = 0; s < n_seqs; s++) {
        q_start[s + 1] = q_start[s] + seqs[s].n_q;
        kv_len[s] = seqs[s].kv_len;
        kv_start[s] = seqs[s].kv_start;
        if ((seqs[s].kv_len + bs - 1) / bs > max_blocks) max_blocks = (seqs[s].kv_len + bs - 1) / bs;
    }
    int T = q_start[n_seqs], n_blocks = n_seqs * max_blocks;
    int32_t *btab = malloc(sizeof(int32_t) * (size_t)n_blocks);
    for (int i = 0; i < n_blocks; i++) btab[i] = n_blocks - 1 - i; /* reversed: not contiguous */
    int64_t cache_n = (int64_t)n_blocks * bs * kv_dim;
    float *kc = malloc(sizeof(float) * cache_n), *vc = malloc(sizeof(float) * cache_n);
    test_fill(kc, cache_n);
    test_fill(vc, cache_n);
    for (int s = 0; s < n_seqs; s++) /* NaN below the first query's window */
        for (int i = 0; i < first_slot(&seqs[s], seqs[s].kv_len - seqs[s].n_q, W); i++)
            for (int c = 0; c < kv_dim; c++) {
                int64_t at = ((int64_t)btab[s * max_blocks + i / bs] * bs + i % bs) * kv_dim + c;
                kc[at] = vc[at] = NAN;
            }
    float *q = malloc(sizeof(float) * (size_t)T * qdim), *out = malloc(sizeof(float) * (size_t)T * qdim);
    test_fill(q, (int64_t)T * qdim);
    float scale = 1.0f / sqrtf((float)hd);
    kattn_args a = {.n_seqs = n_seqs, .q_start = q_start, .kv_len = kv_len, .block_table = btab,
                    .max_blocks = max_blocks, .block_size = bs, .n_heads = H, .n_kv_heads = KVH, .head_dim = hd,
                    .scale = scale, .q = q, .k_cache = kc, .v_cache = vc, .out = out, .kv_start = kv_start,
                    .window = W};
    ASSERT_EQ(kb->ops->attention(kb, &a), 0);
    double md = 0, w[1024];
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < seqs[s].n_q; j++) {
            int t = q_start[s] + j, p = seqs[s].kv_len - seqs[s].n_q + j, j0 = first_slot(&seqs[s], p, W);
            for (int h = 0; h < H; h++) {
                double mx = -INFINITY, sum = 0;
                for (int i = j0; i <= p; i++) {
                    int64_t row = ((int64_t)btab[s * max_blocks + i / bs] * bs + i % bs) * kv_dim;
                    const float *k = kc + row + h / group * hd;
                    double d = 0;
                    for (int c = 0; c < hd; c++) d += (double)q[(int64_t)t * qdim + h * hd + c] * k[c];
                    w[i] = d * scale;
                    if (w[i] > mx) mx = w[i];
                }
                for (int i = j0; i <= p; i++) sum += (w[i] = exp(w[i] - mx));
                for (int c = 0; c < hd; c++) {
                    double o = 0;
                    for (int i = j0; i <= p; i++) {
                        int64_t row = ((int64_t)btab[s * max_blocks + i / bs] * bs + i % bs) * kv_dim;
                        o += w[i] * vc[row + h / group * hd + c];
                    }
                    double d = fabs(out[(int64_t)t * qdim + h * hd + c] - o / sum);
                    if (!(d <= md)) md = d;
                }
            }
        }
    /* f32 dots of 20 terms and softmax over <= 700 slots of values in [-1, 1]: ~1e-6 */
    if (!(md <= 1e-5)) FAIL("window %d, %d threads: max |diff| %.3g", W, threads, md);
    free(btab);
    free(kc);
    free(vc);
    free(q);
    free(out);
    kbackend_destroy(kb);
}

/* prefill from 0 (rows on both sides of the window edge), a chunk after earlier slots,
 * decode rows (one at the edge W, one far past it), a chunk after a kv_start pad */
static const wseq SHORT[] = {{9, 9, 0}, {4, 12, 0}, {1, 5, 0}, {1, 30, 0}, {3, 14, 2}};
/* a context past ATTN_ROW_MAX_SLOTS (512): (row, KV head) tasks */
static const wseq LONG[] = {{6, 6, 0}, {1, 700, 0}, {5, 600, 3}};

TEST(window_op_rows) {
    for (int W = 0; W <= 5; W += 1) check_op(SHORT, 5, W == 4 ? 100 : W, 1);
}
TEST(window_op_heads) {
    int ws[] = {0, 1, 3, 8, 1000};
    for (int i = 0; i < 5; i++) check_op(LONG, 3, ws[i], 4);
}
TEST(window_op_rejects_negative) {
    kbackend *kb = kbackend_cpu_create(1);
    int32_t qs[2] = {0, 1}, kl[1] = {1}, bt[1] = {0};
    float kc[8] = {0}, vc[8] = {0}, q[8] = {0}, out[8];
    kattn_args a = {.n_seqs = 1, .q_start = qs, .kv_len = kl, .block_table = bt, .max_blocks = 1, .block_size = 1,
                    .n_heads = 1, .n_kv_heads = 1, .head_dim = 8, .scale = 1, .q = q, .k_cache = kc, .v_cache = vc,
                    .out = out, .window = -1};
    ASSERT_EQ(kb->ops->attention(kb, &a), PEFTD_EINVAL);
    kbackend_destroy(kb);
}

/* ---- the models ---- */

static void has_windows(const model *m, void *ud) {
    const bool *layer_window = ud;
    ASSERT_EQ(m->cfg.sliding_window, 8);
    for (int l = 0; l < 2; l++) ASSERT_EQ(m->cfg.layer_window[l], layer_window[l]);
}

/* Every position's logits: a prefill of n_pre tokens, then decode steps. */
static void check_model(const char *name, int n_pre, const bool *layer_window) {
    logit_case q;
    logit_case_load("tests/fixtures/window/reference.json", name, &q);
    logit_case_check(&q, name, n_pre, TOL, has_windows, (void *)layer_window);
    logit_case_free(&q);
}

static const bool ALL[2] = {true, true}, LAST[2] = {false, true};
TEST(window_mistral_prefill) { check_model("mistral", 24, ALL); }
TEST(window_mistral_decode) { check_model("mistral", 3, ALL); }
TEST(window_qwen2_prefill) { check_model("qwen2", 24, LAST); }
TEST(window_qwen2_decode) { check_model("qwen2", 3, LAST); }

TEST_MAIN(window_op_rows, window_op_heads, window_op_rejects_negative, window_mistral_prefill, window_mistral_decode,
          window_qwen2_prefill, window_qwen2_decode)
