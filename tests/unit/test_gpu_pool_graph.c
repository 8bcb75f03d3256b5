/* tests/unit/test_gpu_pool_graph.c — on a CUDA device (tests/gpu/run.sh): the adapter slot
 * pool over the real device ops (kernels/cuda/slot_pool_cuda.cu) and decode-graph capture /
 * replay (kernels/cuda/decode_graph_cuda.cu).
 *   pool: 40 distinct 1 MiB "adapters" stream through 4 slots (2 pinned staging buffers,
 *     uploads on the copy stream); after each load a step's copy on the compute stream reads
 *     the slot right after slot_pool_use (its event wait) and must see every byte of that
 *     version (an ordering bug shows as stale or partial bytes); pinned slots survive.
 *   adapters: every fixture adapter of stories260K installed twice, with its own allocation
 *     (model_load_adapter) and placed into a CUDA slot pool (adapter_install_placed, as the
 *     daemon's tiers do); one mixed batch of both sets: 16 greedy tokens equal pairwise; the
 *     engine's KV cache sized by the device memory plan (kv_cache_mb 0, cudaMemGetInfo).
 *   graph: rmsnorm -> matmul -> add on fixed buffers, captured once after an eager warm-up,
 *     replayed with new inputs uploaded into the same buffers: bit-identical to eager runs.
 * Without a CUDA device (or in a build without the CUDA backend) each test reports
 * SKIP("no CUDA device"): skipped, never passed. The host logic of both is tested on the
 * CPU in test_slot_pool.c and test_decode_graph.c. */
#include <stdlib.h>
#include <string.h>

#include "kernels/decode_graph.h"
#include "kernels/kernels.h"
#include "kernels/slot_pool.h"
#include "adapter_store/adapter.h"
#include "lib/status.h"
#include "server/engine/engine.h"
#include "server/model/model.h"
#include "server/model/model_adapter_base.h"
#include "server/text/tokenizer.h"
#include "tests/harness/slot_placer.h"
#include "tests/harness/test.h"
#ifdef PEFTD_CUDA
#include "kernels/kernels_cuda.h"
#endif

static kbackend *open_cuda(void) {
#ifndef PEFTD_CUDA
    SKIP("no CUDA device (this build has no CUDA backend)");
#else
    if (!kbackend_cuda_available()) SKIP("no CUDA device");
    char err[512] = "";
    kbackend *kb = kbackend_cuda_create(0, err, sizeof err);
    if (!kb) FAIL("kbackend_cuda_create: %s", err);
    return kb;
#endif
}

TEST(pool_streams_versions_through_few_slots) {
    kbackend *kb = open_cuda();
    (void)kb;
#ifdef PEFTD_CUDA
    const size_t SZ = 1u << 20;
    const slot_dev_ops *ops = NULL;
    void *ctx = NULL;
    ASSERT_EQ(kbackend_cuda_slot_dev(kb, 4 + 2, &ops, &ctx), 0);
    slot_pool *p = NULL;
    char err[256];
    ASSERT_EQ(slot_pool_create(ops, ctx, SZ, 4, 2, &p, err, sizeof err), 0);
    unsigned char *src = malloc(SZ), *got = malloc(SZ);
    void *dst = kb->ops->alloc(kb, SZ);
    ASSERT(src && got && dst);
    int pinned = -1;
    for (int v = 0; v < 40; v++) {
        char key[32];
        snprintf(key, sizeof key, "version-%d", v);
        for (size_t i = 0; i < SZ; i++) src[i] = (unsigned char)(i * 31 + (size_t)v * 7 + (i >> 12));
        int s = -1, rc;
        while ((rc = slot_pool_load(p, key, src, SZ, &s, err, sizeof err)) == PEFTD_EBUSY)
            ASSERT(slot_pool_poll(p) >= 0); /* both staging buffers in flight: poll until one is free */
        if (rc) FAIL("load %s: %d %s", key, rc, err);
        if (v == 3) {
            ASSERT_EQ(slot_pool_pin(p, s), 0);
            pinned = s;
        }
        void *d = slot_pool_use(p, s);
        ASSERT(d);
        ASSERT_EQ(kb->ops->copy(kb, dst, d, SZ), 0); /* a "step" reading the slot */
        ASSERT_EQ(kb->ops->download(kb, got, dst, SZ), 0);
        if (memcmp(got, src, SZ)) FAIL("version %d: the step read bytes other than the upload's", v);
    }
    /* the pinned version 3 was never evicted nor overwritten */
    for (size_t i = 0; i < SZ; i++) src[i] = (unsigned char)(i * 31 + 3 * 7 + (i >> 12));
    ASSERT_EQ(kb->ops->copy(kb, dst, slot_pool_use(p, pinned), SZ), 0);
    ASSERT_EQ(kb->ops->download(kb, got, dst, SZ), 0);
    ASSERT(!memcmp(got, src, SZ));
    slot_pool_stats st;
    slot_pool_get_stats(p, &st);
    ASSERT_EQ(st.loads, 40);
    ASSERT_EQ(st.evictions, 40 - 4);
    ASSERT_EQ(kb->ops->synchronize(kb), 0);
    kb->ops->free(kb, dst);
    slot_pool_free(p);
    kbackend_cuda_slot_dev_free(ctx);
    free(src);
    free(got);
    kbackend_destroy(kb);
#endif
}

