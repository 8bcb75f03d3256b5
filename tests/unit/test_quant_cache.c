/* tests/unit/test_quant_cache.c — the at-load conversion's cache (server/model/model_quant_cache.h,
 * config "weights_cache"): a restart reads back exactly the bytes the conversion produced (the
 * file is not rewritten: same inode), and every kind of stale or damaged file — a payload byte
 * flipped, a truncated file, a weight file touched, another file's bytes, another plan — is
 * converted again to the same bytes and rewritten; a cache directory that cannot be made leaves
 * the load as it was without one. Pruning (mqc_prune) removes the files of moved or deleted model
 * directories, of an older format and of killed writers, then the least recently used (a hit
 * counts as a use) beyond the budget, never the most recent one nor files not its own. Models:
 * copies of tests/fixtures/models/tiny-k256-bf16 in the test's own directory (their files' times
 * are changed here). */
#include "tests/harness/test.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "server/model/model.h"
#include "server/model/model_quant.h"
#include "server/model/model_quant_cache.h"

#define FIX "tests/fixtures/models/tiny-k256-bf16"

typedef struct {
    char root[512], model[600], cache[600];
} dirs;

static void copy_file(const char *from, const char *to) {
    size_t len = 0;
    char *p = test_read_file(from, &len);
    if (!p) FAIL("cannot read %s", from);
    FILE *f = fopen(to, "wb");
    ASSERT(f && fwrite(p, 1, len, f) == len && fclose(f) == 0);
    free(p);
}

/* A copy of the fixture model at dir. */
static void copy_model(const char *dir) {
    ASSERT_EQ(mkdir(dir, 0755), 0);
    char to[700];
    snprintf(to, sizeof to, "%s/config.json", dir);
    copy_file(FIX "/config.json", to);
    snprintf(to, sizeof to, "%s/model.safetensors", dir);
    copy_file(FIX "/model.safetensors", to);
}

static void setup(dirs *d) {
    snprintf(d->root, sizeof d->root, "%s", test_tmpdir());
    snprintf(d->model, sizeof d->model, "%s/model", d->root);
    snprintf(d->cache, sizeof d->cache, "%s/weights-cache", d->root);
    copy_model(d->model);
}

static model *load(kbackend *kb, const char *dir, int dt, const char *cache) {
    model_load_opts o = {.weights = dt, .threads = 2, .weights_cache = cache};
    char err[1024] = "";
    model *m = NULL;
    if (model_load_ex(dir, kb, &o, &m, err, sizeof err) < 0) FAIL("model_load_ex %s: %s", dir, err);
    return m;
}

/* Every layer projection of a and b: same dtype, same bytes. Returns how many were quantized. */
static int same_weights(const model *a, const model *b) {
    int q = 0;
    ASSERT_EQ(a->cfg.n_layers, b->cfg.n_layers);
    for (int i = 0; i < a->cfg.n_layers; i++) {
        const model_layer *la = &a->layers[i], *lb = &b->layers[i];
        const kmat *pa[7] = {&la->wq, &la->wk, &la->wv, &la->wo, &la->w_gate, &la->w_up, &la->w_down};
        const kmat *pb[7] = {&lb->wq, &lb->wk, &lb->wv, &lb->wo, &lb->w_gate, &lb->w_up, &lb->w_down};
        for (int k = 0; k < 7; k++) {
            ASSERT_EQ(pa[k]->dtype, pb[k]->dtype);
            ASSERT(pa[k]->rows == pb[k]->rows && pa[k]->cols == pb[k]->cols);
            size_t n = kdtype_is_quant(pa[k]->dtype) ? kdtype_row_bytes(pa[k]->dtype, pa[k]->cols) * (size_t)pa[k]->rows
                                                     : kdtype_size(pa[k]->dtype) * (size_t)(pa[k]->rows * pa[k]->cols);
            if (memcmp(pa[k]->data, pb[k]->data, n) != 0) FAIL("layer %d projection %d: bytes differ", i, k);
            q += kdtype_is_quant(pa[k]->dtype);
        }
    }
    return q;
}

