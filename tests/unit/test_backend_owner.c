/* tests/unit/test_backend_owner.c — the backend threading contract of kernels/kernels.h:
 * once a thread owns a backend (kbackend_set_owner: the engine thread), every [engine]
 * entry of its table called from another thread aborts with a message naming the
 * function; the owner's calls, the [any] capabilities and calls after
 * kbackend_release_owner work. And the daemon's shape: while the engine thread owns the
 * backend, adapter import, blob write and blob read on another thread make no backend call.
 * A call that must abort runs in a forked child whose stderr and exit the parent checks.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adapter_store/adapter_blob.h"
#include "server/engine/engine.h"
#include "server/model/model_adapter_base.h"
#include "tests/harness/test.h"

/* Runs fn(arg) in a forked child with stderr captured; returns the child's wait status and
 * its stderr (up to cap - 1 bytes) in out. */
static int run_child(void (*fn)(void *), void *arg, char *out, size_t cap) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(fds[0], out + n, cap - 1 - n)) > 0 && n + (size_t)r < cap - 1) n += (size_t)r;
    if (r > 0) n += (size_t)r;
    out[n] = 0;
    close(fds[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    return status;
}

/* fn(arg) must abort, saying that `what` was called from a thread that does not own it. */
static void expect_abort(void (*fn)(void *), void *arg, const char *what) {
    char out[4096], needle[128];
    int st = run_child(fn, arg, out, sizeof out);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT) FAIL("%s: child did not abort (status %#x): %s", what, st, out);
    snprintf(needle, sizeof needle, "%s called from a thread that does not own the backend", what);
    if (!strstr(out, needle)) FAIL("%s: message missing, stderr was: %s", what, out);
}

static void expect_clean_exit(void (*fn)(void *), void *arg) {
    char out[4096];
    int st = run_child(fn, arg, out, sizeof out);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) FAIL("child failed (status %#x): %s", st, out);
}

/* ---- a second thread that takes ownership and stays alive ---- */

static void *own_and_wait(void *p) {
    kbackend_set_owner((kbackend *)p);
    for (;;) pause();
    return NULL;
}

/* Makes a live thread other than the caller the owner of kb. */
static void other_thread_owns(kbackend *kb) {
    pthread_t t;
    ASSERT_EQ(pthread_create(&t, NULL, own_and_wait, kb), 0);
    while (!__atomic_load_n(&kb->has_owner, __ATOMIC_ACQUIRE)) usleep(1000);
}

/* ---- one call per [engine] entry (arguments never reach the backend: the check is first) */

typedef struct {
    kbackend *kb;
    int which;
} call;

static const char *const ENGINE_ONLY[] = {"alloc",     "free",    "upload",     "download",  "copy",
                                          "memset0",   "synchronize", "get_rows", "matmul",    "rmsnorm",
                                          "rope",      "kv_store", "attention",  "swiglu",    "add",
                                          "sgmv_shrink", "sgmv_expand", "seg_scale"};
#define N_ENGINE_ONLY ((int)(sizeof ENGINE_ONLY / sizeof ENGINE_ONLY[0]))

