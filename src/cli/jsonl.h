/*
 * jsonl.h: the JSONL field-encryption engine behind `phigate phi
 * encrypt-jsonl` / `decrypt-jsonl`: a strict JSON scanner that finds the
 * top-level members of a record without building a tree, the transform of one
 * record, and the ordered multi-threaded pipeline over a stream.
 *
 * The record format and context templates are in docs/formats.md ("JSONL
 * migration"). Exposed in a header so the fuzz driver and the benchmark can
 * call the same code as the CLI.
 */
#ifndef PHG_CLI_JSONL_H
#define PHG_CLI_JSONL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "phigate.h"

#define JSONL_MAX_FIELDS 64
#define JSONL_MAX_MEMBERS 1024     /* top-level members of one record */
#define JSONL_MAX_DEPTH 64         /* nesting of arrays and objects */
#define JSONL_DEFAULT_MAX_LINE (1u << 20)
#define JSONL_MAX_TEMPLATE_PARTS 64
#define JSONL_DEFAULT_CACHE 65536       /* derived field keys kept by the CLI */

typedef enum { TPL_TEXT, TPL_FIELD, TPL_KEY } tpl_kind;

typedef struct tpl_part {
    tpl_kind kind;
    const char *text; /* TPL_TEXT: literal; TPL_KEY: key name (decoded) */
    size_t len;
} tpl_part;

/* A parsed job: what to encrypt and how to build each context. */
typedef struct jsonl_job {
    phg_keyring *kr;
    int decrypt;
    size_t nfields;
    const char *fields[JSONL_MAX_FIELDS];
    size_t field_lens[JSONL_MAX_FIELDS];
    size_t nparts;
    tpl_part parts[JSONL_MAX_TEMPLATE_PARTS];
    char *storage; /* owns the strings of parts */
} jsonl_job;

/* A growable byte buffer with a hard maximum. */
typedef struct jbuf {
    char *p;
    size_t len, cap, max;
} jbuf;

/*
 * Set up a job from the --fields list ("a,b") and the --context template.
 * On failure returns -1 and puts a message in err.
 */
int jsonl_job_init(jsonl_job *job, phg_keyring *kr, int decrypt, const char *fields,
                   const char *tmpl, char *err, size_t err_len);
void jsonl_job_free(jsonl_job *job);

/*
 * Transform one record (without its newline) and append the result and a
 * "\n" to out. On a bad record returns -1, appends nothing, and puts the
 * reason in err (never any content of the record).
 */
int jsonl_transform(const jsonl_job *job, const char *line, size_t len, jbuf *out, char *err,
                    size_t err_len);

/* Validate that (s, len) is exactly one JSON value (RFC 8259, UTF-8). */
int jsonl_validate_value(const char *s, size_t len);

typedef struct jsonl_stats {
    uint64_t records, rejected, bytes_in, bytes_out;
} jsonl_stats;

/*
 * Stream in to out with `threads` workers, keeping input order. Lines over
 * max_line bytes are bad. Without rejects the run stops at the first bad
 * line: every record before it is written, nothing after, and -1 is returned
 * with "line N: reason" in err. With rejects, bad lines are written there and
 * the run goes on. Progress goes to stderr when `progress` is set.
 */
int jsonl_run(const jsonl_job *job, FILE *in, FILE *out, FILE *rejects, int threads,
              size_t max_line, int progress, jsonl_stats *stats, char *err, size_t err_len);

void jbuf_free(jbuf *b);

#endif
