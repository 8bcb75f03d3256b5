/* tests/unit/test_tokenizer_gguf.c — the tokenizer built from GGUF tokenizer.ggml.* metadata
 * (server/text/tokenizer_gguf.c) against independent references:
 *   - vocab-only GGUFs written by llama.cpp's convert_hf_to_gguf.py (fixtures made by
 *     tests/fixtures/tokenizer_gguf/make_gguf_tokenizer_fixtures.py) encode (with and without
 *     specials) and decode every corpus case exactly as transformers does with the tokenizer
 *     the GGUF came from (expected_*.jsonl), and exactly as tokenizer_load of that
 *     tokenizer.json does in C (corpus + special-token cases);
 *   - add-BOS/EOS as llama.cpp reads the GGUF (add_bos_token/add_eos_token, else its defaults);
 *   - hostile metadata (wrong types, wrong lengths, ids out of range, bad merges, bad tokens,
 *     unknown model / pre names), rebuilt from the real fixtures one key at a time: each is
 *     refused with the expected status and one line naming the key, never a crash.
 * A missing fixture fails. Run from the repository root.
 */
#include <cJSON.h>
#include <stdbool.h>

#include "lib/status.h"
#include "server/model/gguf.h"
#include "server/text/tokenizer.h"
#include "tests/harness/test.h"
#include "tests/harness/tok_corpus.h"

#define TFIX "tests/fixtures/tokenizer"
#define GFIX "tests/fixtures/tokenizer_gguf"

/* ---- cases ---- */

/* Special-token text every family sees (the "t" records of the expected files add more). */
static const char *const EXTRA[] = {
    "<s>Hello</s> <unk> world",
    "<|begin_of_text|>Hi<|endoftext|> there",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
    "<bos><start_of_turn>user\nHello there<end_of_turn>\n<start_of_turn>model\n",
    "  leading spaces, trailing  ",
    "",
    " ",
    "\t\ttabs\tand\nnewlines\n\n",
    "digits 1234567890 ０１２ and 3.14159",
};

/* ---- loading ---- */

/* Opens path, builds the tokenizer and closes the file at once: the tokenizer must not keep
 * pointers into the mapping. */
static tokenizer *load_gguf(const char *path) {
    gguf_file *f = NULL;
    char err[512] = "";
    int rc = gguf_open(path, &f, err, sizeof err);
    if (rc) FAIL("gguf_open(%s) = %d: %s", path, rc, err);
    tokenizer *t = NULL;
    rc = tokenizer_load_gguf(f, &t, err, sizeof err);
    gguf_close(f);
    if (rc) FAIL("tokenizer_load_gguf(%s) = %d: %s", path, rc, err);
    return t;
}

static tokenizer *load_json(const char *dir) {
    tokenizer *t = NULL;
    char err[512] = "";
    int rc = tokenizer_load(dir, &t, err, sizeof err);
    if (rc) FAIL("tokenizer_load(%s) = %d: %s", dir, rc, err);
    return t;
}

/* ---- HF expected records ---- */


/* The GGUF tokenizer against tokenizer_load of the tokenizer.json it came from: encode with
 * and (when with_special) without specials, decode of those ids with and without skipping. */
static void check_same(const tokenizer *g, const tokenizer *j, const char *name, const tok_cases *c, bool with_special) {
    size_t n = c->n + sizeof(EXTRA) / sizeof(*EXTRA), ok = 0, checks = 0;
    long bad = -1;
    for (size_t k = 0; k < n; k++) {
        const char *text = k < c->n ? c->text[k] : EXTRA[k - c->n];
        size_t len = k < c->n ? c->len[k] : strlen(text);
        for (int sp = 0; sp < (with_special ? 2 : 1); sp++) {
            int32_t *a = NULL, *b = NULL;
            size_t na = 0, nb = 0;
            ASSERT_EQ(tokenizer_encode(g, text, len, sp, &a, &na), 0);
            ASSERT_EQ(tokenizer_encode(j, text, len, sp, &b, &nb), 0);
            bool same = tok_ids_eq(a, na, b, nb);
            for (int skip = 0; skip < 2 && same; skip++) {
                char *da = NULL, *db = NULL;
                ASSERT_EQ(tokenizer_decode(g, b, nb, skip, &da, NULL), 0);
                ASSERT_EQ(tokenizer_decode(j, b, nb, skip, &db, NULL), 0);
                same = !strcmp(da, db);
                free(da);
                free(db);
            }
            checks++;
            ok += same;
            if (!same && bad < 0) {
                bad = (long)k;
                fprintf(stderr, "    %s: first difference at case %zu (add_special=%d): \"%.200s\"\n", name, k, sp, text);
                tok_print_ids("gguf", a, na);
                tok_print_ids("json", b, nb);
            }
            free(a);
            free(b);
        }
    }
    printf("    %s vs tokenizer.json in C: %zu/%zu (encode%s + decode both ways)\n", name, ok, checks,
           with_special ? " with and without specials" : " without specials");
    if (bad >= 0) FAIL("%s: GGUF and tokenizer.json tokenizers differ", name);
}

