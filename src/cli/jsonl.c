/*
 * jsonl.c: encrypt-jsonl / decrypt-jsonl (see jsonl.h and docs/formats.md).
 *
 * Why a hand-made scanner rather than jansson: a migration rewrites every
 * record of a data set, and a DOM parse plus re-serialisation costs more than
 * the encryption itself. The scanner validates the whole record strictly
 * (RFC 8259, UTF-8, bounded depth) but only remembers the spans of the
 * top-level members; the output copies the record's bytes verbatim except
 * for the values it replaces, so key order, spacing and number spellings of
 * everything else are kept.
 *
 * The pipeline: the main thread reads batches of whole lines and writes
 * finished batches in input order; worker threads transform batches. At most
 * 2 * threads + 2 batches are in flight, so memory stays bounded whatever the
 * input size.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "jsonl.h"

/* ---- bounded buffer ---------------------------------------------------------- */

static int jbuf_reserve(jbuf *b, size_t extra)
{
    size_t need, cap;
    char *p;
    if (extra > b->max || b->len > b->max - extra)
        return -1;
    need = b->len + extra;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap = cap > b->max / 2 ? b->max : cap * 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int jbuf_put(jbuf *b, const void *data, size_t n)
{
    if (n == 0)
        return 0; /* b->p may still be NULL */
    if (jbuf_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

void jbuf_free(jbuf *b)
{
    if (b->p != NULL) {
        phg_wipe(b->p, b->cap); /* records may hold plaintext PHI */
        free(b->p);
    }
    memset(b, 0, sizeof *b);
}

static void set_err(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* ---- strict JSON scanner -------------------------------------------------------- */

typedef struct scan {
    const char *s;
    size_t len, pos;
} scan;

static void skip_ws(scan *sc)
{
    while (sc->pos < sc->len) {
        char c = sc->s[sc->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        sc->pos++;
    }
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if (c == 0xe0 && p[1] < 0xa0) /* overlong */
            return 0;
        if (c == 0xed && p[1] >= 0xa0) /* surrogates */
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if (c == 0xf0 && p[1] < 0x90)
            return 0;
        if (c == 0xf4 && p[1] >= 0x90)
            return 0;
        return 4;
    }
    return 0;
}

/* At '"': validate a string, leave pos after the closing quote. */
static int scan_string(scan *sc, int *escaped)
{
    *escaped = 0;
    sc->pos++;
    while (sc->pos < sc->len) {
        unsigned char c = (unsigned char)sc->s[sc->pos];
        if (c == '"') {
            sc->pos++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            *escaped = 1;
            if (sc->pos + 1 >= sc->len)
                return 0;
            c = (unsigned char)sc->s[sc->pos + 1];
            if (c == 'u') {
                unsigned u, lo;
                if (sc->pos + 6 > sc->len || !hex4(sc->s + sc->pos + 2, &u))
                    return 0;
                sc->pos += 6;
                if (u >= 0xdc00 && u <= 0xdfff)
                    return 0; /* lone low surrogate */
                if (u >= 0xd800 && u <= 0xdbff) {
                    if (sc->pos + 6 > sc->len || sc->s[sc->pos] != '\\' ||
                        sc->s[sc->pos + 1] != 'u' || !hex4(sc->s + sc->pos + 2, &lo) ||
                        lo < 0xdc00 || lo > 0xdfff)
                        return 0;
                    sc->pos += 6;
                }
                continue;
            }
            if (strchr("\"\\/bfnrt", (char)c) == NULL || c == '\0')
                return 0;
            sc->pos += 2;
            continue;
        }
        if (c < 0x80) {
            sc->pos++;
        } else {
            size_t n = utf8_seq((const unsigned char *)sc->s + sc->pos, sc->len - sc->pos);
            if (n == 0)
                return 0;
            sc->pos += n;
        }
    }
    return 0;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int scan_number(scan *sc)
{
    const char *s = sc->s;
    size_t p = sc->pos, n = sc->len;
    if (p < n && s[p] == '-')
        p++;
    if (p >= n || !is_digit(s[p]))
        return 0;
    if (s[p] == '0')
        p++;
    else
        while (p < n && is_digit(s[p]))
            p++;
    if (p < n && s[p] == '.') {
        p++;
        if (p >= n || !is_digit(s[p]))
            return 0;
        while (p < n && is_digit(s[p]))
            p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < n && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p >= n || !is_digit(s[p]))
            return 0;
        while (p < n && is_digit(s[p]))
            p++;
    }
    sc->pos = p;
    return 1;
}

static int scan_literal(scan *sc, const char *word)
{
    size_t n = strlen(word);
    if (sc->len - sc->pos < n || memcmp(sc->s + sc->pos, word, n) != 0)
        return 0;
    sc->pos += n;
    return 1;
}

static int scan_value(scan *sc, int depth)
{
    int escaped;
    if (sc->pos >= sc->len)
        return 0;
    switch (sc->s[sc->pos]) {
    case '"': return scan_string(sc, &escaped);
    case 't': return scan_literal(sc, "true");
    case 'f': return scan_literal(sc, "false");
    case 'n': return scan_literal(sc, "null");
    case '{':
        if (depth >= JSONL_MAX_DEPTH)
            return 0;
        sc->pos++;
        skip_ws(sc);
        if (sc->pos < sc->len && sc->s[sc->pos] == '}') {
            sc->pos++;
            return 1;
        }
        for (;;) {
            skip_ws(sc);
            if (sc->pos >= sc->len || sc->s[sc->pos] != '"' || !scan_string(sc, &escaped))
                return 0;
            skip_ws(sc);
            if (sc->pos >= sc->len || sc->s[sc->pos] != ':')
                return 0;
            sc->pos++;
            skip_ws(sc);
            if (!scan_value(sc, depth + 1))
                return 0;
            skip_ws(sc);
            if (sc->pos >= sc->len)
                return 0;
            if (sc->s[sc->pos] == '}') {
                sc->pos++;
                return 1;
            }
            if (sc->s[sc->pos] != ',')
                return 0;
            sc->pos++;
        }
    case '[':
        if (depth >= JSONL_MAX_DEPTH)
            return 0;
        sc->pos++;
        skip_ws(sc);
        if (sc->pos < sc->len && sc->s[sc->pos] == ']') {
            sc->pos++;
            return 1;
        }
        for (;;) {
            skip_ws(sc);
            if (!scan_value(sc, depth + 1))
                return 0;
            skip_ws(sc);
            if (sc->pos >= sc->len)
                return 0;
            if (sc->s[sc->pos] == ']') {
                sc->pos++;
                return 1;
            }
            if (sc->s[sc->pos] != ',')
                return 0;
            sc->pos++;
        }
    default: return scan_number(sc);
    }
}

int jsonl_validate_value(const char *s, size_t len)
{
    scan sc = {s, len, 0};
    skip_ws(&sc);
    if (!scan_value(&sc, 0))
        return 0;
    skip_ws(&sc);
    return sc.pos == sc.len;
}

typedef struct member {
    size_t key_off, key_len; /* inside the quotes */
    int key_escaped;
    size_t val_off, val_len;
} member;

/* Parse a record: one object, its top-level members' spans. */
static int parse_record(const char *s, size_t len, member *m, size_t *nm, char *err,
                        size_t err_len)
{
    scan sc = {s, len, 0};
    size_t n = 0;
    skip_ws(&sc);
    if (sc.pos >= len || s[sc.pos] != '{') {
        set_err(err, err_len, "not a JSON object");
        return -1;
    }
    sc.pos++;
    skip_ws(&sc);
    if (sc.pos < len && s[sc.pos] == '}') {
        sc.pos++;
    } else {
        for (;;) {
            int escaped;
            size_t key_start;
            skip_ws(&sc);
            if (sc.pos >= len || s[sc.pos] != '"')
                goto bad;
            key_start = sc.pos + 1;
            if (!scan_string(&sc, &escaped))
                goto bad;
            if (n == JSONL_MAX_MEMBERS) {
                set_err(err, err_len, "more than %d top-level members", JSONL_MAX_MEMBERS);
                return -1;
            }
            m[n].key_off = key_start;
            m[n].key_len = sc.pos - 1 - key_start;
            m[n].key_escaped = escaped;
            skip_ws(&sc);
            if (sc.pos >= len || s[sc.pos] != ':')
                goto bad;
            sc.pos++;
            skip_ws(&sc);
            m[n].val_off = sc.pos;
            if (!scan_value(&sc, 1))
                goto bad;
            m[n].val_len = sc.pos - m[n].val_off;
            n++;
            skip_ws(&sc);
            if (sc.pos >= len)
                goto bad;
            if (s[sc.pos] == '}') {
                sc.pos++;
                break;
            }
            if (s[sc.pos] != ',')
                goto bad;
            sc.pos++;
        }
    }
    skip_ws(&sc);
    if (sc.pos != len)
        goto bad;
    *nm = n;
    return 0;
bad:
    set_err(err, err_len, "not valid JSON (at byte %zu)", sc.pos + 1);
    return -1;
}

static void put_utf8(char *out, size_t *o, unsigned cp)
{
    if (cp < 0x80) {
        out[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*o)++] = (char)(0xc0 | cp >> 6);
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xe0 | cp >> 12);
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        out[(*o)++] = (char)(0xf0 | cp >> 18);
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    }
}

/*
 * Decode the inside of a validated JSON string into out (room for len bytes:
 * decoding never grows). Returns the decoded length.
 */
static size_t decode_string(const char *s, size_t len, char *out)
{
    size_t i = 0, o = 0;
    while (i < len) {
        char c = s[i];
        if (c != '\\') {
            out[o++] = c;
            i++;
            continue;
        }
        c = s[i + 1];
        switch (c) {
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned u = 0, lo = 0;
            hex4(s + i + 2, &u);
            if (u >= 0xd800 && u <= 0xdbff) {
                hex4(s + i + 8, &lo);
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            }
            put_utf8(out, &o, u);
            i += 6;
            continue;
        }
        default: out[o++] = c; break; /* " \ / */
        }
        i += 2;
    }
    return o;
}

/* Does member m's key equal (name, name_len)? */
static int key_equals(const char *line, const member *m, const char *name, size_t name_len)
{
    char tmp[256];
    size_t n;
    if (!m->key_escaped)
        return m->key_len == name_len && memcmp(line + m->key_off, name, name_len) == 0;
    if (m->key_len > sizeof tmp)
        return 0; /* names given on the command line are shorter */
    n = decode_string(line + m->key_off, m->key_len, tmp);
    return n == name_len && memcmp(tmp, name, n) == 0;
}

/* ---- jobs -------------------------------------------------------------------------- */

int jsonl_job_init(jsonl_job *job, phg_keyring *kr, int decrypt, const char *fields,
                   const char *tmpl, char *err, size_t err_len)
{
    size_t flen = strlen(fields), tlen = strlen(tmpl), i, j;
    char *p;

    memset(job, 0, sizeof *job);
    job->kr = kr;
    job->decrypt = decrypt;
    /* One allocation holds the field names and the template's strings. */
    job->storage = malloc(flen + tlen + 2);
    if (job->storage == NULL) {
        set_err(err, err_len, "out of memory");
        return -1;
    }
    p = job->storage;
    memcpy(p, fields, flen + 1);
    for (i = 0; i <= flen;) {
        size_t start = i;
        while (i < flen && p[i] != ',')
            i++;
        if (i == start || i - start > 255) {
            set_err(err, err_len, "--fields: field names must be 1 to 255 bytes, comma-separated");
            goto fail;
        }
        if (job->nfields == JSONL_MAX_FIELDS) {
            set_err(err, err_len, "--fields: at most %d fields", JSONL_MAX_FIELDS);
            goto fail;
        }
        for (j = 0; j < job->nfields; j++) {
            if (job->field_lens[j] == i - start && memcmp(job->fields[j], p + start, i - start) == 0) {
                set_err(err, err_len, "--fields: a field is named twice");
                goto fail;
            }
        }
        p[i] = '\0';
        job->fields[job->nfields] = p + start;
        job->field_lens[job->nfields++] = i - start;
        i++;
    }

    /* The template: literal text, {field}, {KEY}; {{ and }} are braces. */
    p = job->storage + flen + 1;
    {
        size_t o = 0, lit_start = 0;
        i = 0;
        while (i < tlen) {
            char c = tmpl[i];
            if ((c == '{' && i + 1 < tlen && tmpl[i + 1] == '{') ||
                (c == '}' && i + 1 < tlen && tmpl[i + 1] == '}')) {
                p[o++] = c;
                i += 2;
                continue;
            }
            if (c == '}') {
                set_err(err, err_len, "--context: unmatched '}' (write '}}' for a brace)");
                goto fail;
            }
            if (c != '{') {
                p[o++] = c;
                i++;
                continue;
            }
            /* a placeholder: first close the literal before it */
            if (o > lit_start) {
                if (job->nparts >= JSONL_MAX_TEMPLATE_PARTS - 1)
                    goto too_many;
                job->parts[job->nparts++] = (tpl_part){TPL_TEXT, p + lit_start, o - lit_start};
            }
            {
                const char *close = memchr(tmpl + i + 1, '}', tlen - i - 1);
                size_t name_len;
                if (close == NULL) {
                    set_err(err, err_len, "--context: unclosed '{'");
                    goto fail;
                }
                name_len = (size_t)(close - (tmpl + i + 1));
                if (name_len == 0 || memchr(tmpl + i + 1, '{', name_len) != NULL) {
                    set_err(err, err_len, "--context: empty or malformed placeholder");
                    goto fail;
                }
                memcpy(p + o, tmpl + i + 1, name_len);
                if (job->nparts >= JSONL_MAX_TEMPLATE_PARTS)
                    goto too_many;
                if (name_len == 5 && memcmp(p + o, "field", 5) == 0) {
                    job->parts[job->nparts++] = (tpl_part){TPL_FIELD, NULL, 0};
                } else {
                    for (j = 0; j < job->nfields; j++) {
                        if (job->field_lens[j] == name_len &&
                            memcmp(job->fields[j], p + o, name_len) == 0) {
                            set_err(err, err_len,
                                    "--context: placeholder {%.*s} names a field that is "
                                    "encrypted; its value could not be rebuilt to decrypt",
                                    (int)name_len, p + o);
                            goto fail;
                        }
                    }
                    job->parts[job->nparts++] = (tpl_part){TPL_KEY, p + o, name_len};
                }
                o += name_len;
                lit_start = o;
                i += name_len + 2;
            }
        }
        if (o > lit_start) {
            if (job->nparts >= JSONL_MAX_TEMPLATE_PARTS)
                goto too_many;
            job->parts[job->nparts++] = (tpl_part){TPL_TEXT, p + lit_start, o - lit_start};
        }
    }
    if (job->nparts == 0) {
        set_err(err, err_len, "--context: empty template");
        goto fail;
    }
    return 0;
too_many:
    set_err(err, err_len, "--context: more than %d parts", JSONL_MAX_TEMPLATE_PARTS);
fail:
    jsonl_job_free(job);
    return -1;
}

void jsonl_job_free(jsonl_job *job)
{
    free(job->storage);
    memset(job, 0, sizeof *job);
}

/* Build the context for field number f of a record into ctx. */
/*
 * Build the context for field number f of a record into ctx. key_member[k] is
 * the member filling template part k (for TPL_KEY parts), found once per
 * record by jsonl_transform: -1 absent, -2 present twice.
 */
static int build_context(const jsonl_job *job, size_t f, const char *line, const member *m,
                         const long *key_member, char *ctx, size_t *ctx_len, char *err,
                         size_t err_len)
{
    size_t o = 0, k;
    for (k = 0; k < job->nparts; k++) {
        const tpl_part *part = &job->parts[k];
        const char *text = part->text;
        size_t len = part->len;
        /* An escape takes at most 6 characters per decoded byte (\u0041), so
         * a string whose text is over 6 * 512 decodes to over 512 bytes. */
        char decoded[6 * PHG_PHI_CONTEXT_MAX];
        if (part->kind == TPL_FIELD) {
            text = job->fields[f];
            len = job->field_lens[f];
        } else if (part->kind == TPL_KEY) {
            long idx = key_member[k];
            const member *mv;
            char first;
            if (idx == -1) {
                set_err(err, err_len, "no member \"%.*s\" for the context template",
                        (int)(part->len > 64 ? 64 : part->len), part->text);
                return -1;
            }
            if (idx == -2) {
                set_err(err, err_len, "member \"%.*s\" appears twice",
                        (int)(part->len > 64 ? 64 : part->len), part->text);
                return -1;
            }
            mv = &m[idx];
            first = line[mv->val_off];
            if (first == '"') {
                if (mv->val_len - 2 > sizeof decoded)
                    goto too_long;
                len = decode_string(line + mv->val_off + 1, mv->val_len - 2, decoded);
                text = decoded;
            } else if (first == '{' || first == '[' || first == 'n') {
                set_err(err, err_len, "member \"%.*s\" is null, an object or an array: it cannot "
                        "fill the context", (int)(part->len > 64 ? 64 : part->len), part->text);
                return -1;
            } else {
                text = line + mv->val_off;
                len = mv->val_len;
            }
        }
        if (len > PHG_PHI_CONTEXT_MAX - o)
            goto too_long;
        memcpy(ctx + o, text, len);
        o += len;
    }
    if (o == 0) {
        set_err(err, err_len, "the context is empty");
        return -1;
    }
    *ctx_len = o;
    return 0;
too_long:
    set_err(err, err_len, "the context is longer than %d bytes", PHG_PHI_CONTEXT_MAX);
    return -1;
}

/* The value's text without insignificant whitespace. out has room for len. */
static size_t compact(const char *s, size_t len, char *out)
{
    size_t i, o = 0;
    int in_string = 0;
    for (i = 0; i < len; i++) {
        char c = s[i];
        if (in_string) {
            out[o++] = c;
            if (c == '\\') {
                out[o++] = s[++i];
            } else if (c == '"') {
                in_string = 0;
            }
        } else if (c == '"') {
            in_string = 1;
            out[o++] = c;
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            out[o++] = c;
        }
    }
    return o;
}

static int transform_field(const jsonl_job *job, size_t f, const char *line, const member *m,
                           const long *key_member, const member *v, jbuf *out, char *err,
                           size_t err_len)
{
    char ctx[PHG_PHI_CONTEXT_MAX];
    size_t ctx_len = 0, n = 0;
    phg_status st;

    if (build_context(job, f, line, m, key_member, ctx, &ctx_len, err, err_len) != 0)
        return -1;
    if (!job->decrypt) {
        char stack[1024], *plain = stack;
        size_t plen, need = PHG_PHI_CIPHERTEXT_MAX_LEN(v->val_len) + 2;
        if (v->val_len > sizeof stack) {
            plain = malloc(v->val_len);
            if (plain == NULL) {
                set_err(err, err_len, "out of memory");
                return -1;
            }
        }
        plen = compact(line + v->val_off, v->val_len, plain);
        if (jbuf_reserve(out, need) != 0) {
            set_err(err, err_len, "output buffer limit reached");
            st = PHG_ERR_TOO_LARGE;
        } else {
            out->p[out->len] = '"';
            st = phg_phi_encrypt(job->kr, ctx, ctx_len, (const uint8_t *)plain, plen,
                                 out->p + out->len + 1, need - 2, &n);
            if (st == PHG_OK) {
                out->p[out->len + 1 + n] = '"';
                out->len += n + 2;
            } else {
                set_err(err, err_len, "field \"%s\": cannot encrypt: %s", job->fields[f],
                        phg_strerror(st));
            }
        }
        phg_wipe(plain, plen);
        if (plain != stack)
            free(plain);
        return st == PHG_OK ? 0 : -1;
    }

    /* decrypt: the value must be a plain JSON string holding a phi1 ciphertext */
    if (v->val_len < 2 || line[v->val_off] != '"' ||
        memchr(line + v->val_off, '\\', v->val_len) != NULL) {
        set_err(err, err_len, "field \"%s\" is not a phi1 ciphertext string", job->fields[f]);
        return -1;
    }
    if (jbuf_reserve(out, v->val_len) != 0) {
        set_err(err, err_len, "output buffer limit reached");
        return -1;
    }
    st = phg_phi_decrypt(job->kr, ctx, ctx_len, line + v->val_off + 1, v->val_len - 2,
                         (uint8_t *)out->p + out->len, v->val_len, &n);
    if (st == PHG_ERR_FORMAT) {
        set_err(err, err_len, "field \"%s\" is not a phi1 ciphertext string", job->fields[f]);
        return -1;
    }
    if (st != PHG_OK) {
        set_err(err, err_len, "field \"%s\": decryption failed", job->fields[f]);
        return -1;
    }
    if (!jsonl_validate_value(out->p + out->len, n)) {
        phg_wipe(out->p + out->len, n);
        set_err(err, err_len, "field \"%s\": the decrypted value is not JSON", job->fields[f]);
        return -1;
    }
    out->len += n;
    return 0;
}

/* Record member i in slot *slot, or mark a duplicate (-2). */
static void claim(long *slot, size_t i)
{
    *slot = *slot == -1 ? (long)i : -2;
}

int jsonl_transform(const jsonl_job *job, const char *line, size_t len, jbuf *out, char *err,
                    size_t err_len)
{
    member stack_members[64], *m = stack_members;
    long field_member[JSONL_MAX_FIELDS], key_member[JSONL_MAX_TEMPLATE_PARTS];
    signed char stack_field_of[64], *field_of = stack_field_of;
    size_t nm = 0, start = out->len, copied = 0, i, f, k;
    int rc = -1;

    /* A member takes at least 4 bytes ("":0 and a comma or brace), so a line
     * of len bytes has at most len / 4 + 1 of them. */
    if (len / 4 + 1 > sizeof stack_members / sizeof stack_members[0]) {
        m = malloc(JSONL_MAX_MEMBERS * (sizeof *m + 1));
        if (m == NULL) {
            set_err(err, err_len, "out of memory");
            return -1;
        }
        field_of = (signed char *)(m + JSONL_MAX_MEMBERS);
    }
    if (parse_record(line, len, m, &nm, err, err_len) != 0)
        goto out;

    /* One pass over the members finds the fields and the template's keys. */
    for (f = 0; f < job->nfields; f++)
        field_member[f] = -1;
    for (k = 0; k < job->nparts; k++)
        key_member[k] = -1;
    for (i = 0; i < nm; i++) {
        field_of[i] = -1;
        for (f = 0; f < job->nfields; f++) {
            if (key_equals(line, &m[i], job->fields[f], job->field_lens[f])) {
                claim(&field_member[f], i);
                field_of[i] = (signed char)f;
                break;
            }
        }
        if (field_of[i] >= 0)
            continue; /* a template key never names an encrypted field */
        for (k = 0; k < job->nparts; k++) {
            if (job->parts[k].kind == TPL_KEY &&
                key_equals(line, &m[i], job->parts[k].text, job->parts[k].len))
                claim(&key_member[k], i);
        }
    }
    for (f = 0; f < job->nfields; f++) {
        if (field_member[f] == -2) {
            set_err(err, err_len, "field \"%s\" appears twice", job->fields[f]);
            goto out;
        }
    }

    for (i = 0; i < nm; i++) {
        if (field_of[i] < 0)
            continue;
        if (jbuf_put(out, line + copied, m[i].val_off - copied) != 0) {
            set_err(err, err_len, "output buffer limit reached");
            goto out;
        }
        if (transform_field(job, (size_t)field_of[i], line, m, key_member, &m[i], out, err,
                            err_len) != 0)
            goto out;
        copied = m[i].val_off + m[i].val_len;
    }
    if (jbuf_put(out, line + copied, len - copied) != 0 || jbuf_put(out, "\n", 1) != 0) {
        set_err(err, err_len, "output buffer limit reached");
        goto out;
    }
    rc = 0;
out:
    if (rc != 0 && out->p != NULL) { /* nothing of a bad record stays in the output */
        phg_wipe(out->p + start, out->len - start);
        out->len = start;
    }
    if (m != stack_members)
        free(m);
    return rc;
}

/* ---- the pipeline ---------------------------------------------------------------- */

#define BATCH_TARGET_BYTES (256u << 10)
#define BATCH_MAX_LINES 4096
#define READ_CHUNK (1u << 20)
#define MAX_REPORTED_REJECTS 100

typedef struct line_ref {
    size_t off, len;
    uint64_t line_no;
    int too_long;
} line_ref;

typedef struct batch {
    jbuf in, out, rejects, msgs;
    line_ref lines[BATCH_MAX_LINES];
    size_t nlines;
    uint64_t records, rejected;
    int failed;            /* stop mode: a bad line ended this batch */
    char err[320];
    int done;
    struct batch *next;    /* work queue */
} batch;

typedef struct reader {
    FILE *in;
    char *buf;
    size_t cap, start, end, max_line;
    uint64_t line_no;
    int eof, discarding, error;
} reader;

typedef struct pipeline {
    const jsonl_job *job;
    int rejects_mode;
    size_t max_line;
    pthread_mutex_t lock;
    pthread_cond_t work_ready, batch_done;
    batch *queue_head, *queue_tail;
    int shutdown, stop;
} pipeline;

static void reader_fill(reader *r)
{
    size_t got;
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    got = fread(r->buf + r->end, 1, r->cap - r->end, r->in);
    r->end += got;
    if (got == 0) {
        r->eof = 1;
        if (ferror(r->in))
            r->error = 1;
    }
}

static int batch_add_line(batch *b, reader *r, const char *p, size_t len, int too_long)
{
    line_ref *l = &b->lines[b->nlines];
    r->line_no++;
    if (!too_long && len > 0 && p[len - 1] == '\r')
        len--; /* CRLF input */
    l->line_no = r->line_no;
    l->too_long = too_long;
    l->off = b->in.len;
    l->len = too_long ? 0 : len;
    if (!too_long && jbuf_put(&b->in, p, len) != 0)
        return -1;
    b->nlines++;
    return 0;
}

/* Fill b with whole lines. Returns the number of lines, 0 at the end, -1 on error. */
static int read_batch(reader *r, batch *b)
{
    while (b->nlines < BATCH_MAX_LINES && b->in.len < BATCH_TARGET_BYTES) {
        char *nl;
        if (r->start == r->end) {
            if (r->eof)
                break;
            reader_fill(r);
            continue;
        }
        nl = memchr(r->buf + r->start, '\n', r->end - r->start);
        if (r->discarding) {
            if (nl == NULL) {
                r->start = r->end;
                if (r->eof) {
                    r->discarding = 0;
                    if (batch_add_line(b, r, NULL, 0, 1) != 0)
                        return -1;
                }
                continue;
            }
            r->start = (size_t)(nl - r->buf) + 1;
            r->discarding = 0;
            if (batch_add_line(b, r, NULL, 0, 1) != 0)
                return -1;
            continue;
        }
        if (nl != NULL) {
            size_t len = (size_t)(nl - (r->buf + r->start));
            int too_long = len > r->max_line;
            if (batch_add_line(b, r, r->buf + r->start, len, too_long) != 0)
                return -1;
            r->start += len + 1;
            continue;
        }
        /* No newline in what we hold. */
        if (r->end - r->start > r->max_line) {
            r->discarding = 1; /* the line is too long: skip to its end */
            r->start = r->end;
            continue;
        }
        if (r->eof) { /* last line without a newline */
            size_t len = r->end - r->start;
            if (batch_add_line(b, r, r->buf + r->start, len, 0) != 0)
                return -1;
            r->start = r->end;
            break;
        }
        reader_fill(r);
    }
    return r->error ? -1 : (int)b->nlines;
}

static void process_batch(pipeline *pl, batch *b)
{
    size_t i;
    char err[256];
    for (i = 0; i < b->nlines; i++) {
        const line_ref *l = &b->lines[i];
        const char *text = b->in.p + l->off;
        int bad;
        if (pl->stop)
            break;
        err[0] = '\0';
        if (l->too_long) {
            set_err(err, sizeof err, "longer than %zu bytes", pl->max_line);
            bad = 1;
        } else if (l->len == 0) {
            set_err(err, sizeof err, "empty line");
            bad = 1;
        } else {
            bad = jsonl_transform(pl->job, text, l->len, &b->out, err, sizeof err) != 0;
        }
        if (!bad) {
            b->records++;
            continue;
        }
        if (!pl->rejects_mode) {
            b->failed = 1;
            snprintf(b->err, sizeof b->err, "line %llu: %s", (unsigned long long)l->line_no, err);
            break;
        }
        b->rejected++;
        if (!l->too_long) {
            if (jbuf_put(&b->rejects, text, l->len) != 0 || jbuf_put(&b->rejects, "\n", 1) != 0) {
                b->failed = 1;
                snprintf(b->err, sizeof b->err, "line %llu: rejects buffer limit reached",
                         (unsigned long long)l->line_no);
                break;
            }
        }
        {
            char msg[320];
            int n = snprintf(msg, sizeof msg, "phigate: line %llu: %s%s\n",
                             (unsigned long long)l->line_no, err,
                             l->too_long ? " (not copied to the rejects file)" : "");
            if (n > 0)
                (void)jbuf_put(&b->msgs, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
        }
    }
}

static void *worker_main(void *arg)
{
    pipeline *pl = arg;
    for (;;) {
        batch *b;
        pthread_mutex_lock(&pl->lock);
        while (pl->queue_head == NULL && !pl->shutdown)
            pthread_cond_wait(&pl->work_ready, &pl->lock);
        b = pl->queue_head;
        if (b == NULL) {
            pthread_mutex_unlock(&pl->lock);
            return NULL;
        }
        pl->queue_head = b->next;
        if (pl->queue_head == NULL)
            pl->queue_tail = NULL;
        pthread_mutex_unlock(&pl->lock);

        process_batch(pl, b);

        pthread_mutex_lock(&pl->lock);
        b->done = 1;
        pthread_cond_broadcast(&pl->batch_done);
        pthread_mutex_unlock(&pl->lock);
    }
}

static batch *batch_new(size_t max_line, size_t nfields)
{
    batch *b = calloc(1, sizeof *b);
    size_t in_max = BATCH_TARGET_BYTES + max_line + 1;
    if (b == NULL)
        return NULL;
    b->in.max = in_max;
    /* Each encrypted value grows to at most 4/3 of (itself + 28) plus the
     * header and quotes: 2x + 96 per field bounds it with room to spare. */
    b->out.max = 3 * in_max + (size_t)BATCH_MAX_LINES * (nfields + 1) * 128;
    b->rejects.max = in_max + BATCH_MAX_LINES;
    b->msgs.max = (size_t)BATCH_MAX_LINES * 400;
    return b;
}

/* Batches are recycled: their buffers are large, and allocating them anew
 * for every batch costs page faults that show up as a third of the run. */
static batch *batch_take(batch **spare, size_t max_line, size_t nfields)
{
    batch *b = *spare;
    if (b == NULL)
        return batch_new(max_line, nfields);
    *spare = b->next;
    b->in.len = b->out.len = b->rejects.len = b->msgs.len = 0;
    b->nlines = 0;
    b->records = b->rejected = 0;
    b->failed = b->done = 0;
    b->err[0] = '\0';
    b->next = NULL;
    return b;
}

static void batch_recycle(batch **spare, batch *b)
{
    b->next = *spare;
    *spare = b;
}

static void batch_free(batch *b)
{
    if (b == NULL)
        return;
    jbuf_free(&b->in);
    jbuf_free(&b->out);
    jbuf_free(&b->rejects);
    jbuf_free(&b->msgs);
    free(b);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int jsonl_run(const jsonl_job *job, FILE *in, FILE *out, FILE *rejects, int threads,
              size_t max_line, int progress, jsonl_stats *stats, char *err, size_t err_len)
{
    pipeline pl;
    reader rd;
    pthread_t *tids = NULL;
    batch **ring = NULL, *spare = NULL;
    size_t window, head = 0, count = 0, reported = 0;
    int started = 0, i, rc = -1, eof = 0;
    double t0 = now_s(), last_progress = t0;

    memset(stats, 0, sizeof *stats);
    memset(&pl, 0, sizeof pl);
    memset(&rd, 0, sizeof rd);
    if (threads < 1)
        threads = 1;
    pl.job = job;
    pl.rejects_mode = rejects != NULL;
    pl.max_line = max_line;
    pthread_mutex_init(&pl.lock, NULL);
    pthread_cond_init(&pl.work_ready, NULL);
    pthread_cond_init(&pl.batch_done, NULL);
    rd.in = in;
    rd.max_line = max_line;
    rd.cap = max_line + READ_CHUNK + 1;
    rd.buf = malloc(rd.cap);
    window = (size_t)threads * 2 + 2;
    ring = calloc(window, sizeof *ring);
    tids = calloc((size_t)threads, sizeof *tids);
    if (rd.buf == NULL || ring == NULL || tids == NULL) {
        set_err(err, err_len, "out of memory");
        goto out;
    }
    for (i = 0; i < threads; i++) {
        if (pthread_create(&tids[i], NULL, worker_main, &pl) != 0) {
            set_err(err, err_len, "cannot start worker threads");
            goto out;
        }
        started++;
    }

    for (;;) {
        batch *b;
        /* Keep the window full while there is input. */
        if (!eof && count < window) {
            int n;
            b = batch_take(&spare, max_line, job->nfields);
            if (b == NULL) {
                set_err(err, err_len, "out of memory");
                goto out;
            }
            n = read_batch(&rd, b);
            if (n < 0) {
                batch_free(b);
                set_err(err, err_len, rd.error ? "cannot read standard input" : "out of memory");
                goto out;
            }
            if (n == 0) {
                batch_recycle(&spare, b);
                eof = 1;
                continue;
            }
            stats->bytes_in += b->in.len + b->nlines;
            ring[(head + count) % window] = b;
            count++;
            pthread_mutex_lock(&pl.lock);
            if (pl.queue_tail != NULL)
                pl.queue_tail->next = b;
            else
                pl.queue_head = b;
            pl.queue_tail = b;
            pthread_cond_signal(&pl.work_ready);
            pthread_mutex_unlock(&pl.lock);
            continue;
        }
        if (count == 0)
            break;
        /* Write the oldest batch once it is done: input order is kept. */
        b = ring[head];
        pthread_mutex_lock(&pl.lock);
        while (!b->done)
            pthread_cond_wait(&pl.batch_done, &pl.lock);
        pthread_mutex_unlock(&pl.lock);
        if (b->out.len > 0 && fwrite(b->out.p, 1, b->out.len, out) != b->out.len) {
            set_err(err, err_len, "cannot write the output: %s", strerror(errno));
            goto out;
        }
        if (rejects != NULL && b->rejects.len > 0 &&
            fwrite(b->rejects.p, 1, b->rejects.len, rejects) != b->rejects.len) {
            set_err(err, err_len, "cannot write the rejects file: %s", strerror(errno));
            goto out;
        }
        if (b->msgs.len > 0 && reported < MAX_REPORTED_REJECTS) {
            /* one message per rejected line, up to a bound */
            const char *p = b->msgs.p, *end = b->msgs.p + b->msgs.len;
            while (p < end && reported < MAX_REPORTED_REJECTS) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
                fwrite(p, 1, n, stderr);
                p += n;
                reported++;
            }
        }
        stats->records += b->records;
        stats->rejected += b->rejected;
        stats->bytes_out += b->out.len;
        if (b->failed) {
            set_err(err, err_len, "%s", b->err);
            goto out;
        }
        batch_recycle(&spare, b);
        ring[head] = NULL;
        head = (head + 1) % window;
        count--;
        if (progress && now_s() - last_progress >= 0.5) {
            double el = now_s() - t0;
            last_progress = now_s();
            fprintf(stderr, "\rphigate: %llu records, %.1f MB, %.1f MB/s   ",
                    (unsigned long long)stats->records, (double)stats->bytes_in / 1e6,
                    (double)stats->bytes_in / 1e6 / (el > 0 ? el : 1));
        }
    }
    if (fflush(out) != 0 || ferror(out)) {
        set_err(err, err_len, "cannot write the output: %s", strerror(errno));
        goto out;
    }
    if (rejects != NULL && fflush(rejects) != 0) {
        set_err(err, err_len, "cannot write the rejects file: %s", strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (progress)
        fputc('\n', stderr);
    if (reported >= MAX_REPORTED_REJECTS && stats->rejected > reported)
        fprintf(stderr, "phigate: ... %llu more rejected lines not listed\n",
                (unsigned long long)(stats->rejected - reported));
    fflush(out);
    pthread_mutex_lock(&pl.lock);
    pl.stop = 1;
    pl.shutdown = 1;
    pthread_cond_broadcast(&pl.work_ready);
    pthread_mutex_unlock(&pl.lock);
    for (i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    while (ring != NULL && count > 0) { /* batches still in flight after a stop */
        batch_free(ring[head]);
        head = (head + 1) % window;
        count--;
    }
    while (spare != NULL) {
        batch *next = spare->next;
        batch_free(spare);
        spare = next;
    }
    free(ring);
    free(tids);
    free(rd.buf);
    pthread_cond_destroy(&pl.work_ready);
    pthread_cond_destroy(&pl.batch_done);
    pthread_mutex_destroy(&pl.lock);
    return rc;
}

/* ---- the commands --------------------------------------------------------------------- */

static int jsonl_command(int decrypt, int argc, char **argv)
{
    const char *cmd = decrypt ? "phi decrypt-jsonl" : "phi encrypt-jsonl";
    cli_opt opts[] = {
        {"keyring", 1, NULL, 0}, {"fields", 1, NULL, 0},  {"context", 1, NULL, 0},
        {"rejects", 1, NULL, 0}, {"threads", 1, NULL, 0}, {"max-line", 1, NULL, 0},
        {"master-key-file", 1, NULL, 0}, {"json", 0, NULL, 0}, {"no-progress", 0, NULL, 0},
        {"cache-entries", 1, NULL, 0}, {"store", 1, NULL, 0}, {NULL, 0, NULL, 0},
    };
    phg_masterkeys *mk = NULL;
    phg_keyring *kr = NULL;
    jsonl_job job;
    jsonl_stats stats;
    FILE *rejects = NULL;
    size_t max_line = JSONL_DEFAULT_MAX_LINE, threads_n = 0, cache = JSONL_DEFAULT_CACHE;
    char err[400];
    int rc, progress;
    long ncpu;
    double t0;

    memset(&job, 0, sizeof job);
    if (cli_wants_help(argc, argv)) {
        printf("Usage: phigate %s --keyring FILE --fields F1,F2 --context TEMPLATE\n"
               "         [--rejects FILE] [--threads N] [--max-line BYTES] [--json]\n\n",
               cmd);
        if (!decrypt)
            puts("Stream JSONL from stdin to stdout. In every record, the value (any JSON\n"
                 "type) of each named top-level field is replaced by the phi1 ciphertext of\n"
                 "its compact JSON text. Everything else in the record is kept byte for byte.");
        else
            puts("Undo encrypt-jsonl: every named field holding a phi1 ciphertext gets its\n"
                 "original JSON value (and type) back.");
        puts("\nThe context of each field is the template with {field} replaced by the\n"
             "field's name and {KEY} by the record's top-level KEY value, for example\n"
             "--context 'user={user_id};field={field}'. {{ and }} are literal braces.\n\n"
             "Input order is kept and every core is used (--threads, default: all).\n"
             "A bad line stops the run with its line number and exit status 1; every\n"
             "record before it has been written, nothing after it, never half a record.\n"
             "With --rejects FILE bad lines go to FILE and the run goes on (exit 0).\n"
             "Lines are at most --max-line bytes (default 1M). Progress is shown on stderr\n"
             "when it is a terminal (--no-progress hides it). Derived field keys of up to\n"
             "--cache-entries contexts (default 65536, about 1 KiB each) are kept ready;\n"
             "more distinct contexts than that cost an HKDF (~4 us) per field.\n"
             "--json prints a summary object on stderr at the end.");
        return CLI_OK;
    }
    if (cli_parse_opts(cmd, argc, argv, opts) != CLI_OK)
        return CLI_USAGE;
    if (cli_keyring_where(cmd, opts[0].value, opts[10].value) != CLI_OK)
        return CLI_USAGE;
    if (!opts[1].set)
        return cli_usage(cmd, "--fields F1,F2 is required");
    if (!opts[2].set)
        return cli_usage(cmd, "--context TEMPLATE is required");
    if (opts[4].set && (!cli_parse_size(opts[4].value, &threads_n) || threads_n < 1 ||
                        threads_n > 256))
        return cli_usage(cmd, "--threads must be 1 to 256");
    if (opts[5].set && (!cli_parse_size(opts[5].value, &max_line) || max_line < 2 ||
                        max_line > (256u << 20)))
        return cli_usage(cmd, "--max-line must be 2 bytes to 256M");
    if (opts[9].set && (!cli_parse_size(opts[9].value, &cache) || cache > (16u << 20)))
        return cli_usage(cmd, "--cache-entries must be 0 to 16M");
    if (jsonl_job_init(&job, NULL, decrypt, opts[1].value, opts[2].value, err, sizeof err) != 0)
        return cli_usage(cmd, "%s", err);
    rc = cli_load_masterkeys(opts[6].value, &mk);
    if (rc != CLI_OK)
        goto out;
    rc = cli_keyring_load(opts[0].value, opts[10].value, mk, cache, &kr);
    if (rc != CLI_OK)
        goto out;
    job.kr = kr;
    rc = CLI_FAIL;
    if (opts[3].set) {
        rejects = fopen(opts[3].value, "w");
        if (rejects == NULL) {
            cli_error("--rejects %s: %s", opts[3].value, strerror(errno));
            goto out;
        }
    }
    if (threads_n == 0) {
        ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        threads_n = ncpu > 0 ? (size_t)ncpu : 1;
    }
    progress = !opts[8].set && isatty(STDERR_FILENO);
    t0 = now_s();
    if (jsonl_run(&job, stdin, stdout, rejects, (int)threads_n, max_line, progress, &stats, err,
                  sizeof err) != 0) {
        cli_error("%s", err);
        rc = CLI_FAIL;
    } else {
        rc = CLI_OK;
    }
    if (opts[7].set) {
        double el = now_s() - t0;
        phg_phi_cache_stats cs;
        json_t *summary;
        phg_keyring_cache_stats(kr, &cs);
        summary = json_pack("{s:b,s:I,s:I,s:I,s:I,s:f,s:{s:I,s:I,s:I,s:I}}", "ok", rc == CLI_OK,
                            "records", (json_int_t)stats.records, "rejected",
                            (json_int_t)stats.rejected, "bytes_in", (json_int_t)stats.bytes_in,
                            "bytes_out", (json_int_t)stats.bytes_out, "seconds", el,
                            "key_cache", "hits", (json_int_t)cs.hits, "misses",
                            (json_int_t)cs.misses, "evictions", (json_int_t)cs.evictions,
                            "capacity", (json_int_t)cs.capacity);
        char *text = summary ? json_dumps(summary, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        if (text != NULL)
            fprintf(stderr, "%s\n", text);
        free(text);
        json_decref(summary);
    }
out:
    if (rejects != NULL && fclose(rejects) != 0 && rc == CLI_OK) {
        cli_error("--rejects: cannot write: %s", strerror(errno));
        rc = CLI_FAIL;
    }
    jsonl_job_free(&job);
    phg_keyring_free(kr);
    phg_phi_masterkeys_free(mk);
    return rc;
}

int cmd_phi_encrypt_jsonl(int argc, char **argv)
{
    return jsonl_command(0, argc, argv);
}

int cmd_phi_decrypt_jsonl(int argc, char **argv)
{
    return jsonl_command(1, argc, argv);
}
