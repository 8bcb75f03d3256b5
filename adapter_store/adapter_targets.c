/* adapter_store/adapter_targets.c — which modules of the base a PEFT config adapts, and
 * the per-module rank/alpha patterns, reproducing PEFT 0.21's matching rules:
 *
 *   target_modules list  : key == entry, or key ends with "." + entry; then
 *                          layers_to_transform filters by the layer index found with
 *                          re.match(r".*?\.[^.]*\.(\d+)\.") (or "(?:^|.*?\.)P\.(\d+)\." for
 *                          each layers_pattern P) — only in the endswith branch, as PEFT
 *   target_modules str   : re.fullmatch(str, key); "all-linear" (any case) instead means
 *                          every Linear but the output layer, i.e. the 7 projections
 *   exclude_modules      : str → re.fullmatch; list → key == x or endswith "." + x
 *   modules_to_save      : keys matching re.match(rf"(^|.*\.){m}($|\..*)") are never targets
 *   rank/alpha_pattern   : first key K (in file order) with re.match(rf"(.*\.)?({K})$", key)
 * where key is the module's name in LlamaForCausalLM.named_modules(), e.g.
 * "model.layers.3.self_attn.q_proj". Regexes are Python's; PCRE2 in UTF+UCP mode runs the
 * patterns PEFT configs use (classes, groups, alternation, (?P<name>)) the same way.
 *
 * On top of PEFT we refuse what we cannot serve: a target that names no module of the base
 * (PEFT only fails when nothing matches at all) and targets that are modules other than
 * the 7 projections (norms; embed_tokens and lm_head unless the caller serves them: LoRA).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "adapter_store/adapter_internal.h"

/* Phi3ForCausalLM keeps q/k/v in one qkv_proj and gate/up in one gate_up_proj. */
static bool fused_base(const adapter_base *b) {
    return !strcmp(b->model_type, "phi3");
}

void adapter__module_key(const adapter_base *b, int layer, adapter_module m, char *buf, size_t n) {
    const char *name = adapter_module_name(m);
    if (fused_base(b) && (m == AMOD_Q || m == AMOD_K || m == AMOD_V)) name = "qkv_proj";
    if (fused_base(b) && (m == AMOD_GATE || m == AMOD_UP)) name = "gate_up_proj";
    snprintf(buf, n, "model.layers.%d.%s.%s", layer, m <= AMOD_O ? "self_attn" : "mlp", name);
}

void adapter__fused_rows(const adapter_base *b, adapter_module m, int *row0, int *total) {
    int o, q, kv;
    adapter_module_shape(b, m, &o, NULL);
    adapter_module_shape(b, AMOD_Q, &q, NULL);
    adapter_module_shape(b, AMOD_K, &kv, NULL);
    *row0 = 0, *total = o;
    if (!fused_base(b)) return;
    if (m == AMOD_Q || m == AMOD_K || m == AMOD_V) {
        *row0 = m == AMOD_Q ? 0 : m == AMOD_K ? q : q + kv;
        *total = q + 2 * kv;
    } else if (m == AMOD_GATE || m == AMOD_UP) {
        *row0 = m == AMOD_GATE ? 0 : o;
        *total = 2 * o;
    }
}

st_tensor adapter__tensor_rows(const st_tensor *t, int64_t row0, int64_t rows) {
    st_tensor v = *t;
    int64_t per_row = t->shape[0] ? t->numel / t->shape[0] : 0;
    size_t es = t->shape[0] ? t->nbytes / (size_t)t->numel : 0;
    v.shape[0] = rows;
    v.numel = rows * per_row;
    v.nbytes = (size_t)v.numel * es;
    v.data = (const unsigned char *)t->data + (size_t)(row0 * per_row) * es;
    v.offset = t->offset + (uint64_t)(row0 * per_row) * es;
    return v;
}

/* PCRE2 limits for one match. Subjects are module keys (< 64 bytes). Measured with
 * pcre2_set_match_limit bisection: PEFT-style patterns ("(.*\.)?(K)$" around literal,
 * ".*"-prefixed and "\d+" keys, target regexes with alternations, the layers_to_transform
 * and modules_to_save wrappers) need at most 146 match() calls on the keys of a 126-layer
 * model. 1e4 is ~70x that and stops a catastrophic-backtracking pattern within ~0.1 ms;
 * the backtracking depth of a match stays below the key length. */