static void call_one(void *p) {
    const call *c = p;
    kbackend *kb = c->kb;
    const kbackend_ops *o = kb->ops;
    switch (c->which) {
    case 0: (void)o->alloc(kb, 16); break;
    case 1: o->free(kb, NULL); break;
    case 2: (void)o->upload(kb, NULL, NULL, 0); break;
    case 3: (void)o->download(kb, NULL, NULL, 0); break;
    case 4: (void)o->copy(kb, NULL, NULL, 0); break;
    case 5: (void)o->memset0(kb, NULL, 0); break;
    case 6: (void)o->synchronize(kb); break;
    case 7: (void)o->get_rows(kb, NULL, NULL, 0, NULL); break;
    case 8: (void)o->matmul(kb, NULL, 0, NULL, NULL, 0); break;
    case 9: (void)o->rmsnorm(kb, NULL, NULL, 0, 0, 0, NULL); break;
    case 10: (void)o->rope(kb, NULL, NULL, 0, 0, 0, 0, NULL); break;
    case 11: (void)o->kv_store(kb, NULL, NULL, NULL, 0, 0, KDT_F32, NULL, NULL); break;
    case 12: (void)o->attention(kb, NULL); break;
    case 13: (void)o->swiglu(kb, NULL, NULL, 0, 0, NULL); break;
    case 14: (void)o->add(kb, NULL, NULL, 0); break;
    case 15: (void)o->sgmv_shrink(kb, NULL, 0, NULL, NULL, 0); break;
    case 16: (void)o->sgmv_expand(kb, NULL, 0, NULL, 0, NULL); break;
    case 17: (void)o->seg_scale(kb, NULL, 0, 0, NULL, NULL); break;
    }
}

static void call_with_other_owner(void *p) {
    call *c = p;
    c->kb = kbackend_cpu_create(1);
    other_thread_owns(c->kb);
    call_one(c);
}

TEST(every_engine_only_entry_aborts_off_the_owner_thread) {
    for (int i = 0; i < N_ENGINE_ONLY; i++) {
        call c = {.which = i};
        expect_abort(call_with_other_owner, &c, ENGINE_ONLY[i]);
    }
}

/* The brief's case: the owner sets itself, a second thread calls an engine-only function. */
static void *sync_from_thread(void *p) {
    kbackend *kb = p;
    (void)kb->ops->synchronize(kb);
    return NULL;
}

static void owner_main_second_thread_calls(void *unused) {
    (void)unused;
    kbackend *kb = kbackend_cpu_create(1);
    kbackend_set_owner(kb);
    pthread_t t;
    pthread_create(&t, NULL, sync_from_thread, kb);
    pthread_join(t, NULL);
}

TEST(second_thread_dies_owner_does_not) {
    expect_abort(owner_main_second_thread_calls, NULL, "synchronize");
}

TEST(owner_calls_work) {
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    kbackend_set_owner(kb);
    float x[4] = {1, 2, 3, 4}, y[4] = {0}, back[4] = {0};
    float *d = kb->ops->alloc(kb, sizeof x);
    ASSERT(d);
    ASSERT_EQ(kb->ops->upload(kb, d, x, sizeof x), 0);
    ASSERT_EQ(kb->ops->add(kb, d, d, 4), 0);
    ASSERT_EQ(kb->ops->copy(kb, y, d, sizeof y), 0);
    ASSERT_EQ(kb->ops->download(kb, back, d, sizeof back), 0);
    ASSERT_EQ(kb->ops->synchronize(kb), 0);
    for (int i = 0; i < 4; i++) ASSERT(back[i] == 2 * x[i] && y[i] == back[i]);
    kb->ops->free(kb, d);
    kbackend_release_owner(kb);
    kbackend_destroy(kb);
}

/* [any] entries and the capability fields never check the thread. */
static void capabilities_with_other_owner(void *unused) {
    (void)unused;
    kbackend *kb = kbackend_cpu_create(1);
    other_thread_owns(kb);
    if (!kb->ops->is_host || !kb->ops->supports_op(kb, KOP_MATMUL, KDT_BF16) ||
        kb->ops->supports_op(kb, KOP_COUNT, KDT_F32) || kb->ops->sgmv_workspace(kb, 7, 16) != 7 * 16 * sizeof(float) ||
        strcmp(kb->ops->name, "cpu"))
        _exit(3);
}

TEST(any_thread_capabilities) { expect_clean_exit(capabilities_with_other_owner, NULL); }

/* After the owner releases, the thread that joined it may tear down. */
static void *own_then_release(void *p) {
    kbackend_set_owner(p);
    kbackend_release_owner(p);
    return NULL;
}

