/* server/text/chat_template_case.c — Python's case conversions on UTF-8 strings, for the
 * upper/lower/title/capitalize filters and methods and the lower/upper tests: full case
 * mappings (utf8proc's simple mappings plus SpecialCasing's unconditional expansions such
 * as ß -> SS, ﬁ -> FI, İ -> i̇), Final_Sigma for Σ in lower(), str.title()'s "previous
 * character is cased" rule and jinja2's title filter (word starts after -, whitespace,
 * (, {, [, <); repr() escapes of non-printable characters. The Greek iota-subscript
 * expansions are refused rather than mis-mapped. */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <utf8proc.h>

#include "server/text/chat_template_render.h"

typedef struct {
    int32_t cp;
    const char *upper, *title; /* UTF-8 expansions */
} special;

static const special SPECIAL[] = {
    {0x00DF, "SS", "Ss"},         {0x0149, "\xCA\xBCN", "\xCA\xBCN"}, {0x01F0, "J\xCC\x8C", "J\xCC\x8C"},
    {0x0390, "\xCE\x99\xCC\x88\xCC\x81", "\xCE\x99\xCC\x88\xCC\x81"},
    {0x03B0, "\xCE\xA5\xCC\x88\xCC\x81", "\xCE\xA5\xCC\x88\xCC\x81"},
    {0x0587, "\xD4\xB5\xD5\x92", "\xD4\xB5\xD6\x82"},
    {0x1E96, "H\xCC\xB1", "H\xCC\xB1"}, {0x1E97, "T\xCC\x88", "T\xCC\x88"}, {0x1E98, "W\xCC\x8A", "W\xCC\x8A"},
    {0x1E99, "Y\xCC\x8A", "Y\xCC\x8A"}, {0x1E9A, "A\xCA\xBE", "A\xCA\xBE"},
    {0xFB00, "FF", "Ff"}, {0xFB01, "FI", "Fi"}, {0xFB02, "FL", "Fl"}, {0xFB03, "FFI", "Ffi"},
    {0xFB04, "FFL", "Ffl"}, {0xFB05, "ST", "St"}, {0xFB06, "ST", "St"},
    {0xFB13, "\xD5\x84\xD5\x86", "\xD5\x84\xD5\xB6"}, {0xFB14, "\xD5\x84\xD4\xB5", "\xD5\x84\xD5\xA5"},
    {0xFB15, "\xD5\x84\xD4\xBB", "\xD5\x84\xD5\xAB"}, {0xFB16, "\xD5\x8E\xD5\x86", "\xD5\x8E\xD5\xB6"},
    {0xFB17, "\xD5\x84\xD4\xBD", "\xD5\x84\xD5\xAD"},
};

/* Greek letters whose full upper/title mappings expand (iota subscripts, breathing marks) */
static bool greek_special(int32_t cp) {
    if (cp >= 0x1F80 && cp <= 0x1FAF) return true;
    if (cp >= 0x1F50 && cp <= 0x1F56 && cp % 2 == 0) return true;
    static const int32_t one[] = {0x1FB2, 0x1FB3, 0x1FB4, 0x1FB6, 0x1FB7, 0x1FBC, 0x1FC2, 0x1FC3, 0x1FC4,
                                  0x1FC6, 0x1FC7, 0x1FCC, 0x1FD2, 0x1FD3, 0x1FD6, 0x1FD7, 0x1FE2, 0x1FE3,
                                  0x1FE4, 0x1FE6, 0x1FE7, 0x1FF2, 0x1FF3, 0x1FF4, 0x1FF6, 0x1FF7, 0x1FFC};
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
        if (one[i] == cp) return true;
    return false;
}

static bool is_cased(int32_t cp) {
    utf8proc_category_t k = utf8proc_category(cp);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           utf8proc_islower(cp) || utf8proc_isupper(cp);
}