static void parity(const char *gguf, const char *name, const char *expected, const char *json_dir, bool with_special) {
    tok_cases c = tok_corpus_load();
    tokenizer *g = load_gguf(gguf);
    tok_check_expected(g, name, expected, &c);
    tokenizer *j = load_json(json_dir);
    check_same(g, j, name, &c, with_special);
    tokenizer_free(j);
    tokenizer_free(g);
    tok_corpus_free(&c);
}

/* Llama 2 / Mistral / Phi-3 shape (stories260K's tok512.model). */
TEST(parity_llama_spm) {
    parity(GFIX "/stories_spm.gguf", "stories_spm", GFIX "/expected_stories_spm.jsonl", GFIX "/stories_spm_hf", true);
}
TEST(parity_gemma_spm) {
    parity(GFIX "/gemma_spm.gguf", "gemma_spm", GFIX "/expected_gemma_spm.jsonl", GFIX "/gemma_spm_hf", true);
}
TEST(parity_llama3_bpe) {
    parity(GFIX "/llama3bl.gguf", "llama3bl", TFIX "/expected_llama3bl.jsonl", TFIX "/llama3bl", true);
}
TEST(parity_qwen2_bpe) {
    parity(GFIX "/qwen2bl.gguf", "qwen2bl", TFIX "/expected_qwen2bl.jsonl", TFIX "/qwen2bl", true);
}
TEST(parity_gpt2_bpe) {
    parity(GFIX "/gpt2bl.gguf", "gpt2bl", TFIX "/expected_gpt2bl.jsonl", TFIX "/gpt2bl", true);
}
TEST(parity_smollm_bpe) {
    parity(GFIX "/smollm_bl.gguf", "smollm_bl", GFIX "/expected_smollm_bl.jsonl", GFIX "/smollm_bl_hf", true);
}

/* ---- a GGUF writer: the fixtures' metadata re-emitted with one key changed ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} gbuf;

static void put(gbuf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ASSERT(b->p);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(gbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(gbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_strn(gbuf *b, const char *s, size_t n) {
    put_u64(b, n);
    put(b, s, n);
}
static void put_key(gbuf *b, const char *key, gguf_vtype t) {
    put_strn(b, key, strlen(key));
    put_u32(b, t);
}

/* One KV of src, as it is. */
static void copy_kv(gbuf *b, const gguf_file *f, size_t i) {
    const char *key = gguf_kv_key(f, i);
    gguf_vtype t = gguf_kv_type(f, i);
    put_key(b, key, t);
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64;
            float f32; double f64; bool bl; } v;
    const char *s;
    size_t n;
    gguf_array a;
    switch (t) {
    case GGUF_VT_U8: ASSERT_EQ(gguf_get_u8(f, key, &v.u8, NULL, 0), 0); put(b, &v.u8, 1); break;
    case GGUF_VT_I8: ASSERT_EQ(gguf_get_i8(f, key, &v.i8, NULL, 0), 0); put(b, &v.i8, 1); break;
    case GGUF_VT_U16: ASSERT_EQ(gguf_get_u16(f, key, &v.u16, NULL, 0), 0); put(b, &v.u16, 2); break;
    case GGUF_VT_I16: ASSERT_EQ(gguf_get_i16(f, key, &v.i16, NULL, 0), 0); put(b, &v.i16, 2); break;
    case GGUF_VT_U32: ASSERT_EQ(gguf_get_u32(f, key, &v.u32, NULL, 0), 0); put(b, &v.u32, 4); break;
    case GGUF_VT_I32: ASSERT_EQ(gguf_get_i32(f, key, &v.i32, NULL, 0), 0); put(b, &v.i32, 4); break;
    case GGUF_VT_U64: ASSERT_EQ(gguf_get_u64(f, key, &v.u64, NULL, 0), 0); put(b, &v.u64, 8); break;
    case GGUF_VT_I64: ASSERT_EQ(gguf_get_i64(f, key, &v.i64, NULL, 0), 0); put(b, &v.i64, 8); break;
    case GGUF_VT_F32: ASSERT_EQ(gguf_get_f32(f, key, &v.f32, NULL, 0), 0); put(b, &v.f32, 4); break;
    case GGUF_VT_F64: ASSERT_EQ(gguf_get_f64(f, key, &v.f64, NULL, 0), 0); put(b, &v.f64, 8); break;
    case GGUF_VT_BOOL: {
        ASSERT_EQ(gguf_get_bool(f, key, &v.bl, NULL, 0), 0);
        uint8_t x = v.bl;
        put(b, &x, 1);
        break;
    }
    case GGUF_VT_STR: ASSERT_EQ(gguf_get_str(f, key, &s, &n, NULL, 0), 0); put_strn(b, s, n); break;
    case GGUF_VT_ARR:
        ASSERT_EQ(gguf_get_arr(f, key, GGUF_VT_COUNT, &a, NULL, 0), 0);
        put_u32(b, a.elem_type);
        put_u64(b, a.count);
        put(b, a.data, a.nbytes);
        break;
    default: FAIL("unexpected KV type %d", (int)t);
    }
}

