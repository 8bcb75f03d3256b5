/* server/engine/fairness.h — per-tenant fair sharing of the engine: the Virtual Token
 * Counter (VTC, Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024).
 *
 * Every tenant has a counter of the tokens it has been served (prompt tokens processed +
 * tokens generated), divided by its weight. Admission always picks the waiting request of
 * the tenant with the smallest counter, so when the engine is saturated each backlogged
 * tenant gets a share of served tokens proportional to its weight, whatever the number of
 * requests it queues. A tenant that becomes active again has its counter lifted to the
 * smallest counter among active tenants, so idle time cannot be banked as future credit.
 *
 * Engine thread only, except vtc_snapshot() (any thread). Every function accepts a NULL
 * vtc or tenant as a no-op.
 */
#ifndef PEFTD_FAIRNESS_H
#define PEFTD_FAIRNESS_H

#include <stdint.h>

#include "server/engine/engine.h"

typedef struct vtc_tenant {
    char name[65];
    double weight;
    double counter;           /* served tokens / weight */
    uint64_t prompt_tokens, generated_tokens;
    int running, waiting;
} vtc_tenant;

typedef struct vtc vtc;

int vtc_create(vtc **out);
void vtc_free(vtc *v); /* NULL is a no-op */

/* The tenant called name (created on first use); weight (> 0) is updated. NULL on OOM.
 * The pointer stays valid for the vtc's lifetime. */
vtc_tenant *vtc_tenant_get(vtc *v, const char *name, float weight);

void vtc_arrive(vtc *v, vtc_tenant *t);      /* a request joined the waiting queue */
void vtc_leave_queue(vtc *v, vtc_tenant *t); /* it left without running (cancel, error) */
void vtc_admit(vtc *v, vtc_tenant *t);       /* waiting -> running */
void vtc_requeue(vtc *v, vtc_tenant *t);     /* running -> waiting (preempted) */
void vtc_finish(vtc *v, vtc_tenant *t);      /* a running request ended */
/* Charges served tokens: prompt rows processed and tokens generated this step. */
void vtc_charge(vtc *v, vtc_tenant *t, int prompt_rows, int generated);

/* Any thread: copies up to max tenants' counters. */
int vtc_snapshot(vtc *v, engine_tenant_stats *out, int max);

#endif
