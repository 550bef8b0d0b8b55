/*
 * text_internal.h: the one check every module applies to short caller text
 * (ids, names, actions) before it reaches a record, a log or the store.
 */
#ifndef PHG_TEXT_INTERNAL_H
#define PHG_TEXT_INTERNAL_H

#include <stddef.h>

/* 1 if (s, n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int phg_internal_utf8_valid(const char *s, size_t n);

/*
 * 1 if s is NULL (when min is 0), or a NUL-terminated string of min..max
 * bytes, valid UTF-8, with no control character (below 0x20, or 0x7f).
 */
int phg_internal_text_ok(const char *s, size_t min, size_t max);

#endif