/* An edit: drop `drop` (may be NULL) and append what `add` writes (counting its KVs). */
typedef int (*add_fn)(gbuf *b, const gguf_file *src, const void *arg);

/* The image of src with the edit, as an exact-size buffer (*len bytes). */
static uint8_t *rebuild(const gguf_file *src, const char *drop, add_fn add, const void *arg, size_t *len) {
    gbuf kv = {0}, out = {0};
    uint64_t n_kv = 0;
    for (size_t i = 0; i < gguf_kv_count(src); i++) {
        if (drop && !strcmp(gguf_kv_key(src, i), drop)) continue;
        copy_kv(&kv, src, i);
        n_kv++;
    }
    if (add) n_kv += (uint64_t)add(&kv, src, arg);
    put(&out, "GGUF", 4);
    put_u32(&out, 3);
    put_u64(&out, 0);
    put_u64(&out, n_kv);
    put(&out, kv.p, kv.n);
    while (out.n % 32) put(&out, "", 1);
    free(kv.p);
    uint8_t *exact = malloc(out.n);
    ASSERT(exact);
    memcpy(exact, out.p, out.n);
    free(out.p);
    *len = out.n;
    return exact;
}

static gguf_file *open_fixture(const char *path) {
    gguf_file *f = NULL;
    char err[512];
    if (gguf_open(path, &f, err, sizeof err)) FAIL("the committed fixture %s: %s", path, err);
    return f;
}

/* Loads a rebuilt image; returns the status, err filled; t (if not NULL) gets the tokenizer. */
static int load_image(const uint8_t *img, size_t len, tokenizer **t, char *err, size_t errlen) {
    gguf_file *f = NULL;
    int rc = gguf_parse(img, len, "edited.gguf", &f, err, errlen);
    if (rc) FAIL("the rebuilt image does not parse: %s", err);
    tokenizer *tk = NULL;
    rc = tokenizer_load_gguf(f, &tk, err, errlen);
    gguf_close(f);
    if (rc) ASSERT(tk == NULL);
    if (t) *t = tk;
    else tokenizer_free(tk);
    return rc;
}

/* ---- edits ---- */

typedef struct {
    const char *key;
    gguf_vtype type;
    const void *val; /* scalar value bytes, or the string */
} kv_arg;

static int add_scalar(gbuf *b, const gguf_file *src, const void *arg) {
    const kv_arg *k = arg;
    put_key(b, k->key, k->type);
    if (k->type == GGUF_VT_STR) put_strn(b, k->val, strlen(k->val));
    else put(b, k->val, k->type == GGUF_VT_U8 || k->type == GGUF_VT_BOOL ? 1 : k->type == GGUF_VT_U64 ? 8 : 4);
    return 1;
}

typedef struct {
    const char *key;
    int64_t drop_last;    /* elements to leave out of the copy (the count says so) */
    gguf_vtype retype;    /* GGUF_VT_COUNT: keep; else write this element type, same bytes */
    const char *out_key;  /* written under this key (NULL: key) */
} arr_arg;

/* The key's array with fewer elements or relabelled elements (same byte width). */
static int add_arr_edit(gbuf *b, const gguf_file *src, const void *arg) {
    const arr_arg *e = arg;
    gguf_array a;
    ASSERT_EQ(gguf_get_arr(src, e->key, GGUF_VT_COUNT, &a, NULL, 0), 0);
    ASSERT(a.elem_type != GGUF_VT_STR);
    size_t w = a.count ? (size_t)(a.nbytes / a.count) : 4;
    put_key(b, e->out_key ? e->out_key : e->key, GGUF_VT_ARR);
    put_u32(b, e->retype == GGUF_VT_COUNT ? a.elem_type : e->retype);
    put_u64(b, a.count - (uint64_t)e->drop_last);
    put(b, a.data, w * (size_t)(a.count - (uint64_t)e->drop_last));
    return 1;
}

typedef struct {
    const char *key;
    int64_t index;       /* element to replace */
    const char *with;    /* its new bytes */
    size_t with_len;
} str_arg;

/* A string array with element `index` replaced. */
static int add_str_edit(gbuf *b, const gguf_file *src, const void *arg) {
    const str_arg *e = arg;
    gguf_array a;
    ASSERT_EQ(gguf_get_arr(src, e->key, GGUF_VT_STR, &a, NULL, 0), 0);
    put_key(b, e->key, GGUF_VT_ARR);
    put_u32(b, GGUF_VT_STR);
    put_u64(b, a.count);
    for (uint64_t i = 0; i < a.count; i++) {
        const char *s;
        size_t n;
        ASSERT_EQ(gguf_arr_str(&a, i, &s, &n), 0);
        if ((int64_t)i == e->index) put_strn(b, e->with, e->with_len);
        else put_strn(b, s, n);
    }
    return 1;
}

