/* tests/unit/test_config.c — config_load: every key with a bad value is refused with a
 * message naming the key (the exact messages the hand-written loader gave before the key
 * table), unknown keys and non-object sections are refused, and a file setting every key
 * to a valid value lands each value in its field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/status.h"
#include "server/config.h"
#include "tests/harness/test.h"

/* Writes body to a fresh temporary file; its path in path[64]. */
static void write_conf(char *path, const char *body) {
    snprintf(path, 64, "/tmp/peftd_test_config_XXXXXX");
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT_EQ((long)write(fd, body, strlen(body)), (long)strlen(body));
    close(fd);
}

/* {file body, status, message after "<path>: "} */
static const struct {
    const char *body;
    int st;
    const char *msg;
} BAD[] = {
    {"{\"model\": 3}", -1000, "\"model\" must be a non-empty string"},
    {"{\"model\": \"\"}", -1000, "\"model\" must be a non-empty string"},
    {"{\"host\": true}", -1000, "\"host\" must be a non-empty string"},
    {"{\"chat_template\": []}", -1000, "\"chat_template\" must be a non-empty string"},
    {"{\"port\": 70000}", -1000, "\"port\" must be an integer in [0, 65535]"},
    {"{\"port\": 1.5}", -1000, "\"port\" must be an integer in [0, 65535]"},
    {"{\"threads\": -1}", -1000, "\"threads\" must be an integer in [0, 1024]"},
    {"{\"backend\": \"tpu\"}", -1000, "\"backend\" must be \"auto\", \"cpu\" or \"cuda\""},
    {"{\"backend\": 1}", -1000, "\"backend\" must be a non-empty string"},
    {"{\"weights\": \"q5_k\"}", -1000, "\"weights\" must be \"stored\", \"bf16\", \"q8_0\" or \"q4_k\""},
    {"{\"shutdown_grace_s\": 4000}", -1000, "\"shutdown_grace_s\" must be an integer in [0, 3600]"},
    {"{\"fast_prefill\": 1}", -1000, "\"fast_prefill\" must be true or false"},
    {"{\"bogus\": 1}", -1000, "unknown key \"bogus\""},
    {"{\"http\": 1}", -1000, "\"http\" must be an object"},
    {"{\"http\": {\"bogus\": 1}}", -1000, "http.unknown key \"bogus\""},
    {"{\"http\": {\"max_body_bytes\": 10}}", -1000, "http.\"max_body_bytes\" must be an integer in [1024, 1073741824]"},
    {"{\"http\": {\"threads\": 0}}", -1000, "http.\"threads\" must be an integer in [1, 256]"},
    {"{\"http\": {\"timeout_s\": 1e300}}", -1000, "http.\"timeout_s\" must be an integer in [0, 86400]"},
    {"{\"http\": {\"max_connections\": -1}}", -1000, "http.\"max_connections\" must be an integer in [0, 1048576]"},
    {"{\"http\": {\"max_uploads\": \"x\"}}", -1000, "http.\"max_uploads\" must be an integer in [0, 1048576]"},
    {"{\"http\": {\"import_threads\": 65}}", -1000, "http.\"import_threads\" must be an integer in [0, 64]"},
    {"{\"http\": {\"import_queue\": 70000}}", -1000, "http.\"import_queue\" must be an integer in [0, 65536]"},
    {"{\"engine\": []}", -1000, "\"engine\" must be an object"},
    {"{\"engine\": {\"bogus\": 1}}", -1000, "engine.unknown key \"bogus\""},
    {"{\"engine\": {\"max_seqs\": 0}}", -1000, "engine.\"max_seqs\" must be an integer in [1, 4096]"},
    {"{\"engine\": {\"max_batch_tokens\": 0}}", -1000, "engine.\"max_batch_tokens\" must be an integer in [1, 65536]"},
    {"{\"engine\": {\"block_size\": 2000}}", -1000, "engine.\"block_size\" must be an integer in [1, 1024]"},
    {"{\"engine\": {\"kv_blocks\": -1}}", -1000, "engine.\"kv_blocks\" must be an integer in [0, 16777216]"},
    {"{\"engine\": {\"kv_cache_mb\": -1}}", -1000, "engine.\"kv_cache_mb\" must be an integer in [0, 4194304]"},
    {"{\"engine\": {\"max_queue\": 0}}", -1000, "engine.\"max_queue\" must be an integer in [1, 1048576]"},
    {"{\"engine\": {\"prefix_cache\": 1}}", -1000, "engine.prefix_cache must be true or false"},
    {"{\"engine\": {\"prefix_cache_blocks\": -1}}", -1000,
     "engine.\"prefix_cache_blocks\" must be an integer in [0, 16777216]"},
    {"{\"store\": \"x\"}", -1000, "\"store\" must be an object"},
    {"{\"store\": {\"bogus\": 1}}", -1000, "store.unknown key \"bogus\""},
    {"{\"store\": {\"dir\": 1}}", -1000, "store.\"dir\" must be a non-empty string"},
    {"{\"store\": {\"map_mb\": 0}}", -1000, "store.\"map_mb\" must be an integer in [1, 1048576]"},
    {"{\"store\": {\"max_map_mb\": 0}}", -1000, "store.\"max_map_mb\" must be an integer in [1, 16777216]"},
    {"{\"store\": {\"host_cache_mb\": 0}}", -1000, "store.\"host_cache_mb\" must be an integer in [1, 1048576]"},
    {"{\"store\": {\"slots\": 0}}", -1000, "store.\"slots\" must be an integer in [1, 65536]"},
    {"{\"store\": {\"max_upload_mb\": 0}}", -1000, "store.\"max_upload_mb\" must be an integer in [1, 1048576]"},
    {"{\"store\": {\"map_mb\": 100, \"max_map_mb\": 50}}", -1000, "store.max_map_mb must be >= store.map_mb"},
    {"{\"log\": 1}", -1000, "\"log\" must be an object"},
    {"{\"log\": {\"bogus\": 1}}", -1000, "log.unknown key \"bogus\""},
    {"{\"log\": {\"level\": \"loud\"}}", -1000, "log.level must be debug, info, warn or error"},
    {"{\"log\": {\"level\": 1}}", -1000, "log.\"level\" must be a non-empty string"},
    {"{\"log\": {\"format\": \"xml\"}}", -1000, "log.format must be text or json"},
    {"{\"log\": {\"access\": \"\"}}", -1000, "log.\"access\" must be a non-empty string"},
    {"{\"auth\": 1}", -1000, "\"auth\" must be an object"},
    {"{\"auth\": {\"bogus\": 1}}", -1000, "auth.unknown key \"bogus\""},
    {"{\"auth\": {\"enabled\": \"yes\"}}", -1000, "auth.enabled must be true or false"},
    {"{\"auth\": {\"admin_key_env\": 1}}", -1000, "auth.\"admin_key_env\" must be a non-empty string"},
    {"{\"auth\": {\"admin_key_sha256\": \"abc\"}}", -1000, "auth.admin_key_sha256 must be 64 lowercase hex digits (sha256sum of the key)"},
    {"{\"adapters\": 1}", -1000, "\"adapters\" must be an object of name: directory"},
    {"{\"adapters\": {\"a\": 1}}", -1000, "adapters.\"a\" must be a directory path string"},
    {"{\"adapters\": {\".bad\": \"d\"}}", -1000, "adapter name \".bad\" is invalid (1-64 characters, segments of [A-Za-z0-9._-] separated by '/', none empty or starting with . or -)"},
    {"{\"http\": {\"vllm_metric_aliases\": 1}}", -1000, "http.vllm_metric_aliases must be true or false"},
    {"{\"store\": {\"load_roots\": \"/a\"}}", -1000, "store.load_roots must be an array of at most 4 directory paths"},
    {"{\"store\": {\"load_roots\": [\"/a\", \"/b\", \"/c\", \"/d\", \"/e\"]}}", -1000,
     "store.load_roots must be an array of at most 4 directory paths"},
    {"{\"store\": {\"load_roots\": [\"/a\", \"rel\"]}}", -1000, "store.load_roots[1] must be an absolute directory path"},
    {"{\"store\": {\"load_roots\": [7]}}", -1000, "store.load_roots[0] must be an absolute directory path"},
    {"{\"port\": 1, \"port\": 2}", -999, "the key \"port\" appears twice in one object"},
    {"[1]", -999, "not a JSON object"},
};

