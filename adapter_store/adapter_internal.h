/* adapter_store/adapter_internal.h — what the adapter import files share (adapter.c,
 * adapter_core.c, adapter_stage.c, adapter_peft_*.c, adapter_hub.c, adapter_targets.c,
 * adapter_blob.c); not part of the public API.
 *
 * One load runs through an adapter__ctx: the parsed adapter_config.json, the weights file,
 * a "used" flag per tensor (every tensor must be claimed by the kind's loader, anything
 * left over is an unexpected tensor), and a staging list of host copies that adapter.c
 * commits into the adapter's one host block at the end (adapter_core.c), patching the
 * kmat / vector pointers of the adapter. Nothing here touches a backend: an imported
 * adapter lives in host memory until adapter_install() (engine thread).
 *
 * Who calls whom (no circles): adapter.c (dispatch) -> kind loaders (adapter_peft_*.c,
 * adapter_hub.c) -> adapter_targets.c, adapter_peft_config.c -> adapter_stage.c (ctx:
 * errors, tensor checks, conversion, staging, hashing) -> adapter_core.c (the object and
 * its storage). adapter_blob.c calls adapter_core.c and the DoRA norms of
 * adapter_peft_lora.c.
 *
 * Status codes used throughout (see adapter.h): PEFTD_EFORMAT for files that are malformed
 * or inconsistent with their own config (bad JSON types, missing / unexpected tensors);
 * PEFTD_EUNSUPPORTED for valid adapters we cannot serve; PEFTD_EINVAL for adapters that do
 * not fit the base (shapes, layers, modules) or hold non-finite values.
 */
#ifndef PEFTD_ADAPTER_INTERNAL_H
#define PEFTD_ADAPTER_INTERNAL_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "adapter_store/adapter.h"
#include "adapter_store/adapter_shared.h"
#include "adapter_store/safetensors.h"

/* One tensor waiting for the adapter's block; exactly one of mat / vec / ivec is set. */
typedef struct {
    void *host;           /* its bytes in host memory */
    size_t bytes;
    bool owned;           /* host is malloc'd and freed with the stage (else borrowed) */
    kmat *mat;            /* gets .data = its address in the block */
    const float **vec;    /* gets *vec = its address in the block */
    const int32_t **ivec; /* gets *ivec = its address in the block (index arrays) */
} adapter__item;

typedef struct {
    adapter__item *items;
    size_t n, cap;
} adapter__stage;

/* ---- adapter_core.c: the object and its storage ---- */

/* A zeroed adapter with its (empty) storage record; NULL when out of memory. */
adapter *adapter__new(int n_layers);
/* Appends a tensor to s. On PEFTD_ENOMEM an owned host is freed. */
int adapter__stage_push(adapter__stage *s, void *host, size_t bytes, bool owned, kmat *mat, const float **vec);
/* Appends an owned int32 array of n entries (an OFT / BOFT permutation), pointed to by
 * *ivec once committed. On PEFTD_ENOMEM host is freed. */
int adapter__stage_push_ivec(adapter__stage *s, int32_t *host, size_t n, const int32_t **ivec);
/* Frees the owned host copies and the list; s is empty afterwards. */
void adapter__stage_clear(adapter__stage *s);
/* Copies every staged tensor into a's one host block (64-byte aligned offsets) and points
 * each mat / vec field there; the stage may be cleared afterwards. Once per adapter. */
int adapter__stage_commit(adapter *a, const adapter__stage *s);
/* Points *dst ([rows, cols] F32) at shared entry sh for a's lifetime, outside a's block: a
 * takes over the caller's reference (released by adapter_free, or here on PEFTD_ENOMEM). */
int adapter__attach_shared(adapter *a, adapter_shared *sh, kmat *dst);
/* The shared entry the kmat field *m of a points at, or NULL (in a's block or unset). */
adapter_shared *adapter__shared_of(const adapter *a, const kmat *m);

typedef struct {
    const char *dir;
    const adapter_base *base;
    adapter *a;
    cJSON *root;          /* adapter_config.json */
    cJSON *cfg;           /* PEFT: == root; AdapterHub: root["config"] */
    st_file *st;
    const char *wname;    /* weights file name, for messages */
    bool *used;           /* [st_count(st)] */
    adapter__stage stage;
    char *err;
    size_t errlen;
    struct adapter__re *re; /* adapter_targets.c: compiled patterns, match limits, budget */
} adapter__ctx;