/* A float array with element `index` set to a NaN. */
static int add_nan_score(gbuf *b, const gguf_file *src, const void *arg) {
    gguf_array a;
    ASSERT_EQ(gguf_get_arr(src, "tokenizer.ggml.scores", GGUF_VT_F32, &a, NULL, 0), 0);
    put_key(b, "tokenizer.ggml.scores", GGUF_VT_ARR);
    put_u32(b, GGUF_VT_F32);
    put_u64(b, a.count);
    for (uint64_t i = 0; i < a.count; i++) {
        float x = i == 7 ? NAN : 0.0f;
        if (i != 7) memcpy(&x, a.data + 4 * i, 4);
        put(b, &x, 4);
    }
    return 1;
}

static int add_type_value(gbuf *b, const gguf_file *src, const void *arg) {
    gguf_array a;
    ASSERT_EQ(gguf_get_arr(src, "tokenizer.ggml.token_type", GGUF_VT_I32, &a, NULL, 0), 0);
    put_key(b, "tokenizer.ggml.token_type", GGUF_VT_ARR);
    put_u32(b, GGUF_VT_I32);
    put_u64(b, a.count);
    for (uint64_t i = 0; i < a.count; i++) {
        int32_t x;
        memcpy(&x, a.data + 4 * i, 4);
        if (i == 9) x = *(const int32_t *)arg;
        put(b, &x, 4);
    }
    return 1;
}

typedef struct {
    const char *name;
    const char *fixture;
    const char *drop;
    add_fn add;
    const void *arg;
    int want_rc;
    const char *want_msg;
} hostile_case;

static const uint32_t U32_HUGE = 0xFFFFFFFFu, U32_512 = 512, U32_1 = 1;
static const uint8_t U8_1 = 1, BOOL_1 = 1;
static const int32_t TT_BAD = 9, TT_NEG = -1;

#define SPM GFIX "/stories_spm.gguf"
#define BPE GFIX "/qwen2bl.gguf"
#define KV(k, t, v) (&(kv_arg){k, t, v})