#ifdef PEFTD_CUDA
enum { N = 8, D = 256, O = 512 };
typedef struct {
    float *x, *xn, *y, *r;
    kmat nw, w;
} gbufs;
static void step_ops(kbackend *kb, gbufs *b) {
    ASSERT_EQ(kb->ops->rmsnorm(kb, b->x, &b->nw, N, D, 1e-5f, b->xn), 0);
    ASSERT_EQ(kb->ops->matmul(kb, b->xn, N, &b->w, b->y, 0), 0);
    ASSERT_EQ(kb->ops->add(kb, b->y, b->r, (int64_t)N * O), 0);
}
static void fill(float *h, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) h[i] = (float)((i * 2654435761u + seed * 40503u) % 2001) / 1000.0f - 1.0f;
}
#endif

TEST(graph_replay_matches_eager_steps) {
    kbackend *kb = open_cuda();
    (void)kb;
#ifdef PEFTD_CUDA
    gbufs b;
    float *h = malloc(sizeof(float) * O * D), *ye = malloc(sizeof(float) * N * O), *yg = malloc(sizeof(float) * N * O);
    ASSERT(h && ye && yg);
    b.x = kb->ops->alloc(kb, sizeof(float) * N * D), b.xn = kb->ops->alloc(kb, sizeof(float) * N * D);
    b.y = kb->ops->alloc(kb, sizeof(float) * N * O), b.r = kb->ops->alloc(kb, sizeof(float) * N * O);
    void *nw = kb->ops->alloc(kb, sizeof(float) * D), *w = kb->ops->alloc(kb, sizeof(float) * O * D);
    fill(h, D, 1);
    ASSERT_EQ(kb->ops->upload(kb, nw, h, sizeof(float) * D), 0);
    fill(h, (size_t)O * D, 2);
    ASSERT_EQ(kb->ops->upload(kb, w, h, sizeof(float) * O * D), 0);
    b.nw = (kmat){nw, KDT_F32, 1, D};
    b.w = (kmat){w, KDT_F32, O, D};
    decode_graphs g;
    ASSERT_EQ(decode_graphs_init(&g, 64, true), 0);
    decode_graph_key key = {1, 1, 1};
    void *exec = NULL;
    for (unsigned step = 0; step < 6; step++) {
        /* inputs into the fixed buffers, outside any capture */
        fill(h, (size_t)N * D, 10 + step);
        ASSERT_EQ(kb->ops->upload(kb, b.x, h, sizeof(float) * N * D), 0);
        fill(h, (size_t)N * O, 20 + step);
        ASSERT_EQ(kb->ops->upload(kb, b.r, h, sizeof(float) * N * O), 0);
        ASSERT_EQ(kb->ops->synchronize(kb), 0);
        int bucket = 0;
        bool inv = false;
        decode_action act = decode_graphs_plan(&g, N, &key, &bucket, &inv);
        ASSERT_EQ(bucket, N);
        if (act == DECODE_CAPTURE) {
            ASSERT_EQ(kbackend_cuda_graph_begin(kb), 0);
            step_ops(kb, &b);
            int rc = kbackend_cuda_graph_end(kb, &exec);
            decode_graphs_captured(&g, N, rc == 0);
            ASSERT_EQ(rc, 0);
            act = DECODE_REPLAY;
        }
        if (act == DECODE_REPLAY) ASSERT_EQ(kbackend_cuda_graph_launch(kb, exec), 0);
        else step_ops(kb, &b);
        ASSERT_EQ(kb->ops->download(kb, yg, b.y, sizeof(float) * N * O), 0);
        /* the eager reference on the same inputs (r is re-uploaded: add wrote y only) */
        step_ops(kb, &b);
        ASSERT_EQ(kb->ops->download(kb, ye, b.y, sizeof(float) * N * O), 0);
        if (memcmp(ye, yg, sizeof(float) * N * O)) FAIL("step %u (%s): replay differs from eager", step,
                                                          act == DECODE_REPLAY ? "replay" : "eager");
    }
    ASSERT_EQ(g.captures, 1);
    ASSERT_EQ(g.replays, 4);
    kbackend_cuda_graph_destroy(exec);
    void *ptrs[] = {b.x, b.xn, b.y, b.r, nw, w};
    for (int i = 0; i < 6; i++) kb->ops->free(kb, ptrs[i]);
    free(h), free(ye), free(yg);
    kbackend_destroy(kb);
#endif
}