#define RE_MATCH_LIMIT 10000u
#define RE_DEPTH_LIMIT 1000u
/* CPU seconds all the regex matches of one load may take together: real configs take
 * milliseconds; ADAPTER_MAX_PATTERNS patterns × every module of a large base × a match
 * just under the limit could otherwise take minutes. Thread CPU time, so a loaded machine
 * does not make a legitimate config fail. */
#define RE_CPU_BUDGET_S 2.0
/* The CPU clock is read once per this many matches (a clock read costs ~ a short match). */
#define RE_CLOCK_EVERY 64

typedef struct {
    const cJSON *src;           /* the pattern map compiled (rank_pattern / alpha_pattern) */
    pcre2_code **codes;         /* [n], in map order */
    int n;
} re_map;

struct adapter__re {
    pcre2_match_context *mctx;
    unsigned long calls;
    double cpu0;                /* thread CPU seconds at the first match */
    re_map maps[2];             /* 0: rank_pattern, 1: alpha_pattern */
};

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int re_state(adapter__ctx *c, struct adapter__re **out) {
    if (!c->re) {
        struct adapter__re *r = calloc(1, sizeof *r);
        if (r) r->mctx = pcre2_match_context_create(NULL);
        if (!r || !r->mctx) {
            free(r);
            return adapter__fail(c, PEFTD_ENOMEM, "out of memory matching adapter_config.json patterns");
        }
        pcre2_set_match_limit(r->mctx, RE_MATCH_LIMIT);
        pcre2_set_depth_limit(r->mctx, RE_DEPTH_LIMIT);
        r->cpu0 = thread_cpu_s();
        c->re = r;
    }
    *out = c->re;
    return 0;
}

void adapter__regex_free(adapter__ctx *c) {
    if (!c->re) return;
    for (int m = 0; m < 2; m++) {
        for (int i = 0; i < c->re->maps[m].n; i++) pcre2_code_free(c->re->maps[m].codes[i]);
        free(c->re->maps[m].codes);
    }
    pcre2_match_context_free(c->re->mctx);
    free(c->re);
    c->re = NULL;
}

static int re_compile(adapter__ctx *c, const char *field, const char *pattern, pcre2_code **out) {
    int ec;
    PCRE2_SIZE eo;
    *out = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field '%s': invalid regex '%.200s': %s at %zu",
                             field, pattern, (const char *)msg, (size_t)eo);
    }
    return 0;
}

/* One limited match of a compiled pattern. */
static int re_match(adapter__ctx *c, const char *field, const char *pattern, const pcre2_code *re,
                    const char *subject, bool full, bool *matched) {
    struct adapter__re *st;
    int rc = re_state(c, &st);
    if (rc) return rc;
    if (++st->calls % RE_CLOCK_EVERY == 0 && thread_cpu_s() - st->cpu0 > RE_CPU_BUDGET_S)
        return adapter__fail(c, PEFTD_EINVAL,
                             "adapter_config.json: field '%s': matching its patterns against the base's modules "
                             "took over %.0f s of CPU (%lu matches); simplify the patterns",
                             field, RE_CPU_BUDGET_S, st->calls);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) return adapter__fail(c, PEFTD_ENOMEM, "out of memory matching '%s'", field);
    uint32_t opts = PCRE2_ANCHORED | (full ? PCRE2_ENDANCHORED : 0);
    int r = pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, opts, md, st->mctx);
    pcre2_match_data_free(md);
    if (r == PCRE2_ERROR_MATCHLIMIT || r == PCRE2_ERROR_DEPTHLIMIT || r == PCRE2_ERROR_HEAPLIMIT)
        return adapter__fail(c, PEFTD_EINVAL,
                             "adapter_config.json: field '%s': regex '%.200s' exceeds the match limits on '%s' "
                             "(catastrophic backtracking)",
                             field, pattern, subject);
    if (r < 0 && r != PCRE2_ERROR_NOMATCH)
        return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: field '%s': regex '%.200s' failed (%d)", field,
                             pattern, r);
    *matched = r >= 0;
    return 0;
}

