/* server/engine/lora_info.c — the engine's adapter view for vLLM-shaped metrics
 * (engine_get_lora_info): which adapter versions are resident in the slot pool and which
 * adapters queued requests wait for. The engine thread rebuilds it into lora_work (it
 * owns the slots and the waiting list; the submission queue is read under qmu) and swaps
 * it with the published one under smu, so a scrape never blocks a step for longer than a
 * pointer swap.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapter_store/registry.h"
#include "lib/status.h"
#include "server/engine/engine_internal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int engine__lora_info_init(engine *e) {
    e->lora_pub = calloc(1, sizeof *e->lora_pub);
    e->lora_work = calloc(1, sizeof *e->lora_work);
    if (!e->lora_pub || !e->lora_work) return PEFTD_ENOMEM;
    e->lora_pub->max_lora = e->lora_work->max_lora = e->cfg.adapter_slots;
    e->lora_pub->updated = now_s(); /* nothing resident nor waiting yet */
    return 0;
}

void engine__lora_info_free(engine *e) {
    free(e->lora_pub);
    free(e->lora_work);
    e->lora_pub = e->lora_work = NULL;
}

static bool is_resident(const engine_lora_info *li, const char *sha) {
    for (int i = 0; i < li->n_resident; i++)
        if (!strcmp(li->resident[i], sha)) return true;
    return false;
}

/* One queued request: its adapter counts as waiting when its version is not resident. */
static void add_waiting(engine_lora_info *li, const engine_request *r) {
    const struct adapter_handle *h = r->params.handle;
    if (!h || is_resident(li, h->meta.sha256)) return;
    char key[ENGINE_LORA_KEY_MAX];
    if (h->meta.owner[0]) snprintf(key, sizeof key, "%s/%s", h->meta.owner, h->meta.name);
    else snprintf(key, sizeof key, "%s", h->meta.name);
    for (int i = 0; i < li->n_waiting; i++)
        if (!strcmp(li->waiting[i], key)) return;
    li->n_waiting_total++;
    if (li->n_waiting < ENGINE_LORA_LIST_MAX) memcpy(li->waiting[li->n_waiting++], key, sizeof key);
}

/* Requests scanned per refresh: bounds the cost of a step under a very deep queue (the
 * view then lists the adapters of the first ones, the next to be admitted). */
#define LORA_SCAN_MAX 4096

void engine__lora_info_refresh(engine *e) {
    if (!e->tiers || !e->lora_work) return;
    engine_lora_info *li = e->lora_work;
    li->n_resident_total = tiers_resident(e->tiers, li->resident, ENGINE_LORA_LIST_MAX);
    li->n_resident = li->n_resident_total < ENGINE_LORA_LIST_MAX ? li->n_resident_total : ENGINE_LORA_LIST_MAX;
    li->n_waiting = li->n_waiting_total = 0;
    int scanned = 0;
    for (const engine_request *r = e->w_head; r && scanned < LORA_SCAN_MAX; r = r->next, scanned++)
        add_waiting(li, r);
    pthread_mutex_lock(&e->qmu);
    for (const engine_request *r = e->q_head; r && scanned < LORA_SCAN_MAX; r = r->next, scanned++)
        add_waiting(li, r);
    pthread_mutex_unlock(&e->qmu);
    li->updated = now_s();
    pthread_mutex_lock(&e->smu);
    e->lora_work = e->lora_pub;
    e->lora_pub = li;
    pthread_mutex_unlock(&e->smu);
}

int engine_get_lora_info(engine *e, engine_lora_info *out) {
    pthread_mutex_lock(&e->smu);
    bool have = e->lora_pub != NULL;
    if (have) memcpy(out, e->lora_pub, sizeof *out);
    pthread_mutex_unlock(&e->smu);
    return have ? 0 : PEFTD_ENOTFOUND;
}