/* The cache files in d->cache (one per dtype), in directory order; anything else fails. */
static int cache_files(const dirs *d, char path[][1024], int max) {
    DIR *dd = opendir(d->cache);
    if (!dd) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd)) && n < max) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".pqc")) snprintf(path[n++], 1024, "%s/%s", d->cache, e->d_name);
        else if (e->d_name[0] != '.') FAIL("stray file in the cache directory: %s", e->d_name);
    }
    closedir(dd);
    return n;
}

static ino_t inode_of(const char *p) {
    struct stat st;
    ASSERT_EQ(stat(p, &st), 0);
    return st.st_ino;
}

TEST(restart_reads_the_converted_bytes_back) {
    dirs d;
    setup(&d);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    static const kdtype DTS[] = {KDT_Q4_K, KDT_Q8_0};
    for (int t = 0; t < 2; t++) {
        model *ref = load(kb, d.model, DTS[t], NULL), *first = load(kb, d.model, DTS[t], d.cache);
        ASSERT(same_weights(ref, first) > 0);
        char files[4][1024], files2[4][1024];
        ASSERT_EQ(cache_files(&d, files, 4), t + 1);
        ino_t ino[4];
        for (int i = 0; i <= t; i++) ino[i] = inode_of(files[i]);
        model *again = load(kb, d.model, DTS[t], d.cache);
        ASSERT(same_weights(ref, again) > 0);
        /* a hit reads the file, it does not write it again: same files, same inodes */
        ASSERT_EQ(cache_files(&d, files2, 4), t + 1);
        for (int i = 0; i <= t; i++) {
            ASSERT_STREQ(files[i], files2[i]);
            if (inode_of(files2[i]) != ino[i]) FAIL("%s: rewritten on a restart (a miss)", files2[i]);
        }
        model_free(ref), model_free(first), model_free(again);
    }
    /* bf16 is not cached (rounding costs about what reading it back would) */
    model *b = load(kb, d.model, KDT_BF16, d.cache);
    char files[4][1024];
    ASSERT_EQ(cache_files(&d, files, 4), 2);
    model_free(b);
    kbackend_destroy(kb);
}

/* Damages the one cache file by op, loads, and checks: same bytes as a fresh conversion, the
 * file rewritten (new inode) and valid (the next load keeps it). */
static void damaged_case(kbackend *kb, const dirs *d, const model *ref, const char *what,
                         void (*damage)(const dirs *d, const char *file)) {
    char files[2][1024];
    ASSERT_EQ(cache_files(d, files, 2), 1);
    damage(d, files[0]);
    ino_t before = inode_of(files[0]);
    model *m = load(kb, d->model, KDT_Q4_K, d->cache);
    if (same_weights(ref, m) == 0) FAIL("%s: nothing quantized", what);
    ASSERT_EQ(cache_files(d, files, 2), 1);
    ino_t after = inode_of(files[0]);
    if (after == before) FAIL("%s: the damaged cache file was not rewritten", what);
    model *again = load(kb, d->model, KDT_Q4_K, d->cache);
    same_weights(ref, again);
    if (inode_of(files[0]) != after) FAIL("%s: the rewritten cache file was not used", what);
    model_free(m), model_free(again);
    printf("  %s: converted again, same bytes, cache rewritten\n", what);
}