int adapter__regex(adapter__ctx *c, const char *field, const char *pattern, const char *subject, bool full,
                   bool *matched) {
    pcre2_code *re;
    int rc = re_compile(c, field, pattern, &re);
    if (rc) return rc;
    rc = re_match(c, field, pattern, re, subject, full, matched);
    pcre2_code_free(re);
    return rc;
}

/* The config's targeting rules, parsed once. */
typedef struct {
    const char *regex;          /* target_modules given as a string */
    const cJSON *list;          /* target_modules given as a list */
    const char *const *names;   /* or a built-in name list (all-linear / PEFT default) */
    bool use_layers;
    const cJSON *layers;        /* layers_to_transform list, or NULL with layer_int */
    int layer_int;
    const char *lp_str;         /* layers_pattern string */
    const cJSON *lp_list;       /* layers_pattern list */
    const char *excl_str;
    const cJSON *excl_list;
    const cJSON *mts;           /* modules_to_save */
} tcfg;

static const char *const all_linear[] = {"q_proj", "k_proj",       "v_proj",   "o_proj",       "gate_proj",
                                         "up_proj", "down_proj",    "qkv_proj", "gate_up_proj", NULL};

static bool ends_with_dot(const char *key, const char *suffix) {
    size_t k = strlen(key), s = strlen(suffix);
    return k > s && key[k - s - 1] == '.' && !strcmp(key + k - s, suffix);
}

static bool list_hit(const tcfg *t, const char *key, bool *exact) {
    *exact = false;
    if (t->list) {
        const cJSON *e;
        cJSON_ArrayForEach(e, t->list) if (!strcmp(key, e->valuestring)) *exact = true;
        if (*exact) return true;
        cJSON_ArrayForEach(e, t->list) if (ends_with_dot(key, e->valuestring)) return true;
        return false;
    }
    for (int i = 0; t->names[i]; i++)
        if (!strcmp(key, t->names[i])) return *exact = true;
    for (int i = 0; t->names[i]; i++)
        if (ends_with_dot(key, t->names[i])) return true;
    return false;
}

/* PEFT's check_target_module_exists for one key; layer is the key's layer index or -1. */
static int targeted(adapter__ctx *c, const tcfg *t, const char *key, int layer, bool *out) {
    const cJSON *e;
    bool m;
    int rc;
    char pat[1200];
    *out = false;
    if (t->excl_str) {
        if ((rc = adapter__regex(c, "exclude_modules", t->excl_str, key, true, &m))) return rc;
        if (m) return 0;
    } else if (t->excl_list) {
        cJSON_ArrayForEach(e, t->excl_list) if (!strcmp(key, e->valuestring) || ends_with_dot(key, e->valuestring))
            return 0;
    }
    if (t->mts) {
        cJSON_ArrayForEach(e, t->mts) {
            if ((size_t)snprintf(pat, sizeof pat, "(^|.*\\.)%s($|\\..*)", e->valuestring) >= sizeof pat)
                return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: modules_to_save entry too long");
            if ((rc = adapter__regex(c, "modules_to_save", pat, key, false, &m))) return rc;
            if (m) return 0;
        }
    }
    if (t->regex) return adapter__regex(c, "target_modules", t->regex, key, true, out);
    bool exact;
    if (!list_hit(t, key, &exact)) return 0;
    if (exact || !t->use_layers) return *out = true, 0;
    /* layers_to_transform: the key's first numbered segment (the layer) must be listed */
    bool found = false;
    if (!t->lp_str && !t->lp_list) {
        if ((rc = adapter__regex(c, "layers_to_transform", ".*?\\.[^.]*\\.(\\d+)\\.", key, false, &found))) return rc;
    } else if (t->lp_str) {
        snprintf(pat, sizeof pat, "(?:^|.*?\\.)%.1000s\\.(\\d+)\\.", t->lp_str);
        if ((rc = adapter__regex(c, "layers_pattern", pat, key, false, &found))) return rc;
    } else {
        cJSON_ArrayForEach(e, t->lp_list) {
            snprintf(pat, sizeof pat, "(?:^|.*?\\.)%.1000s\\.(\\d+)\\.", e->valuestring);
            if ((rc = adapter__regex(c, "layers_pattern", pat, key, false, &found))) return rc;
            if (found) break;
        }
    }
    /* The keys we test hold one numbered segment at most (the layer), so a match found it. */
    if (!found || layer < 0) return 0;
    if (t->layers) {
        /* every entry was checked to be an integer in [0, n_layers) by parse_tcfg */
        cJSON_ArrayForEach(e, t->layers) if ((int)e->valuedouble == layer) return *out = true, 0;
        return 0;
    }
    *out = layer == t->layer_int;
    return 0;
}

