/* server/model/rope_freqs.h — the rotary inverse frequencies and attention scaling a config's
 * rope_theta + rope_scaling imply (transformers' modeling_rope_utils, re-derived). */
#ifndef PEFTD_ROPE_FREQS_H
#define PEFTD_ROPE_FREQS_H

#include "server/model/model.h"

/* Fills inv_freq[0 .. rope.rot_dim/2) and *attn_scale: the factor transformers multiplies cos and
 * sin by (1 except for yarn and longrope). The default kind gives exactly theta^(-2i/head_dim)
 * rounded once from double. For dynamic / longrope: the table of a short sequence (dynamic:
 * unscaled; longrope: short_factor), i.e. rope_freqs_key(cfg, 0). */
void rope_freqs(const model_config *cfg, float *inv_freq, double *attn_scale);

/* True for dynamic and longrope: the table depends on the forward's sequence length. */
bool rope_seqlen_dependent(const model_config *cfg);

/* The table a forward of seq_len = max(position_ids) + 1 uses, as a key: 0 = rope_freqs'
 * table; dynamic: seq_len itself when > max_position_embeddings; longrope: 1 (long_factor)
 * when seq_len > the original max. Static kinds: always 0. */
int rope_table_key(const model_config *cfg, int seq_len);

/* Fills inv_freq[0 .. rope.rot_dim/2) with the table of a key (transformers' f32 steps). */
void rope_freqs_key(const model_config *cfg, int key, float *inv_freq);

#endif