TEST(each_bad_key_is_refused_naming_it) {
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        char path[64], err[1024] = "", want[1200];
        write_conf(path, BAD[i].body);
        peftd_config c;
        config_default(&c);
        int st = config_load(&c, path, err, sizeof err);
        config_free(&c);
        unlink(path);
        snprintf(want, sizeof want, "%s: %s", path, BAD[i].msg);
        if (st != BAD[i].st || strcmp(err, want)) FAIL("%s: got %d \"%s\", want %d \"%s\"", BAD[i].body, st, err, BAD[i].st, want);
    }
}

TEST(every_key_lands_in_its_field) {
    const char *body =
        "{\"model\": \"m\", \"host\": \"h\", \"chat_template\": \"t.jinja\", \"port\": 1, \"threads\": 2,"
        " \"backend\": \"cpu\", \"weights\": \"q4_k\", \"shutdown_grace_s\": 3, \"fast_prefill\": true, \"comment\": \"x\","
        " \"http\": {\"max_body_bytes\": 2048, \"threads\": 5, \"timeout_s\": 6, \"max_connections\": 7,"
        "  \"max_uploads\": 8, \"import_threads\": 9, \"import_queue\": 10, \"vllm_metric_aliases\": true},"
        " \"engine\": {\"max_seqs\": 11, \"max_batch_tokens\": 12, \"block_size\": 13, \"kv_blocks\": 14,"
        "  \"kv_cache_mb\": 15, \"max_queue\": 16, \"prefix_cache\": false, \"prefix_cache_blocks\": 22},"
        " \"store\": {\"dir\": \"s\", \"map_mb\": 17, \"max_map_mb\": 18, \"host_cache_mb\": 19, \"slots\": 20,"
        "  \"max_upload_mb\": 21, \"load_roots\": [\"/r1\", \"/r2\"]},"
        " \"log\": {\"level\": \"warn\", \"format\": \"json\", \"access\": \"off\"},"
        " \"auth\": {\"enabled\": true, \"admin_key_env\": \"K\", \"comment\": \"y\","
        "  \"admin_key_sha256\": \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"},"
        " \"adapters\": {\"a\": \"dir_a\", \"b\": \"dir_b\"}}";
    char path[64], err[1024] = "";
    write_conf(path, body);
    peftd_config c;
    config_default(&c);
    int st = config_load(&c, path, err, sizeof err);
    unlink(path);
    if (st) FAIL("%s", err);
    ASSERT_STREQ(c.model_dir, "m");
    ASSERT_STREQ(c.host, "h");
    ASSERT_STREQ(c.chat_template, "t.jinja");
    ASSERT_EQ(c.port, 1);
    ASSERT_EQ(c.threads, 2);
    ASSERT_STREQ(c.backend, "cpu");
    ASSERT_STREQ(c.weights, "q4_k");
    ASSERT_EQ(c.shutdown_grace_s, 3);
    ASSERT(c.fast_prefill);
    ASSERT_EQ((long)c.max_body_bytes, 2048L);
    ASSERT_EQ(c.http_threads, 5);
    ASSERT_EQ(c.http_timeout_s, 6);
    ASSERT_EQ(c.http_max_connections, 7);
    ASSERT_EQ(c.http_max_uploads, 8);
    ASSERT_EQ(c.http_import_threads, 9);
    ASSERT_EQ(c.http_import_queue, 10);
    ASSERT_EQ(c.engine.max_seqs, 11);
    ASSERT_EQ(c.engine.max_batch_tokens, 12);
    ASSERT_EQ(c.engine.block_size, 13);
    ASSERT_EQ(c.engine.kv_blocks, 14);
    ASSERT_EQ(c.engine.kv_cache_mb, 15);
    ASSERT_EQ(c.engine.max_queue, 16);
    ASSERT(!c.engine.prefix_cache); /* the default is true */
    ASSERT_EQ(c.engine.prefix_cache_blocks, 22);
    ASSERT_STREQ(c.store.dir, "s");
    ASSERT_EQ(c.store.map_mb, 17);
    ASSERT_EQ(c.store.max_map_mb, 18);
    ASSERT_EQ(c.store.host_cache_mb, 19);
    ASSERT_EQ(c.store.slots, 20);
    ASSERT_EQ(c.store.max_upload_mb, 21);
    ASSERT(c.http_vllm_metric_aliases);
    ASSERT_STREQ(c.store.load_roots[0], "/r1");
    ASSERT_STREQ(c.store.load_roots[1], "/r2");
    ASSERT_STREQ(c.store.load_roots[2], "");
    ASSERT_STREQ(c.log.level, "warn");
    ASSERT_STREQ(c.log.format, "json");
    ASSERT_STREQ(c.log.access, "off");
    ASSERT(c.auth.enabled);
    ASSERT_STREQ(c.auth.admin_key_env, "K");
    ASSERT_STREQ(c.auth.admin_key_sha256, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    ASSERT_EQ(c.n_adapters, 2);
    ASSERT_STREQ(c.adapters[1].name, "b");
    ASSERT_STREQ(c.adapters[1].dir, "dir_b");
    config_free(&c);
}

