/* server/engine/engine_prefix.c — the engine's side of automatic prefix caching
 * (prefix_cache.h holds the table): which sequences may share, the key chain, lookup at
 * admission, caching of the prompt blocks a step filled, and the block allocation and
 * release every KV block of a sequence goes through (cached blocks are reference-counted,
 * unreferenced cached blocks are evicted LRU before the pool counts as full).
 *
 * Key of the i-th full block of a sequence's tokens (virtual tokens of prompt tuning as
 * -(k+1), then the prompt): H_i = sha256(H_{i-1} || the block's token ids, int32 LE), with
 * H_{-1} = sha256 of everything else that changes those K/V: the adapter version's sha256
 * ("base" without one), its kind, n_virtual (prompt tuning's embeddings, prefix tuning's
 * K/V and position shift are the version's content), the adapter scale's bits, the RoPE
 * position offset and the block size. The model is fixed for the engine (the cache lives
 * in it), so it needs no key. Not cached: rope_scaling dynamic / longrope (a row's rotation
 * depends on the prompt length, longrope rewrites the blocks at its recompute) and adapters
 * without a content hash. A request asking for prompt_logprobs never skips rows (no lookup)
 * but its blocks are cached. Only full blocks before the last prompt token are looked up:
 * the last token's row is always computed. Bit-identical outputs rest on the kernels'
 * batch invariance (a row's K/V do not depend on the chunk it was computed in); the CPU
 * backend's fast_prefill gives that up, and so do cached outputs then. */
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "server/engine/engine_internal.h"

bool engine__pc_enabled(const engine *e) {
    rope_kind k = e->m->cfg.rope.kind;
    return e->pc.ent && k != ROPE_DYNAMIC && k != ROPE_LONGROPE;
}

/* Hash of (prev || data), 32 bytes, into out (may alias prev). */
static bool chain(uint8_t out[32], const uint8_t prev[32], const void *data, size_t n) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned len = 0;
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) && (!prev || EVP_DigestUpdate(md, prev, 32)) &&
              EVP_DigestUpdate(md, data, n) && EVP_DigestFinal_ex(md, out, &len) && len == 32;
    EVP_MD_CTX_free(md);
    return ok;
}

/* s->pc_hash = the seed (no blocks hashed yet); s->pc_on false when s may not share. */
void engine__pc_seed(engine *e, seq *s) {
    s->pc_hashed = 0;
    s->pc_on = false;
    if (!engine__pc_enabled(e) || (s->ad && !s->ad->sha256[0])) return;
    struct {
        char tag[16], sha[65];
        int32_t kind, n_virtual, pos_off, block_size;
        float scale;
    } seed;
    memset(&seed, 0, sizeof seed);
    memcpy(seed.tag, "peftd-prefix-v1", 15);
    snprintf(seed.sha, sizeof seed.sha, "%s", s->ad ? s->ad->sha256 : "base");
    seed.kind = s->ad ? (int32_t)s->ad->kind + 1 : 0;
    seed.n_virtual = s->ad ? s->ad->n_virtual : 0;
    seed.pos_off = s->pos_off;
    seed.block_size = e->cfg.block_size;
    seed.scale = s->ad || s->has_mix ? s->ad_scale : 1.0f;
    s->pc_on = chain(s->pc_hash, NULL, &seed, sizeof seed);
    if (!s->pc_on || !s->has_mix) return;
    /* a composition: its adapters' hashes, weights and combination make the key (compositions
     * of the same adapters and weights share prompt blocks; no other sequence does) */
    struct {
        char tag[16], sha[65];
        int32_t how;
        float weight;
    } part;
    for (int i = 0; i < s->mix.n && s->pc_on; i++) {
        if (!s->mix.ad[i]->sha256[0]) {
            s->pc_on = false;
            return;
        }
        memset(&part, 0, sizeof part);
        memcpy(part.tag, "peftd-mix-v1", 12);
        snprintf(part.sha, sizeof part.sha, "%s", s->mix.ad[i]->sha256);
        part.how = (int32_t)s->mix.how;
        part.weight = s->mix.weight[i];
        uint8_t prev[32];
        memcpy(prev, s->pc_hash, 32);
        s->pc_on = chain(s->pc_hash, prev, &part, sizeof part);
    }
}

/* Blocks of s that may be cached: full blocks of its virtual tokens + prompt. */
static int cacheable_blocks(const engine *e, const seq *s) {
    return (s->nv + s->r->n_prompt) / e->cfg.block_size;
}

/* Hashes s's next block into s->pc_hash (key of block s->pc_hashed). */
static bool hash_next(engine *e, seq *s, uint8_t key[32]) {
    const int bs = e->cfg.block_size;
    if (!chain(key, s->pc_hash, s->tokens + (size_t)s->pc_hashed * bs, (size_t)bs * sizeof(int32_t))) return false;
    return true;
}

/* Admission: the cached blocks s can start from, taken (refs+1) into its block table;
 * n_computed starts after them. Counts the query and hit tokens. s holds no blocks yet. */
void engine__pc_lookup(engine *e, seq *s) {
    engine__pc_seed(e, s);
    const gen_params *p = &s->r->params;
    if (!s->pc_on || p->pool == ENGINE_POOL_MEAN) return; /* every prompt row is pooled */
    int limit = (s->n_tokens - 1) / e->cfg.block_size, k = cacheable_blocks(e, s);
    if (k < limit) limit = k;
    /* prompt_logprobs: rows of tokens 0..scored-1 need no logits (score_from) */
    if (p->prompt_logprobs && (k = (s->nv + s->scored) / e->cfg.block_size) < limit) limit = k;
    uint8_t key[32];
    int hit = 0;
    while (hit < limit && hash_next(e, s, key)) {
        int i = pcache_find(&e->pc, key);
        if (i < 0) break;
        s->blocks[hit++] = pcache_acquire(&e->pc, i);
        memcpy(s->pc_hash, key, 32);
        s->pc_hashed = hit;
    }
    s->n_blocks = hit;
    s->n_computed = hit * e->cfg.block_size;
    pthread_mutex_lock(&e->smu);
    e->stats.prefix_cache_queries += (uint64_t)s->n_tokens;
    e->stats.prefix_cache_hits += (uint64_t)s->n_computed;
    pthread_mutex_unlock(&e->smu);
}

/* After a step: the full prompt blocks s has computed since are cached (a block whose key
 * is already cached, filled concurrently by another sequence, stays s's own). */
void engine__pc_insert(engine *e, seq *s) {
    if (!s->pc_on) return;
    int upto = s->n_computed / e->cfg.block_size, k = cacheable_blocks(e, s);
    if (k < upto) upto = k;
    uint8_t key[32];
    while (s->pc_hashed < upto && hash_next(e, s, key)) {
        pcache_insert(&e->pc, &e->kv, key, s->blocks[s->pc_hashed]);
        memcpy(s->pc_hash, key, 32);
        s->pc_hashed++;
    }
}

/* Blocks admission may count on: free ones and unreferenced cached ones. */
int engine__kv_available(const engine *e) { return e->kv.n_free + e->pc.n_lru; }

int engine__kv_alloc(engine *e, int n, int32_t *out) {
    if (n > e->kv.n_free) pcache_evict(&e->pc, &e->kv, n - e->kv.n_free);
    return kv_blocks_alloc(&e->kv, n, out);
}

void engine__kv_release(engine *e, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++)
        if (!pcache_release(&e->pc, ids[i])) kv_blocks_release(&e->kv, ids + i, 1);
}

bool engine_prefix_cache_on(const engine *e) { return engine__pc_enabled(e); }
