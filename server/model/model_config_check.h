/* server/model/model_config_check.h — what model_config_parse refuses outright, and which
 * config.json fields it read (so the rest can be named as ignored). Used by model_config.c only.
 */
#ifndef PEFTD_MODEL_CONFIG_CHECK_H
#define PEFTD_MODEL_CONFIG_CHECK_H

#include <cJSON.h>
#include <stddef.h>

#include "server/model/model.h"

/* Starts recording which members of root (the top-level config object) are read; the record
 * is per thread and lasts until model_config__track_end(). */
void model_config__track_begin(const cJSON *root);
void model_config__track_end(void);
/* Called by cfg_get for every member it finds: marks it read when obj is the tracked root. */
void model_config__mark_read(const cJSON *obj, const cJSON *member);

/* An architecture or field peftd does not serve (MoE, Granite, OLMo, Cohere, multimodal,
 * quantized weights): PEFTD_EUNSUPPORTED and one line in err naming it; else 0. */
int model_config__refuse(const cJSON *root, char *err, size_t errlen);

/* After a successful parse: every top-level member that was neither read nor allow-listed
 * (see model_config_check.c) goes to cfg->ignored / cfg->n_ignored. */
void model_config__list_ignored(const cJSON *root, model_config *cfg);

#endif