static void flip_last_byte(const dirs *d, const char *f) {
    (void)d;
    int fd = open(f, O_RDWR);
    ASSERT(fd >= 0);
    off_t end = lseek(fd, 0, SEEK_END);
    unsigned char c;
    ASSERT(pread(fd, &c, 1, end - 1) == 1);
    c ^= 0x10;
    ASSERT(pwrite(fd, &c, 1, end - 1) == 1);
    close(fd);
}
static void truncate_one(const dirs *d, const char *f) {
    (void)d;
    struct stat st;
    ASSERT_EQ(stat(f, &st), 0);
    ASSERT_EQ(truncate(f, st.st_size - 1), 0);
}
static void touch_weights(const dirs *d, const char *f) {
    (void)f;
    char p[700];
    snprintf(p, sizeof p, "%s/model.safetensors", d->model);
    struct timespec ts[2] = {{.tv_sec = 1700000000, .tv_nsec = 5}, {.tv_sec = 1700000000, .tv_nsec = 5}};
    ASSERT_EQ(utimensat(AT_FDCWD, p, ts, 0), 0);
}
static void other_magic(const dirs *d, const char *f) {
    (void)d;
    int fd = open(f, O_RDWR);
    ASSERT(fd >= 0 && pwrite(fd, "NOTMAGIC", 8, 0) == 8);
    close(fd);
}
static void plan_byte(const dirs *d, const char *f) { /* the first job record's rows */
    (void)d;
    int fd = open(f, O_RDWR);
    unsigned char c;
    ASSERT(fd >= 0 && pread(fd, &c, 1, 96 + 8) == 1);
    c ^= 1;
    ASSERT(pwrite(fd, &c, 1, 96 + 8) == 1);
    close(fd);
}

TEST(stale_or_damaged_cache_is_converted_again) {
    dirs d;
    setup(&d);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *ref = load(kb, d.model, KDT_Q4_K, NULL), *first = load(kb, d.model, KDT_Q4_K, d.cache);
    same_weights(ref, first);
    model_free(first);
    damaged_case(kb, &d, ref, "payload byte flipped", flip_last_byte);
    damaged_case(kb, &d, ref, "file truncated by one byte", truncate_one);
    damaged_case(kb, &d, ref, "model.safetensors touched (mtime)", touch_weights);
    damaged_case(kb, &d, ref, "magic overwritten", other_magic);
    damaged_case(kb, &d, ref, "plan record changed", plan_byte);
    model_free(ref);
    kbackend_destroy(kb);
}

/* The reader and writer directly: a plan that differs in one job is a miss, so is another
 * converters' fingerprint; the payload comes back byte for byte, another dtype is another file. */
TEST(plan_and_dtype_are_part_of_the_key) {
    dirs d;
    setup(&d);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *m = load(kb, d.model, -1, NULL);
    enum { N = 3 };
    static const uint8_t FP[4] = {1, 2, 3, 4};
    mqc_job jobs[N] = {{KDT_Q8_0, 4, 64, 0, 136}, {KDT_Q8_0, 2, 64, 136, 68}, {KDT_Q8_0, 1, 32, 204, 34}};
    uint8_t pay[238], back[238];
    for (size_t i = 0; i < sizeof pay; i++) pay[i] = (uint8_t)(i * 7 + 3);
    ASSERT_EQ(mqc_write(d.cache, m, KDT_Q8_0, FP, sizeof FP, jobs, N, pay, sizeof pay), 0);
    memset(back, 0, sizeof back);
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q8_0, FP, sizeof FP, jobs, N, back, sizeof back), 1);
    ASSERT(memcmp(pay, back, sizeof pay) == 0);
    mqc_job other[N];
    memcpy(other, jobs, sizeof jobs);
    other[1].rows = 3;
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q8_0, FP, sizeof FP, other, N, back, sizeof back), 0);
    memcpy(other, jobs, sizeof jobs);
    other[2].dt = KDT_Q4_0;
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q8_0, FP, sizeof FP, other, N, back, sizeof back), 0);
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q8_0, FP, sizeof FP, jobs, N - 1, back, sizeof back), 0);
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q4_K, FP, sizeof FP, jobs, N, back, sizeof back), 0); /* no such file */
    static const uint8_t FP2[4] = {1, 2, 3, 5}; /* converters that write other bytes */
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q8_0, FP2, sizeof FP2, jobs, N, back, sizeof back), 0);
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q8_0, FP, sizeof FP - 1, jobs, N, back, sizeof back), 0);
    ASSERT_EQ(mqc_read(d.cache, m, KDT_Q8_0, FP, sizeof FP, jobs, N, back, sizeof back), 1);
    model_free(m);
    kbackend_destroy(kb);
}

