/* tests/harness/logit_ref.c — see logit_ref.h. */
#include "tests/harness/logit_ref.h"

#include <cJSON.h>
#include <math.h>

#include "lib/status.h"
#include "server/model/llama.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

void logit_case_load(const char *file, const char *name, logit_case *q) {
    size_t len;
    char *text = test_read_file(file, &len);
    if (!text) FAIL("cannot read %s", file);
    cJSON *root = cJSON_ParseWithLength(text, len);
    ASSERT(root);
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "cases"), name), *v, *r;
    if (!c) FAIL("%s: no case %s", file, name);
    memset(q, 0, sizeof *q);
    snprintf(q->model, sizeof q->model, "%s", cJSON_GetObjectItem(c, "model")->valuestring);
    const cJSON *ad = cJSON_GetObjectItem(c, "adapter");
    if (cJSON_IsString(ad)) snprintf(q->adapter, sizeof q->adapter, "%s", ad->valuestring);
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "input_ids")) {
        ASSERT(q->n_ids < LOGIT_REF_MAX_IDS);
        q->ids[q->n_ids++] = v->valueint;
    }
    const cJSON *rows = cJSON_GetObjectItem(c, "logits");
    q->vocab = cJSON_GetArraySize(cJSON_GetArrayItem(rows, 0));
    ASSERT(q->vocab > 0);
    q->logits = malloc(sizeof(float) * (size_t)q->n_ids * q->vocab);
    ASSERT(q->logits);
    int row = 0;
    cJSON_ArrayForEach(r, rows) {
        ASSERT(row < q->n_ids);
        int col = 0;
        cJSON_ArrayForEach(v, r) {
            ASSERT(col < q->vocab);
            q->logits[(size_t)row * q->vocab + col++] = (float)v->valuedouble;
        }
        ASSERT_EQ(col, q->vocab);
        row++;
    }
    ASSERT_EQ(row, q->n_ids);
    cJSON_Delete(root);
    free(text);
}

void logit_case_free(logit_case *q) {
    free(q->logits);
    q->logits = NULL;
}

/* The prompt through c as a prefill of n_pre tokens and decode steps after it. */
static void run_prompt(llama_ctx *c, const logit_case *q, const adapter *ad, int n_pre, float *out) {
    const int bs = 4, max_blocks = 16;
    int32_t pos[LOGIT_REF_MAX_IDS], slots[LOGIT_REF_MAX_IDS], rows[LOGIT_REF_MAX_IDS], btab[16];
    for (int i = 0; i < max_blocks; i++) btab[i] = 3 + i;
    for (int j = 0; j < q->n_ids; j++) {
        pos[j] = j;
        slots[j] = btab[j / bs] * bs + j % bs;
        rows[j] = j;
    }
    for (int s0 = 0; s0 < q->n_ids;) {
        int n = s0 == 0 ? (n_pre < q->n_ids ? n_pre : q->n_ids) : 1;
        int32_t qstart[2] = {0, n}, kvlen[1] = {s0 + n};
        llama_segment seg = {.ad = ad, .scale = 1.0f, .row_start = 0, .row_end = n};
        llama_batch b = {.n_tokens = n, .tokens = q->ids + s0, .positions = pos + s0, .slots = slots + s0,
                         .n_seqs = 1, .q_start = qstart, .kv_len = kvlen, .block_table = btab, .n_segs = 1,
                         .segs = &seg, .n_logits = n, .logit_rows = rows};
        int st = llama_forward(c, &b, out + (size_t)s0 * q->vocab);
        if (st < 0) FAIL("llama_forward: %s", peftd_strerror(st));
        s0 += n;
    }
}

double logit_case_check(const logit_case *q, const char *label, int n_pre, double tol,
                        void (*inspect)(const model *m, void *ud), void *ud) {
    char err[1024] = "";
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = NULL;
    adapter *ad = NULL;
    if (model_load(q->model, kb, &m, err, sizeof err) < 0) FAIL("model_load %s: %s", q->model, err);
    ASSERT_EQ(m->cfg.vocab_size, q->vocab);
    if (inspect) inspect(m, ud);
    if (q->adapter[0] && model_load_adapter(m, q->adapter, &ad, err, sizeof err) < 0)
        FAIL("adapter %s: %s", q->adapter, err);
    llama_ctx_params p = {.max_tokens = 64, .max_seqs = 2, .block_size = 4, .n_blocks = 32, .max_blocks = 16};
    llama_ctx *c = NULL;
    if (llama_ctx_create(m, &p, &c, err, sizeof err) < 0) FAIL("llama_ctx_create: %s", err);
    float *out = malloc(sizeof(float) * (size_t)q->n_ids * q->vocab);
    ASSERT(out);
    run_prompt(c, q, ad, n_pre, out);
    double md = 0;
    for (size_t i = 0; i < (size_t)q->n_ids * q->vocab; i++) {
        double d = fabs((double)out[i] - q->logits[i]);
        if (!(d <= md)) md = d;
    }
    printf("    %-16s prefill %2d (%d tokens): max |logit diff| %.3g\n", label,
           n_pre < q->n_ids ? n_pre : q->n_ids, q->n_ids, md);
    if (!(md <= tol)) FAIL("%s: max |logit diff| %.3g > %g", label, md, tol);
    free(out);
    llama_ctx_free(c);
    adapter_free(ad);
    model_free(m);
    kbackend_destroy(kb);
    return md;
}
