/* lib/status.h — project-wide status codes and their messages.
 * Functions return int: 0 OK, a negative PEFTD_E* code, or -errno. */
#ifndef PEFTD_STATUS_H
#define PEFTD_STATUS_H

enum {
    PEFTD_OK = 0,
    PEFTD_EINVAL = -1000,  /* bad argument / malformed input */
    PEFTD_EFORMAT,         /* file format error (safetensors, json, tokenizer) */
    PEFTD_EUNSUPPORTED,    /* valid but not supported (dtype, architecture, op) */
    PEFTD_ENOMEM,          /* allocation failed / pool exhausted */
    PEFTD_EIO,             /* read/write/mmap failure */
    PEFTD_ERANGE,          /* value out of range (context length, token id) */
    PEFTD_EBUSY,           /* queue full / overloaded */
    PEFTD_ECANCELED,       /* request cancelled */
    PEFTD_EBACKEND,        /* backend (CUDA/BLAS) failure */
    PEFTD_ENOTFOUND,       /* unknown name */
    PEFTD_ENOSPC,          /* storage full */
    PEFTD_EEXIST,          /* already exists / conflict */
    PEFTD_E2BIG,           /* larger than a limit allows at all (retrying cannot help) */
    PEFTD_EQUOTA,          /* a tenant's quota refuses it now (retry later) */
};

/* Static string for a status code (never NULL). */
const char *peftd_strerror(int status);

#endif
