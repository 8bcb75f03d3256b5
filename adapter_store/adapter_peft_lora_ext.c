/* adapter_store/adapter_peft_lora_ext.c — the PEFT LoRA variants beyond A/B pairs on the 7
 * projections: trained biases (lora_bias, bias "all" / "lora_only") and LoRA on the
 * embedding table and on lm_head. Called by adapter__load_lora (adapter_peft_lora.c) after
 * the projections' pairs are staged. What PEFT 0.21.2 saves and applies (checked by
 * tests/fixtures/adapters/make_lora_variant_fixtures.py against the library):
 *
 *   lora_bias: true   lora_B is nn.Linear(r, out, bias=True): <key>.lora_B.bias [out];
 *                     delta = scaling·(B(A x) + bias)  (LoraLayer forward: lora_B(lora_A(x))·scaling)
 *   bias "all"        every ".bias" of the model is trained and saved: <key>.base_layer.bias on
 *                     LoRA-wrapped projections, <key>.bias on the others; each REPLACES the base's
 *                     bias on load (y = W x + b_trained + delta)
 *   bias "lora_only"  only the LoRA-wrapped projections' <key>.base_layer.bias
 *   embed_tokens      model.embed_tokens.lora_embedding_A [r, vocab], .lora_embedding_B [hidden, r]
 *                     (no ".weight"); x[t] += scaling·B·A[:, id_t] (lora.Embedding.forward:
 *                     F.embedding(ids, A.T) @ B.T · scaling)
 *   lm_head           lm_head.lora_A.weight [r, hidden], lora_B.weight [vocab, r]: a Linear LoRA on
 *                     the logits
 *   Either one makes save_pretrained (save_embedding_layers "auto") also write
 *   <module>.base_layer.weight [vocab, hidden]; PEFT loads it into the model, so it is served
 *   as the adapter's own table (a->embed / a->lm_head), like a modules_to_save copy.
 *   ensure_weight_tying: true on a tied base: the config lists embed_tokens only but PEFT adds a
 *   tied LoRA to lm_head (A = embedding_B.T, B = embedding_A.T) and saves it as lm_head.lora_A/B;
 *   those tensors are served as the lm_head LoRA they are.
 * Scales follow the module's r / alpha (rank_pattern / alpha_pattern keys "model.embed_tokens",
 * "lm_head"), alpha/sqrt(r) with use_rslora. DoRA on embed_tokens / lm_head is refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_store/adapter_internal.h"

#define PREFIX "base_model.model."

/* r and alpha of a top-level module (embed_tokens / lm_head) after the patterns. */
static int top_r_alpha(adapter__ctx *c, const char *key, int r, double alpha, int *r_out, double *alpha_out) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(c->cfg, "rank_pattern");
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(c->cfg, "alpha_pattern");
    const cJSON *hit;
    int rc;
    char what[300];
    *r_out = r, *alpha_out = alpha;
    if (rp && cJSON_IsObject(rp)) {
        if ((rc = adapter__pattern_value(c, rp, "rank_pattern", key, &hit))) return rc;
        snprintf(what, sizeof what, "rank_pattern['%.200s']", hit ? hit->string : "");
        if (hit && (rc = adapter__num_int(c, hit, what, 1, ADAPTER_MAX_LORA_RANK, r_out))) return rc;
    }
    if (ap && cJSON_IsObject(ap)) {
        if ((rc = adapter__pattern_value(c, ap, "alpha_pattern", key, &hit))) return rc;
        snprintf(what, sizeof what, "alpha_pattern['%.200s']", hit ? hit->string : "");
        if (hit && (rc = adapter__num_float(c, hit, what, ADAPTER_MAX_SCALE, alpha_out))) return rc;
    }
    return 0;
}

/* Stages a malloc'd f32 matrix [rows, cols] as *dst (ownership passes to the stage). */
static int stage_f32(adapter__ctx *c, float *v, int64_t rows, int64_t cols, kmat *dst) {
    *dst = (kmat){.data = NULL, .dtype = KDT_F32, .rows = rows, .cols = cols};
    if (adapter__stage_push(&c->stage, v, (size_t)(rows * cols) * sizeof(float), true, dst, NULL))
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    return 0;
}

/* The saved base_layer.weight of a LoRA-wrapped embed_tokens / lm_head, if any. */
static int load_base_layer(adapter__ctx *c, const char *key, kmat *dst) {
    char name[160];
    snprintf(name, sizeof name, PREFIX "%s.base_layer.weight", key);
    if (!st_find(c->st, name)) return 0;
    if (dst->data || dst->rows)
        return adapter__fail(c, PEFTD_EFORMAT, "%s: both '%s' and a modules_to_save copy of %s", c->wname, name, key);
    const st_tensor *t;
    kdtype kd;
    int rc = adapter__expect(c, name, 2, c->base->vocab, c->base->hidden, &t);
    if (rc) return rc;
    st_dtype_to_kdtype(t->dtype, &kd);
    return adapter__stage_mat(c, t, kd, dst, NULL);
}

