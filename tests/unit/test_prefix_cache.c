/* tests/unit/test_prefix_cache.c — automatic prefix caching (engine_prefix.c) end to end on
 * the default model: tokens and logprobs (top alternatives included) bit-identical
 * (memcmp) with the cache on and off for identical prompts, a shared 400-token prefix with
 * different suffixes, base vs adapters (LoRA on k/v: another adapter or scale never hits,
 * the same adapter from another tenant does; prompt and prefix tuning), concurrent
 * requests, preemption under a small KV pool, LRU eviction under a block budget; exact
 * hit / query counters. The reference is the same engine code with the cache off, whose
 * own exactness against transformers is test_engine's and test_adapter_forward's. */
#include <stdlib.h>
#include <unistd.h>

#include "server/engine/engine.h"
#include "server/engine/prefix_cache.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

#define N_GEN 160 /* most tokens a job generates */
#define MAXP 480

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    adapter *lora, *lora2, *pt, *pfx;
} rig;

static rig R;
static int g_gen = 12; /* tokens each job generates */
static int g_ctx = 512; /* engine.max_context (0: the model's) */

static void rig_open(void) {
    char err[512] = "";
    if (R.m) return;
    R.kb = kbackend_cpu_create(2);
    ASSERT(R.kb);
    if (model_load("models/stories260K", R.kb, &R.m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load("models/stories260K", &R.tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    const char *dirs[] = {"lora_r8_all", "lora_r1_all", "prompt_tuning", "prefix_tuning"};
    adapter **outs[] = {&R.lora, &R.lora2, &R.pt, &R.pfx};
    for (int i = 0; i < 4; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/fixtures/adapters/%s", dirs[i]);
        if (model_load_adapter(R.m, dir, outs[i], err, sizeof err) < 0) FAIL("%s: %s", dirs[i], err);
    }
}

/* Each test runs in its own process: the rig is loaded there and freed at its end. */
static void rig_close(void) {
    adapter_free(R.lora);
    adapter_free(R.lora2);
    adapter_free(R.pt);
    adapter_free(R.pfx);
    tokenizer_free(R.tok);
    model_free(R.m);
    kbackend_destroy(R.kb);
    memset(&R, 0, sizeof R);
}

static engine *open_engine(bool cache, int kv_blocks, int budget, int max_seqs, int max_batch_tokens) {
    engine_config c;
    engine_config_default(&c);
    c.max_seqs = max_seqs;
    c.max_batch_tokens = max_batch_tokens;
    c.kv_cache_mb = 64;
    c.kv_blocks = kv_blocks;
    c.max_context = g_ctx;
    c.prefix_cache = cache;
    c.prefix_cache_blocks = budget;
    engine *e = NULL;
    char err[512];
    if (engine_create(&c, R.m, R.kb, R.tok, &e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(e), 0);
    return e;
}

typedef struct {
    int32_t ids[MAXP];
    int n;
    const adapter *ad;
    float scale;
    const char *tenant;
} job;

typedef struct {
    engine_request *q;
    gen_token tok[N_GEN];
    int n;
} out;

/* Deterministic pseudo-random prompt tokens in [3, 512): prefix seed pseed, suffix sseed. */
static void make_prompt(job *j, unsigned pseed, int npre, unsigned sseed, int nsuf) {
    unsigned x = pseed * 2654435761u + 1;
    j->ids[0] = 1;
    for (int i = 1; i < npre + nsuf; i++) {
        if (i == npre) x = sseed * 2246822519u + 7;
        x = x * 1103515245u + 12345u;
        j->ids[i] = 3 + (int32_t)((x >> 8) % 509);
    }
    j->n = npre + nsuf;
    j->ad = NULL;
    j->scale = 1.0f;
    j->tenant = "";
}

static void start(engine *e, const job *j, out *o) {
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = g_gen;
    p.temperature = 0;
    p.logprobs = 5;
    p.ignore_eos = true;
    p.adapter = j->ad;
    p.adapter_scale = j->scale;
    snprintf(p.tenant, sizeof p.tenant, "%s", j->tenant);
    o->q = engine_request_create(j->ids, j->n, &p);
    ASSERT(o->q);
    int st = engine_submit(e, o->q);
    if (st < 0) FAIL("engine_submit: %s", peftd_strerror(st));
}

static void finish(out *o) {
    engine_request_wait(o->q);
    engine_delta d;
    ASSERT_EQ(engine_request_take(o->q, &d), 0);
    if (d.finish == FINISH_ERROR) FAIL("generation failed: %s", d.error);
    ASSERT_EQ(d.n_tokens, g_gen);
    memset(o->tok, 0, sizeof o->tok);
    for (int i = 0; i < d.n_tokens; i++) {
        o->tok[i] = d.tokens[i];
        o->tok[i].text_offset = 0;
    }
    o->n = d.n_tokens;
    engine_delta_free(&d);
    engine_request_unref(o->q);
}

/* Runs jobs in order (concurrent: all submitted at once) and returns the outputs. */
static void run_jobs(engine *e, const job *jobs, int n, bool concurrent, out *o) {
    for (int i = 0; i < n; i++) {
        start(e, &jobs[i], &o[i]);
        if (!concurrent) finish(&o[i]);
    }
    if (concurrent)
        for (int i = 0; i < n; i++) finish(&o[i]);
}

static void stats_idle(engine *e, engine_stats *st) {
    for (int i = 0; i < 300; i++) {
        engine_get_stats(e, st);
        if (st->kv_blocks_used == 0 && st->running == 0) return;
        usleep(10000);
    }
}

/* Bit-identical: id, logprob and the top alternatives (memcmp on the floats). */
static bool same_token(const gen_token *x, const gen_token *y) {
    return x->id == y->id && !memcmp(&x->logprob, &y->logprob, sizeof(float)) && x->n_top == y->n_top &&
           x->n_top == 5 && !memcmp(x->top_id, y->top_id, (size_t)x->n_top * sizeof(int32_t)) &&
           !memcmp(x->top_logprob, y->top_logprob, (size_t)x->n_top * sizeof(float));
}

static void expect_same(const out *a, const out *b, int n) {
    for (int i = 0; i < n; i++)
        for (int k = 0; k < g_gen; k++)
            if (!same_token(&a[i].tok[k], &b[i].tok[k]))
                FAIL("job %d token %d: id %d lp %.9g with the cache, id %d lp %.9g without", i, k, a[i].tok[k].id,
                     a[i].tok[k].logprob, b[i].tok[k].id, b[i].tok[k].logprob);
}

/* Runs the jobs with the cache on and off, compares, returns the cached engine's stats. */
static void compare(const job *jobs, int n, bool concurrent, int kv_blocks, int budget, int max_batch_tokens,
                    engine_stats *st) {
    static out on[16], off[16];
    ASSERT(n <= 16);
    engine *e = open_engine(false, kv_blocks, 0, 8, max_batch_tokens);
    run_jobs(e, jobs, n, concurrent, off);
    engine_free(e);
    e = open_engine(true, kv_blocks, budget, 8, max_batch_tokens);
    run_jobs(e, jobs, n, concurrent, on);
    stats_idle(e, st);
    ASSERT_EQ(st->kv_blocks_used, 0);
    engine_free(e);
    expect_same(on, off, n);
}

static job J[16];

/* The table alone: refcounts, LRU order of unreferenced entries, the budget. */
TEST(pcache_refcounts_and_lru_order) {
    kv_blocks kv;
    pcache c;
    ASSERT_EQ(kv_blocks_init(&kv, 8), 0);
    ASSERT_EQ(pcache_init(&c, 8, 3), 0);
    uint8_t key[4][32];
    int32_t b[4];
    ASSERT_EQ(kv_blocks_alloc(&kv, 4, b), 0);
    for (int i = 0; i < 4; i++) {
        memset(key[i], 0, 32);
        key[i][0] = (uint8_t)(i + 1);
    }
    for (int i = 0; i < 3; i++) ASSERT(pcache_insert(&c, &kv, key[i], b[i]));
    ASSERT(!pcache_insert(&c, &kv, key[0], b[3])); /* key present */
    ASSERT(!pcache_insert(&c, &kv, key[3], b[3])); /* budget 3, every entry referenced */
    ASSERT_EQ(pcache_find(&c, key[3]), -1);
    /* release in the order 1, 0, 2: LRU head is key 1 */
    ASSERT(pcache_release(&c, b[1]));
    ASSERT(pcache_release(&c, b[0]));
    ASSERT(pcache_release(&c, b[2]));
    ASSERT(!pcache_release(&c, b[3])); /* not cached: the caller frees it */
    ASSERT_EQ(c.n_lru, 3);
    /* taken again: out of the LRU list, never evicted while referenced */
    ASSERT_EQ(pcache_acquire(&c, pcache_find(&c, key[1])), b[1]);
    ASSERT_EQ(c.n_lru, 2);
    int free_before = kv.n_free;
    ASSERT_EQ(pcache_evict(&c, &kv, 1), 1); /* the oldest unreferenced: key 0 */
    ASSERT_EQ(pcache_find(&c, key[0]), -1);
    ASSERT(pcache_find(&c, key[2]) >= 0 && pcache_find(&c, key[1]) >= 0);
    ASSERT_EQ(kv.n_free, free_before + 1);
    ASSERT(pcache_insert(&c, &kv, key[3], b[3])); /* room again (budget 3) */
    ASSERT_EQ(c.n, 3);
    ASSERT_EQ(pcache_evict(&c, &kv, 10), 1); /* key 2 only: keys 1 and 3 are referenced */
    ASSERT(pcache_release(&c, b[1]));
    ASSERT(pcache_release(&c, b[3]));
    ASSERT_EQ(pcache_evict(&c, &kv, 10), 2);
    ASSERT_EQ(c.evictions, 4u);
    ASSERT_EQ(c.n, 0);
    ASSERT_EQ(kv.n_free, 8); /* every block back in the pool */
    pcache_free(&c);
    kv_blocks_free(&kv);
}

TEST(identical_prompts_and_shared_400_prefix) {
    rig_open();
    make_prompt(&J[0], 1, 400, 1, 20); /* A: 420 tokens, 26 full blocks */
    make_prompt(&J[1], 1, 400, 2, 37); /* B: same 400-token prefix (25 blocks), another suffix */
    J[2] = J[0];                       /* A again: its 26 blocks (the last token is computed) */
    make_prompt(&J[3], 1, 400, 3, 5);  /* C: prefix + 5 */
    make_prompt(&J[4], 9, 300, 1, 0);  /* D: unrelated */
    engine_stats st;
    compare(J, 5, false, 0, 0, 64, &st);
    ASSERT_EQ(st.prefix_cache_queries, 420u + 437 + 420 + 405 + 300);
    ASSERT_EQ(st.prefix_cache_hits, 400u + 416 + 400);
    ASSERT_EQ(st.prefix_cache_evictions, 0u);
    /* A: 26 blocks; B: 27 (25 shared); C: 25 shared, none of its own full; D: 18 */
    ASSERT_EQ(st.prefix_cache_blocks, 26 + 2 + 18);
    rig_close();
}

TEST(adapters_never_share_another_versions_blocks) {
    rig_open();
    make_prompt(&J[0], 4, 400, 1, 10);
    J[1] = J[0];
    J[1].ad = R.lora;      /* LoRA on q/k/v/o/...: must not hit the base's blocks */
    J[2] = J[1];
    J[2].tenant = "other"; /* same version, another tenant: hits */
    J[3] = J[1];
    J[3].ad = R.lora2;     /* another version: no hit */
    J[4] = J[1];
    J[4].scale = 0.5f;     /* another scale changes k/v: no hit */
    J[5] = J[0];           /* the base again: hits its own */
    engine_stats st;
    compare(J, 6, false, 0, 0, 64, &st);
    ASSERT_EQ(st.prefix_cache_hits, 400u + 400);
    ASSERT_EQ(st.prefix_cache_queries, 6u * 410);
    rig_close();
}

TEST(prompt_and_prefix_tuning_share_within_their_version) {
    rig_open();
    make_prompt(&J[0], 5, 100, 1, 12);
    J[0].ad = R.pt;
    make_prompt(&J[1], 5, 100, 2, 30);
    J[1].ad = R.pt;
    make_prompt(&J[2], 5, 100, 1, 12);
    J[2].ad = R.pfx;
    make_prompt(&J[3], 5, 100, 2, 30);
    J[3].ad = R.pfx;
    make_prompt(&J[4], 5, 100, 2, 30); /* base: none of theirs */
    engine_stats st;
    compare(J, 5, false, 0, 0, 64, &st);
    int nv = R.pt->n_virtual; /* prompt tuning's virtual tokens come first (hashed as ids) */
    uint64_t pt_hit = (uint64_t)((nv + 100) / 16) * 16, pfx_hit = 100 / 16 * 16;
    ASSERT_EQ(st.prefix_cache_hits, pt_hit + pfx_hit);
    rig_close();
}

TEST(concurrent_shared_prefix_in_one_batch) {
    rig_open();
    for (int i = 0; i < 8; i++) make_prompt(&J[i], 7, 400, (unsigned)i, 3 + 7 * i);
    J[8] = J[0];
    engine_stats st;
    compare(J, 9, true, 0, 0, 48, &st);
    ASSERT(st.prefix_cache_blocks >= 25);
    rig_close();
}

TEST(preemption_with_a_small_pool_reuses_the_cache) {
    rig_open();
    for (int i = 0; i < 6; i++) make_prompt(&J[i], 8, 48, (unsigned)i, 8);
    engine_stats st;
    /* 40 blocks: 6 x 13 blocks (56 + 150 tokens) do not fit, sequences are preempted and
     * recomputed, their prompt blocks then come from the cache */
    g_gen = 150;
    compare(J, 6, true, 40, 0, 64, &st);
    printf("    preemptions %llu, hits %llu tokens\n", (unsigned long long)st.preemptions,
           (unsigned long long)st.prefix_cache_hits);
    ASSERT(st.preemptions > 0);
    ASSERT(st.prefix_cache_hits > 0);
    rig_close();
}

TEST(lru_eviction_under_a_block_budget) {
    rig_open();
    for (int i = 0; i < 4; i++) make_prompt(&J[i], 20 + (unsigned)i, 160, 0, 1); /* 10 full blocks each */
    J[4] = J[3];  /* newest: still cached, hits 160 */
    J[5] = J[0];  /* oldest: evicted under the 24-block budget, no hit */
    engine_stats st;
    compare(J, 6, false, 0, 24, 64, &st);
    ASSERT_EQ(st.prefix_cache_hits, 160u);
    ASSERT(st.prefix_cache_evictions > 0);
    ASSERT(st.prefix_cache_blocks <= 24);
    rig_close();
}

TEST(cached_blocks_are_evicted_before_anyone_is_preempted) {
    rig_open();
    for (int i = 0; i < 4; i++) make_prompt(&J[i], 40 + (unsigned)i, 240, 0, 1); /* 15 full blocks each */
    J[4] = J[3];
    engine_stats st;
    /* a 40-block pool: the third prompt fits only once cached blocks are evicted */
    compare(J, 5, false, 40, 0, 64, &st);
    ASSERT_EQ(st.preemptions, 0u);
    ASSERT(st.prefix_cache_evictions >= 15);
    ASSERT_EQ(st.prefix_cache_hits, 240u);
    rig_close();
}

TEST(dynamic_rope_scaling_is_never_cached) {
    /* a row's rotation depends on the prompt's length: nothing may be shared */
    char err[512];
    kbackend *kb = kbackend_cpu_create(2);
    model *m = NULL;
    tokenizer *tok = NULL;
    const char *dir = "tests/fixtures/rope_seqlen/dynamic-2";
    if (model_load(dir, kb, &m, err, sizeof err) < 0 || tokenizer_load(dir, &tok, err, sizeof err) < 0)
        FAIL("%s: %s", dir, err);
    R.kb = kb;
    R.m = m;
    R.tok = tok;
    g_ctx = 0;
    make_prompt(&J[0], 50, 40, 0, 2);
    for (int i = 0; i < J[0].n; i++) J[0].ids[i] %= m->cfg.vocab_size;
    J[1] = J[0];
    engine_stats st;
    compare(J, 2, false, 0, 0, 64, &st);
    ASSERT_EQ(st.prefix_cache_queries, 0u);
    ASSERT_EQ(st.prefix_cache_hits, 0u);
    ASSERT_EQ(st.prefix_cache_blocks, 0);
    rig_close();
}

TEST(prompt_logprobs_never_skip_rows) {
    rig_open();
    make_prompt(&J[0], 30, 64, 0, 5);
    engine *e = open_engine(true, 0, 0, 4, 64);
    out o;
    start(e, &J[0], &o);
    finish(&o);
    gen_params p;
    gen_params_default(&p);
    p.max_tokens = 1;
    p.temperature = 0;
    p.logprobs = 0;
    p.prompt_logprobs = true;
    engine_request *q = engine_request_create(J[0].ids, J[0].n, &p);
    ASSERT_EQ(engine_submit(e, q), 0);
    engine_request_wait(q);
    engine_delta d;
    ASSERT_EQ(engine_request_take(q, &d), 0);
    ASSERT_EQ(d.n_prompt_lp, J[0].n - 1);
    engine_delta_free(&d);
    engine_request_unref(q);
    engine_stats st;
    stats_idle(e, &st);
    ASSERT_EQ(st.prefix_cache_hits, 0u);
    engine_free(e);
    rig_close();
}

TEST_MAIN(pcache_refcounts_and_lru_order, identical_prompts_and_shared_400_prefix, adapters_never_share_another_versions_blocks,
          prompt_and_prefix_tuning_share_within_their_version, concurrent_shared_prefix_in_one_batch,
          preemption_with_a_small_pool_reuses_the_cache, lru_eviction_under_a_block_budget,
          cached_blocks_are_evicted_before_anyone_is_preempted, dynamic_rope_scaling_is_never_cached,
          prompt_logprobs_never_skip_rows)
