/* lib/status.c — messages for the codes in status.h. */
#include "lib/status.h"

#include <string.h>

const char *peftd_strerror(int st) {
    switch (st) {
    case PEFTD_OK: return "ok";
    case PEFTD_EINVAL: return "invalid argument";
    case PEFTD_EFORMAT: return "malformed file or data";
    case PEFTD_EUNSUPPORTED: return "not supported";
    case PEFTD_ENOMEM: return "out of memory";
    case PEFTD_EIO: return "I/O error";
    case PEFTD_ERANGE: return "value out of range";
    case PEFTD_EBUSY: return "busy";
    case PEFTD_ECANCELED: return "cancelled";
    case PEFTD_EBACKEND: return "backend failure";
    case PEFTD_ENOTFOUND: return "not found";
    case PEFTD_ENOSPC: return "storage full";
    case PEFTD_EEXIST: return "already exists";
    case PEFTD_E2BIG: return "over a limit";
    case PEFTD_EQUOTA: return "quota exceeded";
    default: return st < 0 && st > -4096 ? strerror(-st) : "unknown error";
    }
}