TEST(absent_keys_keep_the_defaults_and_shipped_configs_load) {
    const char *files[] = {"conf/peftd.json", "conf/peftd.production.json"};
    for (int i = 0; i < 2; i++) {
        peftd_config c;
        config_default(&c);
        char err[1024] = "";
        if (config_load(&c, files[i], err, sizeof err)) FAIL("%s", err);
        config_free(&c);
    }
    char path[64], err[1024] = "";
    write_conf(path, "{}");
    peftd_config c, d;
    config_default(&c);
    config_default(&d);
    ASSERT_EQ(config_load(&c, path, err, sizeof err), 0);
    unlink(path);
    ASSERT(memcmp(&c, &d, sizeof c) == 0);
}

TEST(auth_required_beyond_loopback) {
    static const struct { const char *host; bool auth, allow; int st; } C[] = {
        {"127.0.0.1", false, false, 0}, {"127.1.2.3", false, false, 0}, {"::1", false, false, 0},
        {"localhost", false, false, 0}, {"0.0.0.0", true, false, 0}, {"0.0.0.0", false, true, 0},
        {"0.0.0.0", false, false, PEFTD_EINVAL}, {"::", false, false, PEFTD_EINVAL},
        {"10.0.0.5", false, false, PEFTD_EINVAL}, {"128.0.0.1", false, false, PEFTD_EINVAL},
    };
    for (size_t i = 0; i < sizeof C / sizeof C[0]; i++) {
        peftd_config c;
        config_default(&c);
        snprintf(c.host, sizeof c.host, "%s", C[i].host);
        c.auth.enabled = C[i].auth;
        c.auth.allow_unauthenticated = C[i].allow;
        char err[512] = "";
        int st = config_check_exposure(&c, err, sizeof err);
        config_free(&c);
        if (st != C[i].st) FAIL("%s auth=%d allow=%d: got %d (%s)", C[i].host, C[i].auth, C[i].allow, st, err);
        if (st && !strstr(err, "auth.allow_unauthenticated")) FAIL("message does not name the field: %s", err);
    }
}

TEST_MAIN(auth_required_beyond_loopback, each_bad_key_is_refused_naming_it, every_key_lands_in_its_field,
          absent_keys_keep_the_defaults_and_shipped_configs_load)
