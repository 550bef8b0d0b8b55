/*
 * text.c: validation of short caller text (see text_internal.h). Invalid
 * UTF-8 is refused early: JSON cannot carry it, so a record built from it
 * could not be written, and an audit record that cannot be written turns
 * into a refused request.
 */
#include <stdint.h>
#include <string.h>

#include "text_internal.h"

int phg_internal_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            len = 2;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4;
        else
            return 0;
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        }
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] >= 0xa0) ||
            (c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] >= 0x90))
            return 0; /* overlong, surrogate, or beyond U+10FFFF */
        i += len;
    }
    return 1;
}

int phg_internal_text_ok(const char *s, size_t min, size_t max)
{
    size_t n, i;
    if (s == NULL)
        return min == 0;
    n = strnlen(s, max + 1);
    if (n < min || n > max)
        return 0;
    for (i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    }
    return phg_internal_utf8_valid(s, n);
}