/* A cache directory that cannot be made (its parent is a file): the load converts and succeeds. */
TEST(unwritable_cache_is_only_a_warning) {
    dirs d;
    setup(&d);
    char file[700], cache[760];
    snprintf(file, sizeof file, "%s/not-a-dir", d.root);
    FILE *f = fopen(file, "w");
    ASSERT(f && fclose(f) == 0);
    snprintf(cache, sizeof cache, "%s/weights-cache", file);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    model *ref = load(kb, d.model, KDT_Q4_K, NULL), *m = load(kb, d.model, KDT_Q4_K, cache);
    ASSERT(same_weights(ref, m) > 0);
    model_free(ref), model_free(m);
    kbackend_destroy(kb);
}

static bool exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static void write_file(const char *p, const void *data, size_t len) {
    FILE *f = fopen(p, "wb");
    ASSERT(f && fwrite(data, 1, len, f) == len && fclose(f) == 0);
}

/* Loads dir as q8_0 through the cache and returns the path of the one cache file that appeared or
 * was used (the newest by mtime). */
static void load_cached(kbackend *kb, const char *dir, const dirs *d, char *file) {
    model_free(load(kb, dir, KDT_Q8_0, d->cache));
    DIR *dd = opendir(d->cache);
    ASSERT(dd);
    struct dirent *e;
    struct timespec best = {0, 0};
    *file = 0;
    while ((e = readdir(dd))) {
        size_t l = strlen(e->d_name);
        if (l <= 4 || strcmp(e->d_name + l - 4, ".pqc")) continue;
        char p[1024];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", d->cache, e->d_name);
        ASSERT_EQ(stat(p, &st), 0);
        if (st.st_mtim.tv_sec > best.tv_sec || (st.st_mtim.tv_sec == best.tv_sec && st.st_mtim.tv_nsec > best.tv_nsec)) {
            best = st.st_mtim;
            snprintf(file, 1024, "%s", p);
        }
    }
    closedir(dd);
    ASSERT(*file);
}

static void set_mtime(const char *p, time_t t) {
    struct timespec ts[2] = {{.tv_sec = t}, {.tv_sec = t}};
    ASSERT_EQ(utimensat(AT_FDCWD, p, ts, 0), 0);
}

TEST(prune_removes_what_cannot_be_used_again) {
    dirs d;
    setup(&d);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    char other[700], moved[700], f_model[1024], f_other[1024];
    snprintf(other, sizeof other, "%s/other", d.root);
    snprintf(moved, sizeof moved, "%s/model-moved", d.root);
    copy_model(other);
    load_cached(kb, d.model, &d, f_model);
    load_cached(kb, other, &d, f_other);
    ASSERT(strcmp(f_model, f_other) != 0);
    ASSERT_EQ(mqc_prune(d.cache, 0), 0); /* both directories exist: nothing to remove */
    ASSERT(exists(f_model) && exists(f_other));

    /* the model directory moves: its old file can never hit again (the path is in the key) */
    ASSERT_EQ(rename(d.model, moved), 0);
    /* beside it: an older format's file, a killed writer's temporary, a live writer's temporary
     * (the parent process), and a file that is not the cache's */
    char old[1024], dead_tmp[1024], live_tmp[1024], notes[1024];
    snprintf(old, sizeof old, "%s/%064d.pqc", d.cache, 1);
    write_file(old, "PEFTDQC1" "0123456789abcdef0123456789abcdef", 40);
    pid_t child = fork();
    ASSERT(child >= 0);
    if (child == 0) _exit(0);
    ASSERT_EQ(waitpid(child, NULL, 0), child);
    snprintf(dead_tmp, sizeof dead_tmp, "%s/%064d.pqc.tmp.%ld", d.cache, 2, (long)child);
    snprintf(live_tmp, sizeof live_tmp, "%s/%064d.pqc.tmp.%ld", d.cache, 3, (long)getppid());
    snprintf(notes, sizeof notes, "%s/notes.txt", d.cache);
    write_file(dead_tmp, "partial", 7);
    write_file(live_tmp, "partial", 7);
    write_file(notes, "mine", 4);
    ASSERT_EQ(mqc_prune(d.cache, 0), 3);
    if (exists(f_model)) FAIL("the moved model directory's cache file was kept");
    if (exists(old)) FAIL("the older format's file was kept");
    if (exists(dead_tmp)) FAIL("the killed writer's temporary was kept");
    ASSERT(exists(f_other) && exists(live_tmp) && exists(notes));
    ASSERT_EQ(mqc_prune(d.cache, 0), 0);

    /* the moved directory loads from its new path: a miss, converted, written, used again */
    char f_moved[1024];
    load_cached(kb, moved, &d, f_moved);
    ino_t ino = inode_of(f_moved);
    load_cached(kb, moved, &d, f_moved);
    ASSERT_EQ(inode_of(f_moved), ino);
    kbackend_destroy(kb);
}