static const hostile_case HOSTILE[] = {
    {"no model", SPM, "tokenizer.ggml.model", NULL, NULL, PEFTD_ENOTFOUND, "no tokenizer.ggml.model"},
    {"model bert", SPM, "tokenizer.ggml.model", add_scalar, KV("tokenizer.ggml.model", GGUF_VT_STR, "bert"),
     PEFTD_EUNSUPPORTED, "tokenizer.ggml.model 'bert' is not supported"},
    {"model with newline", SPM, "tokenizer.ggml.model", add_scalar, KV("tokenizer.ggml.model", GGUF_VT_STR, "x\ny"),
     PEFTD_EUNSUPPORTED, "'x?y'"},
    {"model u32", SPM, "tokenizer.ggml.model", add_scalar, KV("tokenizer.ggml.model", GGUF_VT_U32, &U32_1),
     PEFTD_EFORMAT, "tokenizer.ggml.model"},
    {"pre tekken", BPE, "tokenizer.ggml.pre", add_scalar, KV("tokenizer.ggml.pre", GGUF_VT_STR, "tekken"),
     PEFTD_EUNSUPPORTED, "tokenizer.ggml.pre 'tekken'"},
    {"pre default", BPE, "tokenizer.ggml.pre", add_scalar, KV("tokenizer.ggml.pre", GGUF_VT_STR, "default"),
     PEFTD_EUNSUPPORTED, "tokenizer.ggml.pre 'default'"},
    {"pre missing", BPE, "tokenizer.ggml.pre", NULL, NULL, PEFTD_EUNSUPPORTED, "tokenizer.ggml.pre is missing"},
    {"pre u32", BPE, "tokenizer.ggml.pre", add_scalar, KV("tokenizer.ggml.pre", GGUF_VT_U32, &U32_1), PEFTD_EFORMAT,
     "tokenizer.ggml.pre"},
    {"tokens missing", SPM, "tokenizer.ggml.tokens", NULL, NULL, PEFTD_EFORMAT, "tokenizer.ggml.tokens is missing"},
    {"tokens not strings", SPM, "tokenizer.ggml.tokens", add_arr_edit,
     &(arr_arg){"tokenizer.ggml.scores", 0, GGUF_VT_COUNT, "tokenizer.ggml.tokens"}, PEFTD_EFORMAT,
     "'tokenizer.ggml.tokens' is an array of f32"},
    {"tokens invalid UTF-8", SPM, "tokenizer.ggml.tokens", add_str_edit,
     &(str_arg){"tokenizer.ggml.tokens", 300, "\xff\xfe", 2}, PEFTD_EFORMAT, "tokenizer.ggml.tokens[300]"},
    {"token with NUL", BPE, "tokenizer.ggml.tokens", add_str_edit, &(str_arg){"tokenizer.ggml.tokens", 5, "a\0b", 3},
     PEFTD_EFORMAT, "NUL byte"},
    {"scores short", SPM, "tokenizer.ggml.scores", add_arr_edit, &(arr_arg){"tokenizer.ggml.scores", 1, GGUF_VT_COUNT, NULL},
     PEFTD_EFORMAT, "tokenizer.ggml.scores has 511 elements for 512 tokens"},
    {"scores as i32", SPM, "tokenizer.ggml.scores", add_arr_edit, &(arr_arg){"tokenizer.ggml.scores", 0, GGUF_VT_I32, NULL},
     PEFTD_EFORMAT, "tokenizer.ggml.scores is an array of i32"},
    {"scores missing", SPM, "tokenizer.ggml.scores", NULL, NULL, PEFTD_EFORMAT, "tokenizer.ggml.scores is missing"},
    {"score NaN", SPM, "tokenizer.ggml.scores", add_nan_score, NULL, PEFTD_EFORMAT, "tokenizer.ggml.scores[7]"},
    {"token_type short", SPM, "tokenizer.ggml.token_type", add_arr_edit,
     &(arr_arg){"tokenizer.ggml.token_type", 3, GGUF_VT_COUNT, NULL}, PEFTD_EFORMAT, "tokenizer.ggml.token_type has 509"},
    {"token_type as f32", SPM, "tokenizer.ggml.token_type", add_arr_edit,
     &(arr_arg){"tokenizer.ggml.token_type", 0, GGUF_VT_F32, NULL}, PEFTD_EFORMAT, "tokenizer.ggml.token_type is an array of f32"},
    {"token_type 9", BPE, "tokenizer.ggml.token_type", add_type_value, &TT_BAD, PEFTD_EFORMAT,
     "tokenizer.ggml.token_type[9] = 9"},
    {"token_type -1", SPM, "tokenizer.ggml.token_type", add_type_value, &TT_NEG, PEFTD_EFORMAT,
     "tokenizer.ggml.token_type[9] = -1"},
    {"bos out of range", SPM, "tokenizer.ggml.bos_token_id", add_scalar,
     KV("tokenizer.ggml.bos_token_id", GGUF_VT_U32, &U32_512), PEFTD_EFORMAT, "tokenizer.ggml.bos_token_id = 512 is out of range"},
    {"eos huge", BPE, "tokenizer.ggml.eos_token_id", add_scalar, KV("tokenizer.ggml.eos_token_id", GGUF_VT_U32, &U32_HUGE),
     PEFTD_EFORMAT, "tokenizer.ggml.eos_token_id = 4294967295 is out of range"},
    {"eos string", BPE, "tokenizer.ggml.eos_token_id", add_scalar, KV("tokenizer.ggml.eos_token_id", GGUF_VT_STR, "2"),
     PEFTD_EFORMAT, "tokenizer.ggml.eos_token_id"},
    {"pad out of range", SPM, "tokenizer.ggml.padding_token_id", add_scalar,
     KV("tokenizer.ggml.padding_token_id", GGUF_VT_U32, &U32_HUGE), PEFTD_EFORMAT, "tokenizer.ggml.padding_token_id"},
    {"unk out of range", SPM, "tokenizer.ggml.unknown_token_id", add_scalar,
     KV("tokenizer.ggml.unknown_token_id", GGUF_VT_U32, &U32_512), PEFTD_EFORMAT, "tokenizer.ggml.unknown_token_id"},
    {"add_bos u8", SPM, "tokenizer.ggml.add_bos_token", add_scalar, KV("tokenizer.ggml.add_bos_token", GGUF_VT_U8, &U8_1),
     PEFTD_EFORMAT, "tokenizer.ggml.add_bos_token"},
    {"add_bos without bos", BPE, "tokenizer.ggml.add_bos_token", add_scalar,
     KV("tokenizer.ggml.add_bos_token", GGUF_VT_BOOL, &BOOL_1), PEFTD_EFORMAT, "add_bos_token is true but there is no bos_token_id"},
    {"add_space_prefix string", SPM, "tokenizer.ggml.add_space_prefix", add_scalar,
     KV("tokenizer.ggml.add_space_prefix", GGUF_VT_STR, "yes"), PEFTD_EFORMAT, "tokenizer.ggml.add_space_prefix"},
    {"merges missing", BPE, "tokenizer.ggml.merges", NULL, NULL, PEFTD_EFORMAT, "tokenizer.ggml.merges is missing"},
    {"merges not strings", BPE, "tokenizer.ggml.merges", add_arr_edit,
     &(arr_arg){"tokenizer.ggml.token_type", 0, GGUF_VT_COUNT, "tokenizer.ggml.merges"}, PEFTD_EFORMAT,
     "'tokenizer.ggml.merges' is an array of i32"},
    {"merge without space", BPE, "tokenizer.ggml.merges", add_str_edit, &(str_arg){"tokenizer.ggml.merges", 17, "ab", 2},
     PEFTD_EFORMAT, "tokenizer.ggml.merges[17] 'ab' is not two tokens"},
    {"merge with two spaces", BPE, "tokenizer.ggml.merges", add_str_edit,
     &(str_arg){"tokenizer.ggml.merges", 3, "a  b", 4}, PEFTD_EFORMAT, "tokenizer.ggml.merges[3]"},
    {"merge of unknown tokens", BPE, "tokenizer.ggml.merges", add_str_edit,
     &(str_arg){"tokenizer.ggml.merges", 40, "\xe2\x82\xac\xe2\x82\xac \xe2\x82\xac", 10}, PEFTD_EFORMAT,
     "tokenizer.ggml.merges[40] ('"},
};

