/* adapter_store/json_check.h — checks on parsed JSON that cJSON does not make.
 *
 * cJSON keeps every member of an object, duplicates included, and a lookup returns the
 * first; Python's json (and most gateways) keep the last. A body whose duplicate keys are
 * read one way by a proxy and another way by peftd (a "model", a "max_tokens", a LoRA "r")
 * is refused instead of guessed at. Used on request bodies, adapter configs and the
 * daemon's config file: the lowest layer that parses JSON owns it.
 */
#ifndef PEFTD_JSON_CHECK_H
#define PEFTD_JSON_CHECK_H

struct cJSON;

/* The first key that appears twice in one object anywhere under node (depth-first), or
 * NULL when there is none. O(n log n) in an object's member count. The pointer is the
 * key's string inside node (valid while node is). NULL also when out of memory for an
 * object of more than 256 members (then nothing can be said: callers treat it as "none";
 * such bodies are bounded by the body-size limit anyway). */
const char *json_duplicate_key(const struct cJSON *node);

#endif