/* ---- adapter_stage.c: errors, tensors, conversion, staging, hashing ---- */

/* Writes the message to c->err and returns status. */
int adapter__fail(adapter__ctx *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The tensor called name, marked used; NULL when absent (no error written). */
const st_tensor *adapter__take(adapter__ctx *c, const char *name);

/* The tensor called name with exactly the given shape (ndim 1 or 2), marked used.
 * Absent → PEFTD_EFORMAT; other shape → PEFTD_EINVAL naming expected and actual shape;
 * a dtype other than F32/F16/BF16 → PEFTD_EUNSUPPORTED. */
int adapter__expect(adapter__ctx *c, const char *name, int ndim, int64_t d0, int64_t d1,
                    const st_tensor **out);

/* Converts t (checked finite: NaN/Inf → PEFTD_EINVAL naming it) to dtype dt and stages it
 * as *dst ([rows, cols] from t's shape; 1-D → [1, n]). *host (optional) receives the
 * host copy, valid until the stage is cleared. */
int adapter__stage_mat(adapter__ctx *c, const st_tensor *t, kdtype dt, kmat *dst, const void **host);

/* Converts t to f32 (checked finite) and stages it as the vector *dst. */
int adapter__stage_vec(adapter__ctx *c, const st_tensor *t, const float **dst);

/* Stages a host f32 array computed by the loader; takes ownership of v (freed on error). */
int adapter__stage_own(adapter__ctx *c, float *v, size_t n, const float **dst);

/* Stages a host f32 [rows, cols] matrix computed by the loader as *dst; takes ownership of m
 * (freed on error). */
int adapter__stage_own_mat(adapter__ctx *c, float *m, int64_t rows, int64_t cols, kmat *dst);

/* A malloc'd f32 copy of t (checked finite); caller frees. */
int adapter__to_f32(adapter__ctx *c, const st_tensor *t, float **out);

/* Element i of raw tensor data in dtype dt (f32/f16/bf16), unaligned-safe. */
float adapter__elem(const void *data, kdtype dt, size_t i);

/* Records rank r in a->ranks / a->max_rank (adapter_core.c). */
void adapter__note_rank(adapter *a, int r);

/* a->sha256 = sha256 over the config bytes followed by the weights file's bytes (hex). */
int adapter__hash_files(adapter__ctx *c, const char *cfg, size_t cfg_len, const char *wpath);

/* ---- adapter_peft_config.c: typed access to JSON fields ---- */

/* Bounds of config numbers (issue 9 #2: every JSON number is narrowed through a checked
 * helper, never cast as is).
 * ADAPTER_MAX_COUNT: dims and counts that are then compared with the base (hidden_size,
 *   token_dim, num_layers, ...): far above any real model, far inside int.
 * ADAPTER_MAX_RANK: a bottleneck width; 1e6 is 1000x the largest real width while
 *   width × dims stays inside int64.
 * ADAPTER_MAX_LORA_RANK: a LoRA rank (r, rank_pattern). The engine sizes one SGMV workspace
 *   [max_tokens, largest rank in the step] f32 for the whole batch, so a huge rank fails
 *   every sequence sharing its step (issue 9). Published LoRA/rsLoRA ranks stop at 2048;
 *   4096 keeps that workspace at 16 KiB per batch token (128 MiB at 8192 tokens). A rank is
 *   also refused above max(in, out) of its module: beyond that BA has no more capacity.
 * ADAPTER_MAX_SCALE: |lora_alpha|, |alpha_pattern| values, |AdapterHub scaling|. Trained
 *   values are ~1..512; 1e6 keeps alpha/r × 16 (the largest request adapter_scale) ~1e7,
 *   nowhere near f32 overflow, so no scale the forward multiplies by can be Inf. */
#define ADAPTER_MAX_COUNT 1000000000LL
#define ADAPTER_MAX_RANK 1000000LL
#define ADAPTER_MAX_LORA_RANK 4096LL
#define ADAPTER_MAX_SCALE 1e6

/* v (a JSON number; what names it in messages, e.g. "field 'r'" or "rank_pattern['x']")
 * as an int in [lo, hi]: not a number or not integral → PEFTD_EFORMAT; outside the range
 * (including 1e300, Inf) → PEFTD_EINVAL naming it and the range. */
int adapter__num_int(adapter__ctx *c, const cJSON *v, const char *what, long long lo, long long hi, int *out);
/* v as a finite double with |v| <= max_abs (so it also fits a float when max_abs does):
 * not a number → PEFTD_EFORMAT; Inf or too large → PEFTD_EINVAL naming it. */
int adapter__num_float(adapter__ctx *c, const cJSON *v, const char *what, double max_abs, double *out);

/* Each getter: absent or null → default and 0; wrong type → PEFTD_EFORMAT naming the
 * field; numbers through adapter__num_int / adapter__num_float (range → PEFTD_EINVAL). */
int adapter__json_bool(adapter__ctx *c, const cJSON *obj, const char *field, bool def, bool *out);
int adapter__json_int(adapter__ctx *c, const cJSON *obj, const char *field, int def, long long lo, long long hi,
                      int *out);
int adapter__json_num(adapter__ctx *c, const cJSON *obj, const char *field, double def, double max_abs, double *out);
/* *out points into the JSON tree (NULL when absent/null and def is NULL). */
int adapter__json_str(adapter__ctx *c, const cJSON *obj, const char *field, const char *def,
                      const char **out);
/* A list of strings (or null/absent → NULL). */
int adapter__json_str_list(adapter__ctx *c, const cJSON *obj, const char *field, const cJSON **out);

/* PEFT fields common to every peft_type that, when set, change inference in ways peftd
 * does not implement (fan_in_fan_out, ...) → PEFTD_EUNSUPPORTED naming the field. */
int adapter__peft_check_common(adapter__ctx *c);
/* task_type is CAUSAL_LM or absent (every PEFT kind; check_common includes it). */
int adapter__peft_check_task(adapter__ctx *c);

/* ---- adapter_targets.c: which (layer, module) pairs a PEFT config adapts ---- */

/* HF module name of a projection in base b, e.g. "model.layers.3.self_attn.q_proj"; on a
 * fused base (Phi-3) q/k/v are "...self_attn.qkv_proj" and gate/up "...mlp.gate_up_proj". */
void adapter__module_key(const adapter_base *b, int layer, adapter_module m, char *buf, size_t n);

/* Where module m's output rows sit in the output of the PEFT module that holds it: rows
 * [*row0, *row0 + out) of *total (Phi-3 qkv_proj = [q; k; v], gate_up_proj = [gate; up]);
 * row0 0 and total == out on unfused bases. An adapter on a fused module applies over the
 * whole fused output, so its output-side tensors (LoRA B, DoRA magnitude, IA3 [out, 1])
 * split by these rows and its input-side ones (LoRA A, IA3 [1, in]) are shared. */
void adapter__fused_rows(const adapter_base *b, adapter_module m, int *row0, int *total);

/* The view of rows [row0, row0 + rows) of t (dim 0 of a 1-D or 2-D tensor), no copy. */
st_tensor adapter__tensor_rows(const st_tensor *t, int64_t row0, int64_t rows);

/* sel[l * AMOD_COUNT + m] = whether PEFT would adapt that module, from target_modules
 * (list / regex / "all-linear"), layers_to_transform, layers_pattern, exclude_modules and
 * modules_to_save, exactly as PEFT 0.21's check_target_module_exists. Targets the base
 * lacks → PEFTD_EINVAL; base modules peftd cannot adapt (norms, and embed_tokens /
 * lm_head when extra is NULL) → PEFTD_EUNSUPPORTED. With extra ([2]), extra[0] / extra[1]
 * tell whether model.embed_tokens / lm_head are targeted. A missing target_modules takes
 * PEFT's per-model_type default: defaults_llama for llama/mistral, defaults_qwen for
 * qwen2/qwen3/gemma (NULL-terminated). */
int adapter__select_targets(adapter__ctx *c, const char *const *defaults_llama, const char *const *defaults_qwen,
                            bool *sel, bool *extra);

/* PEFT's get_pattern_key over the keys of patterns (an object, may be NULL): the value of
 * the first key K such that key re.match'es "(.*\.)?(K)$", or NULL. */
int adapter__pattern_value(adapter__ctx *c, const cJSON *patterns, const char *field,
                           const char *key, const cJSON **hit);

/* IA3's feedforward_modules test for key (list: endswith, regex: fullmatch). */
int adapter__is_feedforward(adapter__ctx *c, const char *key, bool *out);

/* re.fullmatch / re.match(anchored) of a Python-style regex; invalid pattern →
 * PEFTD_EFORMAT naming field. Every match runs under PCRE2 match/depth limits and all the
 * matches of one load share a CPU-time budget (issue 9 #6: a config of a few hostile
 * patterns held a thread for seconds); exceeding either → PEFTD_EINVAL naming field. */
int adapter__regex(adapter__ctx *c, const char *field, const char *pattern, const char *subject,
                   bool full, bool *matched);
/* Releases c->re (compiled patterns); NULL-safe, called once per load. */
void adapter__regex_free(adapter__ctx *c);

/* Most entries of one pattern map (rank_pattern, alpha_pattern) or string list
 * (target_modules, modules_to_save, layers_pattern, exclude_modules, feedforward_modules):
 * a per-module map over every projection of the largest dense Llama (126 layers × 7 =
 * 882 keys) fits with margin; each entry is a regex tried against every module key. */
#define ADAPTER_MAX_PATTERNS 1024

/* ---- adapter_peft_lora.c: DoRA norms (also used by adapter_blob.c for older blobs) ---- */

/* For DoRA module (layer, mod) with rank/scale from L and host copies ha [rank, in], hb
 * [out, rank] in dtype dt, and magnitude m [out]: f[out] = m / ||W + scale·BA||_row and
 * stats[out * ADAPTER_DORA_STATS] (adapter.h), in double from b->layer_w (HOST memory).
 * No base weight → PEFTD_EINVAL; a zero-norm row → PEFTD_EINVAL; message in err. */
int adapter__dora_norms(const adapter_base *b, int layer, adapter_module mod, const adapter_lora *L, kdtype dt,
                        const void *ha, const void *hb, const float *m, float *f, float *stats, char *err,
                        size_t errlen);

/* ---- adapter_rot.c: OFT / BOFT rotation math (importers and the blob reader) ---- */

/* R = (I − Q)(I + Q)⁻¹ for b×b doubles, as torch.linalg.solve(I + Q, I − Q, left=False).
 * PEFTD_EINVAL when I + Q is singular; PEFTD_ENOMEM. */
int adapter__cayley(const double *Q, int b, double *R);
/* PEFT 0.21's truncated Cayley–Neumann series I + 2Q + 2Q² + … + Q^(terms−1), formed as its
 * loop forms it (OFT use_cayley_neumann). 0 or PEFTD_ENOMEM. */
int adapter__cayley_neumann(const double *Q, int b, int terms, double *R);
/* g[n] = the inverse of PEFT's block_butterfly_perm(n, nb, r) (a BOFT factor's permutation P
 * with P[i, idx[i]] = 1), the gather/scatter index of kernels.h's krot_factor; *identity when
 * it is the identity. PEFTD_EINVAL for a recipe PEFT would not build. */
int adapter__butterfly_perm(int n, int nb, int r, int32_t *g, bool *identity);
/* Fills *f (block, shared, the permutation recipe perm_blocks / perm_half, 0 = identity) and
 * stages its blocks r (owned f32 host array, [shared ? block : in, block]; freed on error) and
 * its permutation, rebuilt from the recipe (none when it is the identity). PEFTD_EINVAL: block
 * does not divide in, or a recipe PEFT would not build. f must stay where it is until commit. */
int adapter__rot_stage_factor(adapter__stage *s, int in, int block, bool shared, int perm_blocks, int perm_half,
                              float *r, adapter_rot_factor *f);
/* The same without the blocks (the blob reader claims those itself): fills *f but f->r and
 * stages the permutation. */
int adapter__rot_stage_perm(adapter__stage *s, int in, int block, bool shared, int perm_blocks, int perm_half,
                            adapter_rot_factor *f);

/* The form of a rotated module: factored (adapter_rot, seg_rotate on the activations) or the
 * dense delta ΔW = diag(s)·W·Rotᵀ − W (adapter_lora.delta, added by the backend's matmul).
 * PEFTD_ROT_FORM=factored|dense forces one for every module (read per load). */
/* The OFT / BOFT loaders' common start: c->a's rotation table and the dense form's delta
 * table (one entry per layer·module), and the selected target modules in *sel (caller frees).
 * 0, or a status with nothing left in *sel. */
int adapter__rot_begin(adapter__ctx *c, const char *const *defaults, bool **sel);

typedef enum { ADAPTER_ROT_AUTO, ADAPTER_ROT_FACTORED, ADAPTER_ROT_DENSE } adapter__rot_form;
adapter__rot_form adapter__rot_form_forced(void);
/* The rule, per module: dense when forced, or unasked when its out·in f32 delta reads fewer
 * bytes per token than factored_bytes (the factors' blocks and permutations) and the base's
 * host weight w [out, in] is there to form it from. */
bool adapter__rot_dense_wins(adapter__rot_form forced, double factored_bytes, int out, int in, const kmat *w);
/* One rotation factor in double, for the dense form: blocks R ([in / block] of block², or one
 * when shared), g its gather/scatter index (NULL: identity), as kernels.h's krot_factor. */
typedef struct {
    const double *R;
    int block;
    bool shared;
    const int32_t *g;
} adapter__rot_d;
/* Stages *delta = diag(s)·W·Rotᵀ − W [out, in] f32 (s NULL: 1), with x·Rot = x·f[0]·f[1]⋯
 * f[n_f − 1] and W the base's host weight w (dequantized when quantized), formed in double one
 * row at a time through the factors (out·in·block multiply-adds per factor). A missing base
 * weight is refused naming key. */
int adapter__rot_dense(adapter__ctx *c, const kmat *w, int out, int in, const adapter__rot_d *f, int n_f,
                       const float *s, kmat *delta, const char *key);

/* ---- kind loaders ---- */
/* adapter_peft_seqcls.c: after the kind's loader, task_type SEQ_CLS: the `score` head and
 * the labels (a LoRA-family adapter only; other kinds are refused naming task_type). */
int adapter__load_seq_cls(adapter__ctx *c);
/* after adapter__hash_files: label names other than transformers' defaults join the hash */
int adapter__seq_cls_rehash(adapter__ctx *c);

/* modules_to_save (lm_head / embed_tokens full replacements), shared by LoRA and IA3. */
int adapter__load_modules_to_save(adapter__ctx *c);
int adapter__load_lora(adapter__ctx *c);
/* r and alpha of module key after the config's rank_pattern / alpha_pattern (r, alpha: the
 * config's); r_field names where r came from, for messages. */
int adapter__module_r_alpha(adapter__ctx *c, const char *key, int r, double alpha, int *r_out, double *alpha_out,
                            char *r_field, size_t r_field_len);
/* adapter_peft_lyco.c: VeRA, LoHa and LoKr, converted to the LoRA form (or, LoKr, a dense delta). */
int adapter__load_vera(adapter__ctx *c);
int adapter__load_loha(adapter__ctx *c);
int adapter__load_lokr(adapter__ctx *c);
/* adapter_peft_oft.c: OFT, block-diagonal rotations of the projections' inputs (adapter_rot),
 * or per module the dense delta when that reads fewer bytes (adapter__rot_dense_wins). */
int adapter__load_oft(adapter__ctx *c);
/* adapter_peft_boft.c: BOFT, butterfly products of block rotations and boft_s, factored or per
 * module the dense delta diag(s)·W·Rotᵀ − W, by the same rule. */
int adapter__load_boft(adapter__ctx *c);
/* adapter_peft_lora_ext.c, after the projections' pairs are staged: lora_B biases and the
 * trained projection biases of bias "all" / "lora_only" (bias: the config's string); then
 * LoRA on embed_tokens / lm_head (extra from adapter__select_targets) with the config's
 * r / lora_alpha / use_rslora (DoRA there → PEFTD_EUNSUPPORTED). */
int adapter__load_lora_biases(adapter__ctx *c, const char *bias, bool lora_bias);
int adapter__load_lora_top(adapter__ctx *c, const bool *extra, int r, double alpha, bool rslora, bool dora);
int adapter__load_ia3(adapter__ctx *c);
/* adapter_peft_ln.c: LN tuning (trained norm weights). */
int adapter__load_ln_tuning(adapter__ctx *c);
/* adapter_peft_adalora.c: AdaLoRA, converted to the LoRA form (E and the scale folded in). */
int adapter__load_adalora(adapter__ctx *c);
int adapter__load_prompt(adapter__ctx *c);
int adapter__load_prefix(adapter__ctx *c);
int adapter__load_hub(adapter__ctx *c);

#endif
