/* server/engine/json_schema_need.c — analyses of a compiled schema (json_schema_internal.h)
 * that keep the recognizer free of dead ends: $ref / anyOf cycles that never reach a value,
 * and need[v], the nesting frames a value of node v needs to complete (INT32_MAX: it has no
 * finite value). Run once by jschema_compile. */
#include <stdint.h>

#include "server/engine/json_schema_internal.h"

/* A $ref / anyOf path that comes back to where it started without a value in between. */
bool jschema__epsilon_cycle(const jschema *s, int32_t v, uint8_t *color) {
    if (color[v] == 1) return true;
    if (color[v] == 2) return false;
    color[v] = 1;
    const jnode *n = &s->nodes[v];
    if (n->kind == JN_REF && jschema__epsilon_cycle(s, n->a, color)) return true;
    if (n->kind == JN_ALT)
        for (int i = 0; i < n->b; i++)
            if (jschema__epsilon_cycle(s, s->alts[n->a + i], color)) return true;
    color[v] = 2;
    return false;
}

/* need[v]: frames a value of v needs (its own and those below it), by fixpoint. */
void jschema__compute_need(jschema *s) {
    for (int v = 0; v < s->n_nodes; v++) s->need[v] = INT32_MAX;
    /* Values only decrease, so need[v] >= what its children's current values give at every
     * pass: stopping early (the pass cap, against adversarial schemas) leaves upper bounds,
     * which keep every offered alternative completable (only fewer may be offered). */
    int passes = 0;
    for (bool changed = true; changed && passes < 256; passes++) {
        changed = false;
        for (int v = 0; v < s->n_nodes; v++) {
            const jnode *n = &s->nodes[v];
            int64_t w = INT32_MAX;
            switch (n->kind) {
            case JN_STR: w = n->b >= 0 && n->a > n->b ? INT32_MAX : 1; break;
            case JN_ARR:
                if (n->c >= 0 && n->b > n->c) break;
                w = n->b == 0 ? 1 : (s->need[n->a] == INT32_MAX ? INT32_MAX : 1 + (int64_t)s->need[n->a]);
                break;
            case JN_OBJ:
                w = 1;
                for (int i = 0; i < n->b; i++) {
                    const jprop *p = &s->props[n->a + i];
                    if (p->required) w = s->need[p->node] == INT32_MAX ? INT32_MAX : (w > 1 + (int64_t)s->need[p->node] ? w : 1 + s->need[p->node]);
                    if (w == INT32_MAX) break;
                }
                break;
            case JN_ALT:
                for (int i = 0; i < n->b; i++)
                    if (s->need[s->alts[n->a + i]] < w) w = s->need[s->alts[n->a + i]];
                break;
            case JN_REF: w = s->need[n->a]; break;
            default: w = 1;
            }
            if (w < s->need[v]) {
                s->need[v] = (int32_t)w;
                changed = true;
            }
        }
    }
}
