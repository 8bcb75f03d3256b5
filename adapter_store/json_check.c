/* adapter_store/json_check.c — see json_check.h. */
#include "adapter_store/json_check.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

static int cmp_key(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

const char *json_duplicate_key(const cJSON *node) {
    if (!node || !(cJSON_IsObject(node) || cJSON_IsArray(node))) return NULL;
    if (cJSON_IsObject(node)) {
        /* the keys of this object, sorted: a duplicate is a pair of equal neighbours */
        const char *stack_keys[256], **keys = stack_keys;
        int n = 0;
        for (const cJSON *c = node->child; c; c = c->next) n++;
        if (n > 256 && !(keys = malloc((size_t)n * sizeof *keys))) return NULL;
        int k = 0;
        for (const cJSON *c = node->child; c; c = c->next) keys[k++] = c->string ? c->string : "";
        qsort(keys, (size_t)n, sizeof *keys, cmp_key);
        const char *dup = NULL;
        for (int i = 1; i < n && !dup; i++)
            if (!strcmp(keys[i - 1], keys[i])) dup = keys[i];
        if (keys != stack_keys) free((void *)keys);
        if (dup) return dup;
    }
    for (const cJSON *c = node->child; c; c = c->next) {
        const char *dup = json_duplicate_key(c);
        if (dup) return dup;
    }
    return NULL;
}