/* Every other module name of a LlamaForCausalLM (model.named_modules()), for the checks
 * that a target exists and is servable. */
static const char *const other_top[] = {"model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb",
                                        "lm_head", NULL};
static const char *const other_layer[] = {"", ".self_attn", ".mlp", ".mlp.act_fn", ".input_layernorm",
                                          ".post_attention_layernorm", NULL};

typedef int (*key_fn)(adapter__ctx *c, void *ud, const char *key, int layer, adapter_module m);

/* Calls fn for every module key of the base; m == AMOD_COUNT for non-projections. */
static int for_each_key(adapter__ctx *c, void *ud, key_fn fn) {
    char key[160];
    int rc;
    for (int i = 0; other_top[i]; i++)
        if ((rc = fn(c, ud, other_top[i], -1, AMOD_COUNT))) return rc;
    for (int l = 0; l < c->base->n_layers; l++) {
        for (int i = 0; other_layer[i]; i++) {
            snprintf(key, sizeof key, "model.layers.%d%s", l, other_layer[i]);
            if ((rc = fn(c, ud, key, l, AMOD_COUNT))) return rc;
        }
        for (int m = 0; m < AMOD_COUNT; m++) {
            adapter__module_key(c->base, l, (adapter_module)m, key, sizeof key);
            if ((rc = fn(c, ud, key, l, (adapter_module)m))) return rc;
        }
    }
    return 0;
}

typedef struct {
    const tcfg *t;
    bool *sel;
    bool *extra; /* [2]: embed_tokens, lm_head targeted; NULL: refused */
    int n_sel;
} sel_state;

static int select_key(adapter__ctx *c, void *ud, const char *key, int layer, adapter_module m) {
    sel_state *s = ud;
    bool hit;
    int rc = targeted(c, s->t, key, layer, &hit);
    if (rc || !hit) return rc;
    if (m == AMOD_COUNT && s->extra && (!strcmp(key, "model.embed_tokens") || !strcmp(key, "lm_head"))) {
        s->extra[strcmp(key, "lm_head") == 0] = true;
        s->n_sel++;
        return 0;
    }
    if (m == AMOD_COUNT)
        return adapter__fail(c, PEFTD_EUNSUPPORTED,
                             "adapter_config.json: target_modules selects '%s'; peftd adapts only the "
                             "q/k/v/o/gate/up/down projections",
                             key);
    s->sel[layer * AMOD_COUNT + m] = true;
    s->n_sel++;
    return 0;
}

typedef struct {
    const char *entry;
    bool found;
} exist_state;

static int exist_key(adapter__ctx *c, void *ud, const char *key, int layer, adapter_module m) {
    exist_state *s = ud;
    if (!strcmp(key, s->entry) || ends_with_dot(key, s->entry)) s->found = true;
    return 0;
}

/* The PEFT default target_modules for the base's model_type, as PEFT fills them in. */
static const char *const *default_targets(const char *model_type, const char *const *llama_like,
                                          const char *const *qwen_like) {
    static const char *const llama_types[] = {"llama", "mistral", NULL};
    static const char *const qwen_types[] = {"qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", NULL};
    for (int i = 0; llama_types[i]; i++)
        if (!strcmp(model_type, llama_types[i])) return llama_like;
    for (int i = 0; qwen_types[i]; i++)
        if (!strcmp(model_type, qwen_types[i])) return qwen_like;
    return NULL;
}