TEST(hostile_metadata_refused) {
    size_t n = sizeof(HOSTILE) / sizeof(*HOSTILE), bad = 0;
    for (size_t i = 0; i < n; i++) {
        const hostile_case *h = &HOSTILE[i];
        gguf_file *src = open_fixture(h->fixture);
        size_t len = 0;
        uint8_t *img = rebuild(src, h->drop, h->add, h->arg, &len);
        gguf_close(src);
        char err[512] = "";
        int rc = load_image(img, len, NULL, err, sizeof err);
        bool ok = rc == h->want_rc && strstr(err, h->want_msg) && !strchr(err, '\n') &&
                  !strncmp(err, "edited.gguf", 11);
        printf("    %-24s %s: %s\n", h->name, ok ? "refused" : "WRONG", err);
        if (!ok) {
            fprintf(stderr, "    %s: rc %d (want %d), message '%s' (want '%s')\n", h->name, rc, h->want_rc, err,
                    h->want_msg);
            bad++;
        }
        free(img);
    }
    if (bad) FAIL("%zu of %zu hostile metadata cases were not refused as expected", bad, n);
}

/* The writer itself: an unedited rebuild loads and tokenizes as the file does (so the refusals
 * above come from the edit, not from the writer). */
TEST(rebuilt_fixture_loads) {
    const char *fx[] = {SPM, BPE};
    for (int i = 0; i < 2; i++) {
        gguf_file *src = open_fixture(fx[i]);
        size_t len = 0;
        uint8_t *img = rebuild(src, NULL, NULL, NULL, &len);
        gguf_close(src);
        tokenizer *a = NULL, *b = load_gguf(fx[i]);
        char err[512] = "";
        ASSERT_EQ(load_image(img, len, &a, err, sizeof err), 0);
        free(img); /* the tokenizer must not point into the image */
        const char *text = "Once upon a time, <|im_start|>\xe4\xbd\xa0\xe5\xa5\xbd 123";
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        ASSERT_EQ(tokenizer_encode(a, text, strlen(text), true, &x, &nx), 0);
        ASSERT_EQ(tokenizer_encode(b, text, strlen(text), true, &y, &ny), 0);
        ASSERT(nx > 3 && tok_ids_eq(x, nx, y, ny));
        free(x);
        free(y);
        tokenizer_free(a);
        tokenizer_free(b);
    }
}

/* ---- BOS / EOS as llama.cpp reads them ---- */

/* What llama.cpp does with the file: add_bos_token / add_eos_token when present, else its
 * defaults (SPM: BOS; BPE: BOS for llama-bpe only; never EOS). */
static void check_bos_eos(const char *path) {
    gguf_file *f = open_fixture(path);
    const char *model, *pre = NULL;
    size_t ml, pl = 0;
    ASSERT_EQ(gguf_get_str(f, "tokenizer.ggml.model", &model, &ml, NULL, 0), 0);
    bool spm = ml == 5 && !memcmp(model, "llama", 5);
    gguf_get_str(f, "tokenizer.ggml.pre", &pre, &pl, NULL, 0);
    bool want_bos = spm || (pre && pl == 9 && !memcmp(pre, "llama-bpe", 9)), want_eos = false, v;
    bool has_bos_key = !gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &v, NULL, 0);
    if (has_bos_key) want_bos = v;
    if (!gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &v, NULL, 0)) want_eos = v;
    uint32_t bos = 0, eos = 0;
    bool has_bos = !gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &bos, NULL, 0);
    ASSERT_EQ(gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &eos, NULL, 0), 0);
    gguf_close(f);
    tokenizer *t = load_gguf(path);
    if (has_bos) ASSERT_EQ(tokenizer_bos_id(t), bos);
    ASSERT_EQ(tokenizer_eos_id(t), eos);
    ASSERT_EQ(tokenizer_adds_bos(t), want_bos);
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    ASSERT_EQ(tokenizer_encode(t, "Hello world", 11, false, &a, &na), 0);
    ASSERT_EQ(tokenizer_encode(t, "Hello world", 11, true, &b, &nb), 0);
    ASSERT_EQ(nb, na + want_bos + want_eos);
    if (want_bos) ASSERT_EQ(b[0], bos);
    if (want_eos) ASSERT_EQ(b[nb - 1], eos);
    ASSERT(tok_ids_eq(a, na, b + want_bos, na));
    printf("    %-28s add_bos_token %s -> BOS %s, EOS %s\n", path + sizeof(GFIX), has_bos_key ? "present" : "absent",
           want_bos ? "added" : "not added", want_eos ? "added" : "not added");
    free(a);
    free(b);
    tokenizer_free(t);
}

