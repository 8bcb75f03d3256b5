/* server/engine/engine_graphs.c — decode steps as CUDA graphs (PEFTD_CUDA_GRAPHS=1; off by
 * default until a GPU run validates it: tests/gpu/run.sh runs the greedy parity with it on
 * and off). A device-sampling step (every logits row sampled on the backend, no host sync
 * inside llama_forward) runs as two passes (kernels/step_split.h): the transfers, then the
 * ops. The transfers pass also yields the step's signature; kernels/decode_graph.c decides:
 * the first step of a signature runs its ops eagerly (warm-up: scratch grows, cuBLAS picks
 * its kernels), the second captures them into a graph and launches it, later ones with the
 * same signature (and slot-pool layout) replay it after their transfers. Graphs are kept per
 * batch-size bucket, exact shape (rows are not padded to the bucket yet, so a new row count
 * is a new signature: recaptured). Without CUDA (the CPU backend) the same passes run with
 * no capture: the split itself is what the CPU tests check. */
#include <stdlib.h>

#include "kernels/decode_graph.h"
#include "kernels/kernels_cuda.h"
#include "kernels/slot_pool.h"
#include "kernels/step_split.h"
#include "lib/log.h"
#include "server/engine/engine_internal.h"

struct engine_graphs {
    decode_graphs g;
    void *exec[DECODE_GRAPH_MAX_BUCKETS];
};

void engine__graphs_init(engine *e) {
    if (!decode_graph_enabled()) return;
    engine_graphs *gs = calloc(1, sizeof *gs);
    if (!gs || decode_graphs_init(&gs->g, e->cfg.max_seqs, true) < 0) {
        free(gs);
        LOGW("engine: PEFTD_CUDA_GRAPHS=1 but the graph state could not be created: eager steps");
        return;
    }
    e->graphs = gs;
    LOGI("engine: decode steps as graphs (PEFTD_CUDA_GRAPHS=1), buckets up to %d rows", e->cfg.max_seqs);
}

static void destroy_exec(engine_graphs *gs, int i) {
#ifdef PEFTD_CUDA
    kbackend_cuda_graph_destroy(gs->exec[i]);
#endif
    gs->exec[i] = NULL;
}

void engine__graphs_free(engine *e) {
    engine_graphs *gs = e->graphs;
    if (!gs) return;
    LOGI("engine: decode graphs: %llu captures, %llu replays, %llu eager steps, %llu invalidations, %llu capture "
         "failures", (unsigned long long)gs->g.captures, (unsigned long long)gs->g.replays,
         (unsigned long long)gs->g.eager_steps, (unsigned long long)gs->g.invalidations,
         (unsigned long long)gs->g.capture_failures);
    for (int i = 0; i < DECODE_GRAPH_MAX_BUCKETS; i++) destroy_exec(gs, i);
    free(gs);
    e->graphs = NULL;
}

void engine__graphs_stats(const engine *e, uint64_t *captures, uint64_t *replays) {
    *captures = e->graphs ? e->graphs->g.captures : 0;
    *replays = e->graphs ? e->graphs->g.replays : 0;
}

int engine__forward_device(engine *e, const llama_batch *b) {
    engine_graphs *gs = e->graphs;
    if (!gs) return llama_forward(e->lc, b, NULL);
    kbackend *kb = e->kb;
    step_split s;
    step_split_begin(&s, kb, STEP_PASS_TRANSFERS);
    int st = llama_forward(e->lc, b, NULL);
    step_split_end(&s);
    if (st < 0) return st;
    uint64_t sig = s.sig;
    decode_graph_key key = {.layout_gen = slot_pool_layout_gen(e->spool), .buffers_gen = sig, .max_blocks = 0};
    int rows = b->n_tokens, bucket = rows, idx = decode_bucket_for(&gs->g.buckets, rows);
    bool invalidate = false;
    decode_action act = decode_graphs_plan(&gs->g, rows, &key, &bucket, &invalidate);
    if (invalidate && idx >= 0) destroy_exec(gs, idx);
    bool is_cuda = false;
#ifdef PEFTD_CUDA
    is_cuda = !kb->ops->is_host;
    if (is_cuda && act == DECODE_REPLAY && idx >= 0 && gs->exec[idx])
        return kbackend_cuda_graph_launch(kb, gs->exec[idx]);
    if (is_cuda && act == DECODE_CAPTURE && idx >= 0) {
        st = kbackend_cuda_graph_begin(kb);
        if (st == 0) {
            step_split_begin(&s, kb, STEP_PASS_OPS);
            int fst = llama_forward(e->lc, b, NULL);
            step_split_end(&s);
            void *x = NULL;
            st = kbackend_cuda_graph_end(kb, &x); /* always end the capture */
            bool ok = st == 0 && fst == 0 && step_split_capturable(&s) && x;
            decode_graphs_captured(&gs->g, rows, ok);
            if (ok) {
                gs->exec[idx] = x;
                return kbackend_cuda_graph_launch(kb, x);
            }
            if (x) kbackend_cuda_graph_destroy(x);
            LOGW("engine: decode graph capture of %d rows failed; running the step eagerly", rows);
        } else {
            decode_graphs_captured(&gs->g, rows, false);
        }
        /* fall through: the transfers are in place, run the ops eagerly */
    }
#endif
    if (!is_cuda && act == DECODE_CAPTURE) decode_graphs_captured(&gs->g, rows, true); /* nothing to capture */
    step_split_begin(&s, kb, STEP_PASS_OPS);
    st = llama_forward(e->lc, b, NULL);
    step_split_end(&s);
    return st;
}