static int parse_tcfg(adapter__ctx *c, const char *const *defaults, tcfg *t) {
    const cJSON *cfg = c->cfg, *v = cJSON_GetObjectItemCaseSensitive(cfg, "target_modules");
    int rc;
    memset(t, 0, sizeof *t);
    if (!v || cJSON_IsNull(v)) {
        if (!defaults)
            return adapter__fail(c, PEFTD_EFORMAT,
                                 "adapter_config.json: field 'target_modules' is missing and PEFT has no default "
                                 "for model_type '%s'",
                                 c->base->model_type);
        t->names = defaults;
    } else if (cJSON_IsString(v)) {
        if (!strcasecmp(v->valuestring, "all-linear")) t->names = all_linear;
        else t->regex = v->valuestring;
    } else if ((rc = adapter__json_str_list(c, cfg, "target_modules", &t->list))) {
        return adapter__fail(c, PEFTD_EFORMAT,
                             "adapter_config.json: field 'target_modules' must be a list of strings or a string");
    }

    const cJSON *ltt = cJSON_GetObjectItemCaseSensitive(cfg, "layers_to_transform");
    if (ltt && !cJSON_IsNull(ltt)) {
        const cJSON *e;
        /* every index must be a layer of the base (PEFT would silently adapt nothing) */
        int top = c->base->n_layers - 1, li;
        if (cJSON_IsNumber(ltt)) {
            if ((rc = adapter__json_int(c, cfg, "layers_to_transform", 0, 0, top, &t->layer_int))) return rc;
            t->use_layers = true;
        } else if (cJSON_IsArray(ltt)) {
            cJSON_ArrayForEach(e, ltt) {
                if (!cJSON_IsNumber(e))
                    return adapter__fail(c, PEFTD_EFORMAT,
                                         "adapter_config.json: field 'layers_to_transform' must be an integer or "
                                         "a list of integers");
                if ((rc = adapter__num_int(c, e, "field 'layers_to_transform' (layers of the base)", 0, top, &li)))
                    return rc;
            }
            t->layers = ltt;
            t->use_layers = ltt->child != NULL; /* PEFT: an empty list means "all layers" */
        } else {
            return adapter__fail(c, PEFTD_EFORMAT,
                                 "adapter_config.json: field 'layers_to_transform' must be an integer or a list of "
                                 "integers");
        }
        if (t->use_layers && (t->regex || t->names == all_linear))
            return adapter__fail(c, PEFTD_EFORMAT,
                                 "adapter_config.json: 'layers_to_transform' cannot be used when 'target_modules' "
                                 "is a string (PEFT refuses this config)");
    }
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(cfg, "layers_pattern");
    if (lp && cJSON_IsString(lp)) {
        if (lp->valuestring[0]) t->lp_str = lp->valuestring;
    } else if ((rc = adapter__json_str_list(c, cfg, "layers_pattern", &t->lp_list))) {
        return adapter__fail(c, PEFTD_EFORMAT,
                             "adapter_config.json: field 'layers_pattern' must be a string or a list of strings");
    }
    if (t->lp_list && !t->lp_list->child) t->lp_list = NULL;

    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(cfg, "exclude_modules");
    if (ex && cJSON_IsString(ex)) t->excl_str = ex->valuestring;
    else if ((rc = adapter__json_str_list(c, cfg, "exclude_modules", &t->excl_list)))
        return adapter__fail(c, PEFTD_EFORMAT,
                             "adapter_config.json: field 'exclude_modules' must be a string or a list of strings");
    return adapter__json_str_list(c, cfg, "modules_to_save", &t->mts);
}

