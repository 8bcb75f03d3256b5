/* server/model/rope_freqs.c — per-dimension rotary inverse frequencies for each supported
 * rope_scaling type, computed once on the host. The formulas are those of transformers'
 * modeling_rope_utils (default, linear, llama3, yarn), evaluated in double from the f32 base
 * table and rounded once; transformers evaluates them in f32, so entries may differ by an ulp
 * (the unit test allows 1e-6 relative). The sequence-length-dependent tables (dynamic NTK at
 * a length, longrope short/long) follow transformers' f32 arithmetic step by step. */
#include "server/model/rope_freqs.h"

#include <math.h>

static const double ROPE_PI = 3.14159265358979323846;

/* llama3: long wavelengths (beyond original/low_freq_factor) are divided by factor, short
 * ones (below original/high_freq_factor) kept, and the band between interpolated linearly in
 * original/wavelen. */
static double llama3_freq(const rope_scaling *r, double f) {
    double wavelen = 2 * ROPE_PI / f, old = r->original_max_position_embeddings;
    if (wavelen < old / r->high_freq_factor) return f;
    if (wavelen > old / r->low_freq_factor) return f / r->factor;
    double s = (old / wavelen - r->low_freq_factor) / (r->high_freq_factor - r->low_freq_factor);
    return (1 - s) * f / r->factor + s * f;
}

static double yarn_mscale(double scale, double m) {
    return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

/* The dimension (of dim) whose wavelength makes n_rot full turns over max_pos positions. */
static double yarn_correction_dim(double n_rot, int dim, double base, double max_pos) {
    return dim * log(max_pos / (n_rot * 2 * ROPE_PI)) / (2 * log(base));
}

/* yarn: dims below `low` keep the original frequency (extrapolation), dims above `high` are
 * interpolated (divided by factor), with a linear ramp between. */
static void yarn_freqs(const model_config *cfg, const float *base_f, float *inv_freq) {
    const rope_scaling *r = &cfg->rope;
    int dim = cfg->rope.rot_dim, half = dim / 2;
    double lo = yarn_correction_dim(r->beta_fast, dim, cfg->rope_theta,
                                    r->original_max_position_embeddings);
    double hi = yarn_correction_dim(r->beta_slow, dim, cfg->rope_theta,
                                    r->original_max_position_embeddings);
    if (r->truncate) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    if (lo < 0) lo = 0;
    if (hi > dim - 1) hi = dim - 1;
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < half; i++) {
        double ramp = (i - lo) / (hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double extra = 1 - ramp, f = base_f[i];
        inv_freq[i] = (float)(f / r->factor * (1 - extra) + f * extra);
    }
}

void rope_freqs(const model_config *cfg, float *inv_freq, double *attn_scale) {
    const rope_scaling *r = &cfg->rope;
    int dim = r->rot_dim, half = dim / 2;
    /* HF default: inv_freq[i] = theta^(-2i/dim), dim = rot_dim (head_dim unless partial
     * rotary), computed in double then rounded once, as torch computes it in f32 from an int64
     * arange. */
    for (int i = 0; i < half; i++)
        inv_freq[i] = (float)(1.0 / pow((double)cfg->rope_theta, (double)(2 * i) / dim));
    *attn_scale = 1.0;
    switch (r->kind) {
    case ROPE_DEFAULT: break;
    case ROPE_LINEAR:
        for (int i = 0; i < half; i++) inv_freq[i] = (float)(inv_freq[i] / r->factor);
        break;
    case ROPE_LLAMA3:
        for (int i = 0; i < half; i++) inv_freq[i] = (float)llama3_freq(r, inv_freq[i]);
        break;
    case ROPE_FREQ_FACTORS: /* llama.cpp divides theta by the factor: rounded once */
        for (int i = 0; i < half; i++) inv_freq[i] = (float)(inv_freq[i] / r->freq_factors[i]);
        break;
    case ROPE_DYNAMIC: break; /* up to max_position_embeddings: the unscaled table */
    case ROPE_LONGROPE:
        rope_freqs_key(cfg, 0, inv_freq);
        *attn_scale = r->attention_factor;
        break;
    case ROPE_YARN:
        yarn_freqs(cfg, inv_freq, inv_freq);
        if (r->attention_factor > 0)
            *attn_scale = r->attention_factor;
        else if (r->mscale > 0 && r->mscale_all_dim > 0)
            *attn_scale = yarn_mscale(r->factor, r->mscale) / yarn_mscale(r->factor, r->mscale_all_dim);
        else
            *attn_scale = yarn_mscale(r->factor, 1.0);
        break;
    }
}

bool rope_seqlen_dependent(const model_config *cfg) {
    return cfg->rope.kind == ROPE_DYNAMIC || cfg->rope.kind == ROPE_LONGROPE;
}

int rope_table_key(const model_config *cfg, int seq_len) {
    const rope_scaling *r = &cfg->rope;
    if (r->kind == ROPE_DYNAMIC) return seq_len > cfg->max_position_embeddings ? seq_len : 0;
    if (r->kind == ROPE_LONGROPE) return seq_len > r->original_max_position_embeddings ? 1 : 0;
    return 0;
}

/* torch: arange(0, dim, 2).float() / dim, in f32. */
static float rope_exponent(int i, int dim) { return (float)(2 * i) / (float)dim; }

void rope_freqs_key(const model_config *cfg, int key, float *inv_freq) {
    const rope_scaling *r = &cfg->rope;
    int dim = r->rot_dim, half = dim / 2;
    if (r->kind == ROPE_LONGROPE) {
        /* 1 / (ext * base ** shape): torch.pow(float scalar, f32 tensor), all in f32 */
        const float *ext = key ? r->long_factor : r->short_factor;
        for (int i = 0; i < half; i++)
            inv_freq[i] = 1.0f / (ext[i] * powf(cfg->rope_theta, rope_exponent(i, dim)));
        return;
    }
    if (r->kind != ROPE_DYNAMIC || key == 0) {
        double s;
        rope_freqs(cfg, inv_freq, &s);
        return;
    }
    /* _compute_dynamic_ntk_parameters with seq_len a tensor: the python scalars meet an
     * f32 tensor, so every step rounds to f32 */
    float t = (float)key * (float)r->factor;
    t = t / (float)cfg->max_position_embeddings;
    t = t - (float)(r->factor - 1);
    t = powf(t, (float)((double)dim / (dim - 2)));
    float base = cfg->rope_theta * t;
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(base, rope_exponent(i, dim));
}
