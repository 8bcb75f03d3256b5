/* server/model/rope_freqs.h — the rotary inverse frequencies and attention scaling a config's
 * rope_theta + rope_scaling imply (transformers' modeling_rope_utils, re-derived). */
#ifndef PEFTD_ROPE_FREQS_H
#define PEFTD_ROPE_FREQS_H

#include "server/model/model.h"

/* Fills inv_freq[0 .. rope.rot_dim/2) and *attn_scale: the factor transformers multiplies cos and
 * sin by (1 except for yarn). The default kind gives exactly theta^(-2i/head_dim) rounded once
 * from double. */
void rope_freqs(const model_config *cfg, float *inv_freq, double *attn_scale);

#endif
