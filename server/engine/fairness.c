/* server/engine/fairness.c — see fairness.h. Tenants live in an array of pointers (stable
 * addresses); lookups are linear: tenants are few (an admin creates them), and a lookup
 * happens once per request arrival. */
#include "server/engine/fairness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/status.h"

struct vtc {
    pthread_mutex_t mu; /* guards the table for vtc_snapshot(); the engine thread writes */
    vtc_tenant **t;
    int n, cap;
};

int vtc_create(vtc **out) {
    vtc *v = calloc(1, sizeof *v);
    if (!v) return PEFTD_ENOMEM;
    pthread_mutex_init(&v->mu, NULL);
    *out = v;
    return 0;
}

void vtc_free(vtc *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) free(v->t[i]);
    free(v->t);
    pthread_mutex_destroy(&v->mu);
    free(v);
}

vtc_tenant *vtc_tenant_get(vtc *v, const char *name, float weight) {
    if (!v) return NULL;
    double w = weight > 0 ? weight : 1.0;
    for (int i = 0; i < v->n; i++)
        if (!strcmp(v->t[i]->name, name)) {
            v->t[i]->weight = w;
            return v->t[i];
        }
    vtc_tenant *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->weight = w;
    pthread_mutex_lock(&v->mu);
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 8;
        vtc_tenant **p = realloc(v->t, (size_t)cap * sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&v->mu);
            free(t);
            return NULL;
        }
        v->t = p;
        v->cap = cap;
    }
    v->t[v->n++] = t;
    pthread_mutex_unlock(&v->mu);
    return t;
}

static bool active(const vtc_tenant *t) { return t->running > 0 || t->waiting > 0; }

void vtc_arrive(vtc *v, vtc_tenant *t) {
    if (!v || !t) return;
    pthread_mutex_lock(&v->mu);
    if (!active(t)) {
        /* lift: no credit for the time it was idle */
        double lo = -1;
        for (int i = 0; i < v->n; i++)
            if (v->t[i] != t && active(v->t[i]) && (lo < 0 || v->t[i]->counter < lo)) lo = v->t[i]->counter;
        if (lo > t->counter) t->counter = lo;
    }
    t->waiting++;
    pthread_mutex_unlock(&v->mu);
}

void vtc_leave_queue(vtc *v, vtc_tenant *t) {
    if (!v || !t) return;
    pthread_mutex_lock(&v->mu);
    t->waiting--;
    pthread_mutex_unlock(&v->mu);
}

void vtc_admit(vtc *v, vtc_tenant *t) {
    if (!v || !t) return;
    pthread_mutex_lock(&v->mu);
    t->waiting--;
    t->running++;
    pthread_mutex_unlock(&v->mu);
}

void vtc_requeue(vtc *v, vtc_tenant *t) {
    if (!v || !t) return;
    pthread_mutex_lock(&v->mu);
    t->running--;
    t->waiting++;
    pthread_mutex_unlock(&v->mu);
}

void vtc_finish(vtc *v, vtc_tenant *t) {
    if (!v || !t) return;
    pthread_mutex_lock(&v->mu);
    t->running--;
    pthread_mutex_unlock(&v->mu);
}

void vtc_charge(vtc *v, vtc_tenant *t, int prompt_rows, int generated) {
    if (!v || !t) return;
    pthread_mutex_lock(&v->mu);
    t->prompt_tokens += (uint64_t)prompt_rows;
    t->generated_tokens += (uint64_t)generated;
    t->counter += (prompt_rows + generated) / t->weight;
    pthread_mutex_unlock(&v->mu);
}

int vtc_snapshot(vtc *v, engine_tenant_stats *out, int max) {
    pthread_mutex_lock(&v->mu);
    int n = v->n < max ? v->n : max;
    for (int i = 0; i < n; i++) {
        snprintf(out[i].tenant, sizeof out[i].tenant, "%s", v->t[i]->name);
        out[i].prompt_tokens = v->t[i]->prompt_tokens;
        out[i].generated_tokens = v->t[i]->generated_tokens;
        out[i].running = v->t[i]->running;
        out[i].waiting = v->t[i]->waiting;
    }
    pthread_mutex_unlock(&v->mu);
    return n;
}