static int load_embed_lora(adapter__ctx *c, int r, double alpha, bool rslora) {
    const adapter_base *b = c->base;
    adapter_lora *L = &c->a->embed_lora;
    const st_tensor *ta, *tb;
    double al;
    int rank, rc;
    if ((rc = top_r_alpha(c, "model.embed_tokens", r, alpha, &rank, &al))) return rc;
    if ((rc = adapter__expect(c, PREFIX "model.embed_tokens.lora_embedding_A", 2, rank, b->vocab, &ta)) ||
        (rc = adapter__expect(c, PREFIX "model.embed_tokens.lora_embedding_B", 2, b->hidden, rank, &tb)))
        return rc;
    float *a = NULL, *at = NULL, *bb = NULL;
    if ((rc = adapter__to_f32(c, ta, &a))) return rc;
    if (!(at = malloc((size_t)rank * b->vocab * sizeof *at))) {
        free(a);
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    }
    for (int k = 0; k < rank; k++) /* [r, vocab] -> [vocab, r]: one gatherable row per token */
        for (int v = 0; v < b->vocab; v++) at[(size_t)v * rank + k] = a[(size_t)k * b->vocab + v];
    free(a);
    if ((rc = stage_f32(c, at, b->vocab, rank, &L->a))) return rc;
    if ((rc = adapter__to_f32(c, tb, &bb))) return rc;
    if ((rc = stage_f32(c, bb, b->hidden, rank, &L->b))) return rc;
    L->rank = rank;
    L->scale = (float)(rslora ? al / sqrt((double)rank) : al / rank);
    adapter__note_rank(c->a, rank);
    return load_base_layer(c, "model.embed_tokens", &c->a->embed);
}

static int load_head_lora(adapter__ctx *c, int r, double alpha, bool rslora) {
    const adapter_base *b = c->base;
    adapter_lora *L = &c->a->head_lora;
    const st_tensor *ta, *tb;
    double al;
    int rank, rc;
    if ((rc = top_r_alpha(c, "lm_head", r, alpha, &rank, &al))) return rc;
    if ((rc = adapter__expect(c, PREFIX "lm_head.lora_A.weight", 2, rank, b->hidden, &ta)) ||
        (rc = adapter__expect(c, PREFIX "lm_head.lora_B.weight", 2, b->vocab, rank, &tb)))
        return rc;
    if ((rc = adapter__stage_mat(c, ta, KDT_F32, &L->a, NULL)) || (rc = adapter__stage_mat(c, tb, KDT_F32, &L->b, NULL)))
        return rc;
    L->rank = rank;
    L->scale = (float)(rslora ? al / sqrt((double)rank) : al / rank);
    adapter__note_rank(c->a, rank);
    return load_base_layer(c, "lm_head", &c->a->lm_head);
}

int adapter__load_lora_top(adapter__ctx *c, const bool *extra, int r, double alpha, bool rslora, bool dora) {
    int rc;
    bool tie;
    if ((rc = adapter__json_bool(c, c->cfg, "ensure_weight_tying", false, &tie))) return rc;
    /* ensure_weight_tying on a tied base: PEFT adds the tied lm_head LoRA the config does not list */
    bool head = extra[1] || (tie && extra[0] && st_find(c->st, PREFIX "lm_head.lora_A.weight"));
    if ((extra[0] || head) && dora)
        return adapter__fail(c, PEFTD_EUNSUPPORTED, "adapter_config.json: DoRA (use_dora) on %s is not served",
                             extra[0] ? "embed_tokens" : "lm_head");
    if (extra[0] && (rc = load_embed_lora(c, r, alpha, rslora))) return rc;
    if (head && (rc = load_head_lora(c, r, alpha, rslora))) return rc;
    return 0;
}

/* The bias of the projection (layer, m) as saved by PEFT for bias "all" / "lora_only":
 * <key>.base_layer.bias when the projection is LoRA-wrapped, <key>.bias otherwise. */
static const st_tensor *find_bias(adapter__ctx *c, const char *key, bool wrapped, char *name, size_t n) {
    snprintf(name, n, PREFIX "%s.%s", key, wrapped ? "base_layer.bias" : "bias");
    return st_find(c->st, name);
}

int adapter__load_lora_biases(adapter__ctx *c, const char *bias, bool lora_bias) {
    const adapter_base *b = c->base;
    adapter *a = c->a;
    bool all = !strcmp(bias, "all"), only = !strcmp(bias, "lora_only");
    if (!all && !only && strcmp(bias, "none"))
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field 'bias' is '%.32s'; PEFT knows \"none\", "
                                               "\"all\" and \"lora_only\"",
                             bias);
    for (int i = 0; i < b->n_layers * AMOD_COUNT; i++) {
        adapter_lora *L = &a->lora[i];
        adapter_module m = (adapter_module)(i % AMOD_COUNT);
        int l = i / AMOD_COUNT, o, in, row0, fo, rc;
        char key[128], name[256];
        adapter__module_key(b, l, m, key, sizeof key);
        adapter_module_shape(b, m, &o, &in);
        adapter__fused_rows(b, m, &row0, &fo);
        const st_tensor *t;
        if (lora_bias && L->rank > 0) {
            snprintf(name, sizeof name, PREFIX "%s.lora_B.bias", key);
            if ((rc = adapter__expect(c, name, 1, fo, 0, &t))) return rc;
            st_tensor rows = adapter__tensor_rows(t, row0, o);
            if ((rc = adapter__stage_vec(c, &rows, &L->bias))) return rc;
        }
        if (!(all || (only && L->rank > 0))) continue;
        if (!(t = find_bias(c, key, L->rank > 0, name, sizeof name))) continue; /* the base has no bias here */
        if (m > AMOD_O || fo != o) /* peftd's bases carry biases on unfused q/k/v/o only */
            return adapter__fail(c, PEFTD_EUNSUPPORTED, "%s: trained bias '%s' is on a projection peftd serves without "
                                                        "a bias",
                                 c->wname, name);
        if ((rc = adapter__expect(c, name, 1, o, 0, &t))) return rc;
        if ((rc = adapter__stage_mat(c, t, KDT_F32, &L->base_bias, NULL))) return rc;
    }
    return 0;
}
