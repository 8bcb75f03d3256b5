/* tests/fuzz/fuzz_utf8.h — the fuzz targets' own strict UTF-8 check (RFC 3629 table 3-7
 * ranges: no overlongs, no surrogates, nothing past U+10FFFF), written apart from the code
 * under test so that it can be the judge. */
#ifndef PEFTD_FUZZ_UTF8_H
#define PEFTD_FUZZ_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline bool valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) k = 2;
        else if (c == 0xE0) { k = 3; lo = 0xA0; }
        else if (c == 0xED) { k = 3; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) k = 3;
        else if (c == 0xF0) { k = 4; lo = 0x90; }
        else if (c == 0xF4) { k = 4; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) k = 4;
        else return false;
        if (i + k > n || s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t j = 2; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return false;
        i += k;
    }
    return true;
}

#endif