TEST(release_hands_back) {
    kbackend *kb = kbackend_cpu_create(1);
    pthread_t t;
    ASSERT_EQ(pthread_create(&t, NULL, own_then_release, kb), 0);
    ASSERT_EQ(pthread_join(t, NULL), 0);
    void *p = kb->ops->alloc(kb, 64);
    ASSERT(p);
    ASSERT_EQ(kb->ops->synchronize(kb), 0);
    kb->ops->free(kb, p);
    kbackend_destroy(kb);
}

/* ---- the daemon's shape: a running engine owns the backend ---- */

typedef struct {
    kbackend *kb;
    model *m;
    tokenizer *tok;
    engine *e;
} rig;

static void rig_open(rig *r) {
    char err[512] = "";
    memset(r, 0, sizeof *r);
    r->kb = kbackend_cpu_create(2);
    ASSERT(r->kb);
    if (model_load("models/stories260K", r->kb, &r->m, err, sizeof err) < 0) FAIL("model_load: %s", err);
    if (tokenizer_load("models/stories260K", &r->tok, err, sizeof err) < 0) FAIL("tokenizer_load: %s", err);
    engine_config c;
    engine_config_default(&c);
    c.kv_cache_mb = 16;
    if (engine_create(&c, r->m, r->kb, r->tok, &r->e, err, sizeof err) < 0) FAIL("engine_create: %s", err);
    ASSERT_EQ(engine_start(r->e), 0);
    /* engine_start returns before the thread has run: wait until it owns the backend */
    while (!__atomic_load_n(&r->kb->has_owner, __ATOMIC_ACQUIRE)) usleep(1000);
}

static void sync_on(void *p) {
    kbackend *kb = p;
    (void)kb->ops->synchronize(kb);
}

TEST(engine_thread_owns_the_backend) {
    rig r;
    rig_open(&r);
    expect_abort(sync_on, r.kb, "synchronize");
    engine_free(r.e); /* joins the engine thread, which released the backend */
    ASSERT_EQ(r.kb->ops->synchronize(r.kb), 0);
    tokenizer_free(r.tok);
    model_free(r.m);
    kbackend_destroy(r.kb);
}

/* Import → serialise → decode of every fixture kind on this (non-engine) thread while the
 * engine owns the backend: any backend call on the way would abort the test. */
TEST(import_is_host_only_while_the_engine_runs) {
    static const char *const dirs[] = {"lora_dora", "lora_bf16", "ia3", "prefix_tuning", "prompt_tuning", "houlsby",
                                       "lora_lm_head"};
    rig r;
    rig_open(&r);
    adapter_base base;
    ASSERT_EQ(model_adapter_base(r.m, &base), 0);
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char dir[256], err[1024];
        adapter *a = NULL, *b = NULL;
        void *blob = NULL;
        size_t len = 0;
        snprintf(dir, sizeof dir, "tests/fixtures/adapters/%s", dirs[i]);
        if (adapter_load_dir(dir, &base, &a, err, sizeof err) < 0) FAIL("%s: %s", dirs[i], err);
        ASSERT(a->kb == NULL && adapter_on_host(a));
        ASSERT_EQ(adapter_blob_write_base(a, &base, &blob, &len), 0);
        if (adapter_blob_read(blob, len, &base, &b, err, sizeof err) < 0) FAIL("%s: blob: %s", dirs[i], err);
        ASSERT(b->kb == NULL && adapter_on_host(b));
        free(blob);
        adapter_free(b);
        adapter_free(a);
    }
    model_adapter_base_free(&base);
    engine_free(r.e);
    tokenizer_free(r.tok);
    model_free(r.m);
    kbackend_destroy(r.kb);
}

TEST_MAIN(every_engine_only_entry_aborts_off_the_owner_thread, second_thread_dies_owner_does_not, owner_calls_work,
          any_thread_capabilities, release_hands_back, engine_thread_owns_the_backend,
          import_is_host_only_while_the_engine_runs)