TEST(prune_keeps_the_recently_used_within_the_budget) {
    dirs d;
    setup(&d);
    kbackend *kb = kbackend_cpu_create(2);
    ASSERT(kb);
    char b_dir[700], c_dir[700], fa[1024], fb[1024], fc[1024];
    snprintf(b_dir, sizeof b_dir, "%s/b", d.root);
    snprintf(c_dir, sizeof c_dir, "%s/c", d.root);
    copy_model(b_dir), copy_model(c_dir);
    load_cached(kb, d.model, &d, fa);
    load_cached(kb, b_dir, &d, fb);
    load_cached(kb, c_dir, &d, fc);
    /* used long ago, in this order: a, then b, then c */
    time_t t0 = time(NULL) - 86400;
    set_mtime(fa, t0), set_mtime(fb, t0 + 10), set_mtime(fc, t0 + 20);
    /* a is served again: a hit (same file) that counts as a use */
    ino_t ino = inode_of(fa);
    model_free(load(kb, d.model, KDT_Q8_0, d.cache));
    ASSERT_EQ(inode_of(fa), ino);
    struct stat st;
    ASSERT_EQ(stat(fa, &st), 0);
    if (st.st_mtim.tv_sec < t0 + 3600) FAIL("a hit did not mark the file used");
    uint64_t size = (uint64_t)st.st_size;
    /* room for two: the least recently used (b) goes */
    ASSERT_EQ(mqc_prune(d.cache, 2 * size), 1);
    ASSERT(exists(fa) && !exists(fb) && exists(fc));
    /* room for less than one: the most recently used (a) stays anyway */
    ASSERT_EQ(mqc_prune(d.cache, 1), 1);
    ASSERT(exists(fa) && !exists(fc));
    ASSERT_EQ(mqc_prune(d.cache, 1), 0);
    model *m = load(kb, d.model, KDT_Q8_0, d.cache); /* still a hit */
    ASSERT_EQ(inode_of(fa), ino);
    model_free(m);
    ASSERT_EQ(mqc_prune(d.root, 0), 0); /* a directory without cache files: nothing */
    char absent[700];
    snprintf(absent, sizeof absent, "%s/no-such-dir", d.root);
    ASSERT_EQ(mqc_prune(absent, 0), 0);
    kbackend_destroy(kb);
}

TEST_MAIN(restart_reads_the_converted_bytes_back, stale_or_damaged_cache_is_converted_again,
          plan_and_dtype_are_part_of_the_key, unwritable_cache_is_only_a_warning,
          prune_removes_what_cannot_be_used_again, prune_keeps_the_recently_used_within_the_budget)