TEST(bos_eos_as_llama_cpp) {
    const char *all[] = {SPM, GFIX "/gemma_spm.gguf", GFIX "/llama3bl.gguf", BPE, GFIX "/gpt2bl.gguf",
                         GFIX "/smollm_bl.gguf"};
    for (size_t i = 0; i < sizeof(all) / sizeof(*all); i++) check_bos_eos(all[i]);
}

/* Flipping the flags in a real file flips what encode adds. */
TEST(bos_eos_flags_follow_the_file) {
    static const uint8_t F = 0, T = 1;
    struct {
        const char *fx, *key;
        const uint8_t *val;
        int pre, suf;
    } cases[] = {
        {SPM, "tokenizer.ggml.add_bos_token", &F, 0, 0},
        {SPM, "tokenizer.ggml.add_eos_token", &T, 1, 1},
        {GFIX "/llama3bl.gguf", "tokenizer.ggml.add_bos_token", &F, 0, 0},
        {GFIX "/llama3bl.gguf", "tokenizer.ggml.add_eos_token", &T, 1, 1},
        /* absent: llama.cpp's defaults */
        {SPM, "tokenizer.ggml.add_bos_token", NULL, 1, 0},
        {GFIX "/gemma_spm.gguf", "tokenizer.ggml.add_bos_token", NULL, 1, 0},
        {GFIX "/llama3bl.gguf", "tokenizer.ggml.add_bos_token", NULL, 1, 0},
        {BPE, "tokenizer.ggml.add_bos_token", NULL, 0, 0},
        {GFIX "/gpt2bl.gguf", "tokenizer.ggml.add_bos_token", NULL, 0, 0},
        {GFIX "/smollm_bl.gguf", "tokenizer.ggml.add_bos_token", NULL, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        gguf_file *src = open_fixture(cases[i].fx);
        size_t len = 0;
        uint8_t *img = rebuild(src, cases[i].key, cases[i].val ? add_scalar : NULL,
                               KV(cases[i].key, GGUF_VT_BOOL, cases[i].val), &len);
        gguf_close(src);
        tokenizer *t = NULL;
        char err[512] = "";
        if (load_image(img, len, &t, err, sizeof err)) FAIL("%s: %s", cases[i].key, err);
        int32_t *ids = NULL;
        size_t n = 0;
        ASSERT_EQ(tokenizer_encode(t, "Hello", 5, true, &ids, &n), 0);
        ASSERT(n >= 1);
        ASSERT_EQ(ids[0] == tokenizer_bos_id(t), cases[i].pre);
        ASSERT_EQ(tokenizer_adds_bos(t), cases[i].pre);
        ASSERT_EQ(ids[n - 1] == tokenizer_eos_id(t), cases[i].suf);
        printf("    %-16s %-30s %-6s -> BOS %d, EOS %d\n", cases[i].fx + sizeof(GFIX), cases[i].key,
               cases[i].val ? (*cases[i].val ? "true" : "false") : "absent", cases[i].pre, cases[i].suf);
        free(ids);
        tokenizer_free(t);
        free(img);
    }
}

/* The metadata a caller reads off the GGUF tokenizer. */
TEST(gguf_tokenizer_metadata) {
    tokenizer *s = load_gguf(SPM);
    ASSERT_EQ(tokenizer_vocab_size(s), 512);
    ASSERT_STREQ(tokenizer_piece(s, tokenizer_bos_id(s)), "<s>");
    ASSERT_STREQ(tokenizer_piece(s, tokenizer_eos_id(s)), "</s>");
    ASSERT(tokenizer_is_special(s, 0) && tokenizer_is_special(s, 1) && tokenizer_is_special(s, 2));
    ASSERT(!tokenizer_is_special(s, 3));
    ASSERT_STREQ(tokenizer_piece(s, 3), "<0x00>");
    unsigned char by[8];
    size_t nb = 0;
    ASSERT_EQ(tokenizer_token_bytes(s, 3 + 0xE4, by, sizeof by, &nb), 0);
    ASSERT(nb == 1 && by[0] == 0xE4);
    tokenizer_free(s);
    tokenizer *q = load_gguf(BPE);
    ASSERT_EQ(tokenizer_vocab_size(q), 1544); /* padded with [PAD] tokens as the converter writes */
    ASSERT(!tokenizer_adds_bos(q));
    ASSERT_STREQ(tokenizer_piece(q, tokenizer_eos_id(q)), "<|endoftext|>");
    ASSERT(tokenizer_is_special(q, 1537) && !tokenizer_is_special(q, 1539)); /* <|im_start|>, <tool_call> */
    ASSERT_STREQ(tokenizer_piece(q, 1539), "<tool_call>");
    tokenizer_free(q);
}

/* Gemma's tokens with "\t" (id 730) renamed and token 1000 renamed "\t\t": GemmaConverter
 * serves the missing "\t" with <0x09>, so the merge "\t" + "\t" exists on gemma* architectures
 * (arch "gemma2": one token) and not on others (arch "llama": two byte tokens). */
static int add_tab_edit(gbuf *b, const gguf_file *src, const void *arg) {
    gguf_array a;
    ASSERT_EQ(gguf_get_arr(src, "tokenizer.ggml.tokens", GGUF_VT_STR, &a, NULL, 0), 0);
    put_key(b, "tokenizer.ggml.tokens", GGUF_VT_ARR);
    put_u32(b, GGUF_VT_STR);
    put_u64(b, a.count);
    for (uint64_t i = 0; i < a.count; i++) {
        const char *s;
        size_t n;
        ASSERT_EQ(gguf_arr_str(&a, i, &s, &n), 0);
        if (i == 730) ASSERT(n == 1 && s[0] == '\t');
        if (i == 730) put_strn(b, "[T]", 3);
        else if (i == 1000) put_strn(b, "\t\t", 2);
        else put_strn(b, s, n);
    }
    const char *arch = arg;
    put_key(b, "general.architecture", GGUF_VT_STR);
    put_strn(b, arch, strlen(arch));
    return 2;
}

TEST(gemma_tab_served_by_byte_token) {
    const char *arch[2] = {"gemma2", "llama"};
    for (int i = 0; i < 2; i++) {
        /* two edits: drop general.architecture, then replace the tokens and add the arch */
        gguf_file *src = open_fixture(GFIX "/gemma_spm.gguf"), *mid = NULL;
        size_t len = 0, len2 = 0;
        char err[512] = "";
        uint8_t *img = rebuild(src, "general.architecture", NULL, NULL, &len);
        gguf_close(src);
        ASSERT_EQ(gguf_parse(img, len, "edited.gguf", &mid, err, sizeof err), 0);
        uint8_t *img2 = rebuild(mid, "tokenizer.ggml.tokens", add_tab_edit, arch[i], &len2);
        gguf_close(mid);
        free(img);
        tokenizer *t = NULL;
        if (load_image(img2, len2, &t, err, sizeof err)) FAIL("%s", err);
        int32_t *ids = NULL;
        size_t n = 0;
        ASSERT_EQ(tokenizer_encode(t, "\t\t", 2, false, &ids, &n), 0);
        printf("    arch %-6s: \"\\t\\t\" ->", arch[i]);
        for (size_t k = 0; k < n; k++) printf(" %d", ids[k]);
        printf("\n");
        ASSERT_STREQ(tokenizer_piece(t, 15), "<0x09>");
        if (i == 0) ASSERT(n == 1 && ids[0] == 1000);
        else ASSERT(n == 2 && ids[0] == 15 && ids[1] == 15);
        free(ids);
        tokenizer_free(t);
        free(img2);
    }
}

/* The incremental detokenizer over a GGUF tokenizer: every case's pieces add up to the full
 * decode (both skip modes). */
static void check_stream(const char *path) {
    tok_cases c = tok_corpus_load();
    tokenizer *t = load_gguf(path);
    size_t ok = 0, n_all = 0;
    for (int skip = 0; skip < 2; skip++)
        for (size_t k = 0; k < c.n; k++) {
            int32_t *ids = NULL;
            size_t n = 0, dl = 0, al = 0;
            char *full = NULL;
            ASSERT_EQ(tokenizer_encode(t, c.text[k], c.len[k], true, &ids, &n), 0);
            ASSERT_EQ(tokenizer_decode(t, ids, n, skip, &full, &dl), 0);
            tokenizer_stream *s = tokenizer_stream_new(t, skip);
            ASSERT(s);
            char *acc = malloc(dl + 1);
            ASSERT(acc);
            bool good = true;
            for (size_t i = 0; i <= n && good; i++) {
                const char *piece = NULL;
                size_t pl = 0;
                if (i < n) ASSERT_EQ(tokenizer_stream_push(s, ids[i], &piece, &pl), 0);
                else ASSERT_EQ(tokenizer_stream_flush(s, &piece, &pl), 0);
                if (al + pl > dl) good = false;
                else memcpy(acc + al, piece, pl);
                al += pl;
            }
            good = good && al == dl && !memcmp(acc, full, dl);
            ok += good;
            n_all++;
            if (!good) fprintf(stderr, "    %s case %zu (skip=%d): stream differs from decode\n", path, k, skip);
            tokenizer_stream_free(s);
            free(acc);
            free(full);
            free(ids);
        }
    printf("    %s: stream == decode %zu/%zu\n", path + sizeof(GFIX), ok, n_all);
    if (ok != n_all) FAIL("%s: streaming differs from decode", path);
    tokenizer_free(t);
    tok_corpus_free(&c);
}

TEST(stream_matches_decode) {
    check_stream(SPM);
    check_stream(GFIX "/gemma_spm.gguf");
    check_stream(BPE);
}

TEST_MAIN(parity_llama_spm, parity_gemma_spm, parity_llama3_bpe, parity_qwen2_bpe, parity_gpt2_bpe, parity_smollm_bpe,
          hostile_metadata_refused, rebuilt_fixture_loads, bos_eos_as_llama_cpp, bos_eos_flags_follow_the_file,
          gguf_tokenizer_metadata, stream_matches_decode, gemma_tab_served_by_byte_token)
