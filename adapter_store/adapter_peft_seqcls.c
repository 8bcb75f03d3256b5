/* adapter_store/adapter_peft_seqcls.c — PEFT adapters trained with task_type SEQ_CLS
 * (LlamaForSequenceClassification + LoRA): PEFT adds "classifier" and "score" to
 * modules_to_save and save_pretrained writes the trained head as
 * base_model.model.score.weight [num_labels, hidden] (no bias: Llama's score is
 * bias-free). It becomes adapter.cls_head (F32); the label names come from id2label of a
 * config.json saved beside the adapter (model.config.save_pretrained), else
 * "LABEL_<i>" (transformers' default id2label); names read from config.json join the
 * adapter's content hash (adapter__seq_cls_rehash), so the same files with other names are
 * another version. Only the LoRA family carries a head here:
 * another kind with task_type SEQ_CLS is refused naming the field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <openssl/evp.h>

#include "adapter_store/adapter_internal.h"
#include "adapter_store/safetensors.h"

#define HEAD "base_model.model.score.weight"

/* id2label of <dir>/config.json when that file exists and has one; 0 otherwise (defaults
 * stay). A present but malformed id2label is an error naming it. */
static int read_labels(adapter__ctx *c, adapter *a) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", c->dir);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char *text = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n <= (1 << 22) && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)n + 1)) && fread(text, 1, (size_t)n, f) != (size_t)n)
        n = -1;
    fclose(f);
    cJSON *root = text && n >= 0 ? cJSON_ParseWithLength(text, (size_t)n) : NULL;
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "id2label");
    int rc = 0;
    if (map && !cJSON_IsObject(map)) rc = adapter__fail(c, PEFTD_EFORMAT, "config.json: 'id2label' must be an object");
    for (int i = 0; !rc && map && i < a->n_labels; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", i);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, key);
        if (!cJSON_IsString(v) || strlen(v->valuestring) >= ADAPTER_LABEL_MAX)
            rc = adapter__fail(c, PEFTD_EFORMAT, "config.json: id2label[\"%d\"] must be a string of at most %d bytes "
                                                 "(the head has %d labels)", i, ADAPTER_LABEL_MAX - 1, a->n_labels);
        else
            snprintf(a->labels[i], ADAPTER_LABEL_MAX, "%s", v->valuestring);
    }
    cJSON_Delete(root);
    return rc;
}

int adapter__load_seq_cls(adapter__ctx *c) {
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(c->cfg, "task_type");
    if (!cJSON_IsString(task) || strcmp(task->valuestring, "SEQ_CLS") != 0) return 0;
    adapter *a = c->a;
    if (a->kind != ADAPTER_LORA)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: task_type 'SEQ_CLS' is served for LoRA adapters only (this is %s)",
                             adapter_kind_name(a->kind));
    const st_tensor *t = adapter__take(c, HEAD);
    if (!t)
        return adapter__fail(c, PEFTD_EFORMAT, "%s: task_type SEQ_CLS but no classification head '%s'", c->wname, HEAD);
    if (t->ndim != 2 || t->shape[1] != c->base->hidden || t->shape[0] < 1 || t->shape[0] > ADAPTER_MAX_LABELS)
        return adapter__fail(c, PEFTD_EINVAL, "%s: '%s' must be [num_labels (1..%d), hidden %d]", c->wname, HEAD,
                             ADAPTER_MAX_LABELS, c->base->hidden);
    int rc = adapter__stage_mat(c, t, KDT_F32, &a->cls_head, NULL);
    if (rc) return rc;
    a->n_labels = (int)t->shape[0];
    if (!(a->labels = calloc((size_t)a->n_labels, sizeof *a->labels)))
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory");
    for (int i = 0; i < a->n_labels; i++) snprintf(a->labels[i], ADAPTER_LABEL_MAX, "LABEL_%d", i);
    return read_labels(c, a);
}

int adapter__seq_cls_rehash(adapter__ctx *c) {
    adapter *a = c->a;
    bool named = false;
    for (int i = 0; i < a->n_labels && !named; i++) {
        char def[ADAPTER_LABEL_MAX];
        snprintf(def, sizeof def, "LABEL_%d", i);
        named = strcmp(def, a->labels[i]) != 0;
    }
    if (!named) return 0;
    unsigned char dg[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) && EVP_DigestUpdate(md, a->sha256, 64) &&
              EVP_DigestUpdate(md, "\nid2label\n", 11);
    for (int i = 0; ok && i < a->n_labels; i++) ok = EVP_DigestUpdate(md, a->labels[i], strlen(a->labels[i]) + 1);
    ok = ok && EVP_DigestFinal_ex(md, dg, &dl) && dl == 32;
    EVP_MD_CTX_free(md);
    if (!ok) return adapter__fail(c, PEFTD_EIO, "sha256: cannot hash the labels");
    for (int i = 0; i < 32; i++) snprintf(a->sha256 + 2 * i, 3, "%02x", dg[i]);
    return 0;
}