int adapter__select_targets(adapter__ctx *c, const char *const *defaults_llama, const char *const *defaults_qwen,
                            bool *sel, bool *extra) {
    tcfg t;
    int rc = parse_tcfg(c, default_targets(c->base->model_type, defaults_llama, defaults_qwen), &t);
    if (rc) return rc;
    /* every listed name must exist in the base (PEFT would only warn or ignore it) */
    if (t.list) {
        const cJSON *e;
        cJSON_ArrayForEach(e, t.list) {
            exist_state s = {.entry = e->valuestring};
            for_each_key(c, &s, exist_key);
            if (!s.found)
                return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: target module '%.200s' not found in base %s",
                                     e->valuestring, c->base->name);
        }
    }
    memset(sel, 0, sizeof(bool) * (size_t)c->base->n_layers * AMOD_COUNT);
    if (extra) extra[0] = extra[1] = false;
    sel_state s = {.t = &t, .sel = sel, .extra = extra};
    if ((rc = for_each_key(c, &s, select_key))) return rc;
    if (s.n_sel == 0) {
        if (t.regex)
            return adapter__fail(c, PEFTD_EINVAL,
                                 "adapter_config.json: target_modules regex '%.200s' matches no module of base %s",
                                 t.regex, c->base->name);
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: target_modules select no module of base %s",
                             c->base->name);
    }
    return 0;
}

/* Compiles every key of a pattern map once per load (they are tried against every module). */
static int pattern_map(adapter__ctx *c, const cJSON *patterns, const char *field, re_map **out) {
    struct adapter__re *st;
    int rc = re_state(c, &st);
    if (rc) return rc;
    re_map *m = &st->maps[strcmp(field, "rank_pattern") ? 1 : 0];
    *out = m;
    if (m->src == patterns) return 0;
    for (int i = 0; i < m->n; i++) pcre2_code_free(m->codes[i]);
    free(m->codes);
    memset(m, 0, sizeof *m);
    int n = cJSON_GetArraySize(patterns);
    if (n > ADAPTER_MAX_PATTERNS)
        return adapter__fail(c, PEFTD_EINVAL, "adapter_config.json: field '%s' has %d keys; at most %d are accepted",
                             field, n, ADAPTER_MAX_PATTERNS);
    if (!(m->codes = calloc((size_t)n + 1, sizeof *m->codes)))
        return adapter__fail(c, PEFTD_ENOMEM, "out of memory compiling '%s'", field);
    const cJSON *e;
    char pat[1200];
    cJSON_ArrayForEach(e, patterns) {
        if ((size_t)snprintf(pat, sizeof pat, "(.*\\.)?(%s)$", e->string) >= sizeof pat)
            return adapter__fail(c, PEFTD_EFORMAT, "adapter_config.json: %s key too long", field);
        if ((rc = re_compile(c, field, pat, &m->codes[m->n]))) return rc;
        m->n++;
    }
    m->src = patterns;
    return 0;
}

int adapter__pattern_value(adapter__ctx *c, const cJSON *patterns, const char *field, const char *key,
                           const cJSON **hit) {
    const cJSON *e;
    re_map *m;
    *hit = NULL;
    if (!patterns) return 0;
    int rc = pattern_map(c, patterns, field, &m), i = 0;
    if (rc) return rc;
    cJSON_ArrayForEach(e, patterns) {
        bool match;
        if ((rc = re_match(c, field, e->string, m->codes[i++], key, false, &match))) return rc;
        if (match) {
            *hit = e;
            return 0;
        }
    }
    return 0;
}

int adapter__is_feedforward(adapter__ctx *c, const char *key, bool *out) {
    const cJSON *ff = cJSON_GetObjectItemCaseSensitive(c->cfg, "feedforward_modules"), *list;
    *out = false;
    if (ff && cJSON_IsString(ff)) return adapter__regex(c, "feedforward_modules", ff->valuestring, key, true, out);
    int rc = adapter__json_str_list(c, c->cfg, "feedforward_modules", &list);
    if (rc)
        return adapter__fail(c, PEFTD_EFORMAT,
                             "adapter_config.json: field 'feedforward_modules' must be a string or a list of strings");
    if (!list) {
        /* PEFT fills a missing feedforward_modules with its per-model default: down_proj
         * for every Llama-family model_type it knows. */
        size_t k = strlen(key);
        *out = k >= 9 && !strcmp(key + k - 9, "down_proj");
        return 0;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        size_t k = strlen(key), s = strlen(e->valuestring);
        /* PEFT tests key.endswith(entry): no "." boundary, unlike target_modules */
        if (k >= s && !strcmp(key + k - s, e->valuestring)) return *out = true, 0;
    }
    return 0;
}