#ifdef PEFTD_CUDA
static const char *const FIX[] = {"lora_r1_all", "lora_r8_all", "lora_r64_all", "lora_rslora", "lora_dora",
                                  "lora_patterns", "lora_layers", "lora_lm_head", "lora_bf16", "ia3",
                                  "prompt_tuning", "prefix_tuning", "pfeiffer", "houlsby"};
#define NF (int)(sizeof FIX / sizeof FIX[0])
#define NG 16
#endif

TEST(pool_placed_adapters_decode_like_allocated_ones) {
    kbackend *kb = open_cuda();
    (void)kb;
#ifdef PEFTD_CUDA
    char err[1024] = "";
    model *m = NULL;
    tokenizer *tok = NULL;
    if (model_load("models/stories260K", kb, &m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load("models/stories260K", &tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    adapter_base base;
    ASSERT_EQ(model_adapter_base(m, &base), 0);
    int in[AMOD_COUNT], out[AMOD_COUNT];
    for (int i = 0; i < AMOD_COUNT; i++) adapter_module_shape(&base, (adapter_module)i, &out[i], &in[i]);
    const slot_dev_ops *ops = NULL;
    void *ctx = NULL;
    slot_pool *pool = NULL;
    ASSERT_EQ(kbackend_cuda_slot_dev(kb, NF + 2, &ops, &ctx), 0);
    /* rank 64 all-linear f32 (lora_r64_all), doubled for the embedding/head adapters */
    size_t sb = 2 * slot_pool_slot_bytes(base.n_layers, AMOD_COUNT, in, out, 64, 4);
    ASSERT_EQ(slot_pool_create(ops, ctx, sb, NF, 2, &pool, err, sizeof err), 0);
    adapter *own[NF], *placed[NF];
    static slot_placer_ud uds[NF];
    for (int i = 0; i < NF; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/fixtures/adapters/%s", FIX[i]);
        if (model_load_adapter(m, dir, &own[i], err, sizeof err) < 0) FAIL("%s: %s", FIX[i], err);
        if (adapter_load_dir(dir, &base, &placed[i], err, sizeof err) < 0) FAIL("%s: %s", FIX[i], err);
        uds[i] = (slot_placer_ud){pool, FIX[i], -1};
        adapter_placer pl = slot_placer(&uds[i]);
        int rc = adapter_install_placed(placed[i], kb, &pl, err, sizeof err);
        if (rc < 0) FAIL("%s: placed install: %d %s", FIX[i], rc, err);
        if (uds[i].slot >= 0) ASSERT(slot_pool_use(pool, uds[i].slot)); /* as tiers_pin does */
    }
    engine_config ec;
    engine_config_default(&ec);
    ec.max_seqs = 2 * NF;
    ec.max_batch_tokens = 128;
    ec.kv_cache_mb = 0; /* the KV cache from the device memory plan (engine_device_plan.c) */
    engine *e = NULL;
    if (engine_create(&ec, m, kb, tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(e), 0);
    engine_request *q[2 * NF];
    for (int i = 0; i < 2 * NF; i++) {
        int32_t *ids;
        size_t n;
        ASSERT_EQ(tokenizer_encode(tok, "Once upon a time", 16, true, &ids, &n), 0);
        gen_params p;
        gen_params_default(&p);
        p.max_tokens = NG;
        p.temperature = 0;
        p.logprobs = 0;
        p.ignore_eos = true;
        p.adapter = i < NF ? own[i] : placed[i - NF];
        ASSERT((q[i] = engine_request_create(ids, (int)n, &p)));
        free(ids);
        ASSERT_EQ(engine_submit(e, q[i]), 0);
    }
    static int32_t toks[2 * NF][NG];
    for (int i = 0; i < 2 * NF; i++) {
        int n = 0;
        for (;;) {
            engine_request_wait(q[i]);
            engine_delta d;
            ASSERT_EQ(engine_request_take(q[i], &d), 0);
            if (d.finish == FINISH_ERROR) FAIL("request %d: %s", i, d.error);
            for (int k = 0; k < d.n_tokens && n < NG; k++) toks[i][n++] = d.tokens[k].id;
            int done = d.finish != FINISH_NONE;
            engine_delta_free(&d);
            if (done) break;
        }
        ASSERT_EQ(n, NG);
        engine_request_unref(q[i]);
    }
    for (int i = 0; i < NF; i++)
        if (memcmp(toks[i], toks[NF + i], sizeof toks[i])) FAIL("%s: placed adapter's tokens differ", FIX[i]);
    engine_free(e);
    for (int i = 0; i < NF; i++) adapter_free(own[i]), adapter_free(placed[i]);
    slot_pool_free(pool);
    kbackend_cuda_slot_dev_free(ctx);
    model_adapter_base_free(&base);
    tokenizer_free(tok);
    model_free(m);
    kbackend_destroy(kb);
#endif
}

TEST_MAIN(pool_streams_versions_through_few_slots, pool_placed_adapters_decode_like_allocated_ones,
          graph_replay_matches_eager_steps)