static bool is_case_ignorable(int32_t cp) {
    utf8proc_category_t k = utf8proc_category(cp);
    if (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
        k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK)
        return true;
    static const int32_t mid[] = {0x0027, 0x002E, 0x003A, 0x00B7, 0x0387, 0x055F, 0x05F4, 0x2018, 0x2019,
                                  0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        if (mid[i] == cp) return true;
    return false;
}

static void put_cp(ct_ctx *c, ct_buf *b, int32_t cp) {
    utf8proc_uint8_t u[4];
    utf8proc_ssize_t n = utf8proc_encode_char(cp, u);
    ct__buf_put(c, b, (const char *)u, (size_t)n);
}

/* Python's lower of cps[i] (Final_Sigma looks at the neighbours within cps[lo, hi)) */
static void put_lower(ct_ctx *c, ct_buf *b, const int32_t *cps, size_t i, size_t lo, size_t hi) {
    int32_t cp = cps[i];
    if (cp == 0x0130) {
        ct__buf_puts(c, b, "i\xCC\x87");
        return;
    }
    if (cp == 0x03A3) {
        size_t j = i;
        while (j > lo && is_case_ignorable(cps[j - 1])) j--;
        bool fin = j > lo && is_cased(cps[j - 1]);
        if (fin) {
            size_t k = i + 1;
            while (k < hi && is_case_ignorable(cps[k])) k++;
            fin = k == hi || !is_cased(cps[k]);
        }
        put_cp(c, b, fin ? 0x03C2 : 0x03C3);
        return;
    }
    put_cp(c, b, utf8proc_tolower(cp));
}

static void put_upper_or_title(ct_ctx *c, const ct_node *at, ct_buf *b, int32_t cp, bool title) {
    for (size_t i = 0; i < sizeof SPECIAL / sizeof SPECIAL[0]; i++)
        if (SPECIAL[i].cp == cp) {
            ct__buf_puts(c, b, title ? SPECIAL[i].title : SPECIAL[i].upper);
            return;
        }
    if (greek_special(cp)) ct__fail(c, at, "%s() of U+%04X is not supported", title ? "title" : "upper", (unsigned)cp);
    put_cp(c, b, title ? utf8proc_totitle(cp) : utf8proc_toupper(cp));
}

/* str.isspace() of one code point */
static bool py_space_cp(int32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* jinja2's title filter splits on runs of [-\s({\[<] */
static bool jinja_word_sep(int32_t cp) {
    return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || py_space_cp(cp);
}

cv *ct__str_case(ct_ctx *c, const ct_node *at, const cv *s, int mode) {
    size_t n = 0;
    int32_t *cps = ct__alloc(c, (s->u.s.n + 1) * sizeof *cps);
    for (utf8proc_ssize_t off = 0; off < (utf8proc_ssize_t)s->u.s.n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t w = utf8proc_iterate((const utf8proc_uint8_t *)s->u.s.p + off, (utf8proc_ssize_t)s->u.s.n - off, &cp);
        if (w <= 0) ct__fail(c, at, "invalid UTF-8 in a string");
        cps[n++] = cp;
        off += w;
    }
    ct_buf b = {0};
    bool prev_cased = false;
    size_t word_lo = 0, word_hi = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t cp = cps[i];
        switch (mode) {
        case CT_CASE_LOWER: put_lower(c, &b, cps, i, 0, n); break;
        case CT_CASE_UPPER: put_upper_or_title(c, at, &b, cp, false); break;
        case CT_CASE_TITLE: /* str.title() */
            if (prev_cased) put_lower(c, &b, cps, i, 0, n);
            else put_upper_or_title(c, at, &b, cp, true);
            prev_cased = is_cased(cp);
            break;
        case CT_CASE_CAPITALIZE: /* str.capitalize() */
            if (i == 0) put_upper_or_title(c, at, &b, cp, true);
            else put_lower(c, &b, cps, i, 0, n);
            break;
        default: { /* jinja2's title filter: each piece's first character upper, the rest lower */
            bool sep = jinja_word_sep(cp);
            if (i == 0 || sep != jinja_word_sep(cps[i - 1])) { /* a piece starts */
                word_lo = i;
                word_hi = i + 1;
                while (word_hi < n && jinja_word_sep(cps[word_hi]) == sep) word_hi++;
                put_upper_or_title(c, at, &b, cp, false);
            } else {
                put_lower(c, &b, cps, i, word_lo, word_hi);
            }
        }
        }
    }
    return ct__mk_str(c, b.p ? b.p : "", b.n);
}

/* str.islower() / str.isupper(): at least one cased character, and none of the other case */
bool ct__str_is_case(ct_ctx *c, const ct_node *at, const cv *s, bool upper) {
    bool any = false;
    for (utf8proc_ssize_t off = 0; off < (utf8proc_ssize_t)s->u.s.n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t w = utf8proc_iterate((const utf8proc_uint8_t *)s->u.s.p + off, (utf8proc_ssize_t)s->u.s.n - off, &cp);
        if (w <= 0) ct__fail(c, at, "invalid UTF-8 in a string");
        off += w;
        utf8proc_category_t k = utf8proc_category(cp);
        if (k == UTF8PROC_CATEGORY_LT) return false;
        if (upper ? (k == UTF8PROC_CATEGORY_LL || utf8proc_islower(cp)) : (k == UTF8PROC_CATEGORY_LU || utf8proc_isupper(cp)))
            return false;
        any |= is_cased(cp);
    }
    return any;
}

/* repr() of the UTF-8 character at p: as is when Python's str.isprintable() holds, else
 * \xhh, \uhhhh or \Uhhhhhhhh. Returns the bytes consumed. */
size_t ct__put_repr_u8(ct_ctx *c, ct_buf *b, const char *p, size_t n) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t w = utf8proc_iterate((const utf8proc_uint8_t *)p, (utf8proc_ssize_t)n, &cp);
    if (w <= 0) ct__fail(c, NULL, "invalid UTF-8 in a string");
    utf8proc_category_t k = utf8proc_category(cp);
    bool printable = !(k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CS ||
                       k == UTF8PROC_CATEGORY_CO || k == UTF8PROC_CATEGORY_CN || k == UTF8PROC_CATEGORY_ZL ||
                       k == UTF8PROC_CATEGORY_ZP || k == UTF8PROC_CATEGORY_ZS);
    if (printable) {
        ct__buf_put(c, b, p, (size_t)w);
    } else {
        char tmp[16];
        snprintf(tmp, sizeof tmp, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x", (unsigned)cp);
        ct__buf_puts(c, b, tmp);
    }
    return (size_t)w;
}
