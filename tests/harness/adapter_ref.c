/* tests/harness/adapter_ref.c — reading an adapter fixture's reference.json (adapter_ref.h). */
#include "tests/harness/adapter_ref.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/harness/test.h"

void adapter_ref_load(const char *dir, adapter_ref *r) {
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/reference.json", dir);
    char *text = test_read_file(path, &len);
    if (!text) FAIL("cannot read %s", path);
    cJSON *root = cJSON_ParseWithLength(text, len), *c, *v, *row;
    if (!root) FAIL("%s: not JSON", path);
    memset(r, 0, sizeof *r);
    const cJSON *base = cJSON_GetObjectItem(root, "base");
    if (cJSON_IsString(base)) snprintf(r->base, sizeof r->base, "%s", base->valuestring);
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        if (r->n_cases == ADAPTER_REF_MAX_CASES) FAIL("%s: more than %d cases", path, ADAPTER_REF_MAX_CASES);
        int k = r->n_cases++, rows = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "input_ids")) {
            if (r->n_ids[k] == ADAPTER_REF_MAX_IDS) FAIL("%s: prompt too long", path);
            r->ids[k][r->n_ids[k]++] = v->valueint;
        }
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "greedy")) {
            if (r->n_greedy[k] == ADAPTER_REF_MAX_GREEDY) FAIL("%s: greedy too long", path);
            r->greedy[k][r->n_greedy[k]++] = v->valueint;
        }
        const cJSON *lg = cJSON_GetObjectItem(c, "logits");
        int vocab = cJSON_GetArraySize(cJSON_GetArrayItem(lg, 0));
        if (!vocab || (r->vocab && vocab != r->vocab)) FAIL("%s: case %d: bad logits rows", path, k);
        r->vocab = vocab;
        r->logits[k] = malloc(sizeof(float) * (size_t)r->n_ids[k] * vocab);
        if (!r->logits[k]) FAIL("out of memory");
        cJSON_ArrayForEach(row, lg) {
            int col = 0;
            if (rows == r->n_ids[k] || cJSON_GetArraySize(row) != vocab) FAIL("%s: case %d: bad logits", path, k);
            cJSON_ArrayForEach(v, row) r->logits[k][(size_t)rows * vocab + col++] = (float)v->valuedouble;
            rows++;
        }
        if (rows != r->n_ids[k]) FAIL("%s: case %d has %d logit rows for %d ids", path, k, rows, r->n_ids[k]);
    }
    if (!r->n_cases) FAIL("%s: no cases", path);
    cJSON_Delete(root);
    free(text);
}

void adapter_ref_free(adapter_ref *r) {
    for (int k = 0; k < r->n_cases; k++) free(r->logits[k]);
    memset(r, 0, sizeof *r);
}
