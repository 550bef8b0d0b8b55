/*
 * tests/unit/test_store.c: the storage layer (include/phigate/store.h, and the
 * migration runner of src/store_internal.h) against its header contract, on
 * both engines: every test runs once on SQLite and once on PostgreSQL (the
 * throwaway server of tests/pg_server.sh; see testdb.h).
 *
 * Covered: store URLs that must be refused (and how), unreachable servers and
 * files, migrations (fresh, re-run, a database newer than this build, a
 * failing step rolled back), the keyring row, and many threads on one pool.
 *
 * API keys, which also live in the store, are tested in test_apikey.c.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "phigate/store.h"
#include "store_internal.h"
#include "testdb.h"

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define EXPECT_RC(got, want)                                                                       \
    do {                                                                                           \
        phg_status got_ = (got), want_ = (want);                                                   \
        EXPECT(got_ == want_, "[%s] %s: got %s, want %s", tdb_engine_name(g_engine), #got,         \
               phg_status_name(got_), phg_status_name(want_));                                     \
    } while (0)


/* ---- helpers ------------------------------------------------------------------------- */

static int db_setup(void **state)
{
    testdb *db = calloc(1, sizeof *db);
    if (db == NULL)
        return -1;
    tdb_create(db, g_engine, "store");
    *state = db;
    return 0;
}

static int db_teardown(void **state)
{
    testdb *db = *state;
    if (db != NULL)
        tdb_drop(db);
    free(db);
    return 0;
}

static phg_store *open_store(const testdb *db, size_t pool)
{
    phg_store *st = NULL;
    char err[PHG_STORE_ERR_MAX];
    phg_status rc = tdb_open_store(db, pool, &st, err, sizeof err);
    EXPECT(rc == PHG_OK, "[%s] open %s: %s (%s)", tdb_engine_name(db->engine), db->url,
           phg_status_name(rc), err);
    EXPECT(st != NULL, "open: no store");
    return st;
}

static phg_store *open_migrated(const testdb *db, size_t pool)
{
    phg_store *st = open_store(db, pool);
    char err[PHG_STORE_ERR_MAX] = "";
    phg_status rc = phg_store_migrate(st, NULL, NULL, err, sizeof err);
    EXPECT(rc == PHG_OK, "[%s] migrate: %s (%s)", tdb_engine_name(db->engine), phg_status_name(rc),
           err);
    return st;
}

static int engine_latest(tdb_engine e)
{
    return e == TDB_SQLITE ? phg_migrations_sqlite_count : phg_migrations_postgres_count;
}

static const phg_migration *engine_migrations(tdb_engine e)
{
    return e == TDB_SQLITE ? phg_migrations_sqlite : phg_migrations_postgres;
}

/* phg_store_open must refuse url with `want`, put a message in err, and
 * leave *out NULL. */
static void expect_open_fails(const char *url, phg_status want, const char *what)
{
    phg_store *st = (phg_store *)&st; /* any non-NULL value: must be reset */
    char err[PHG_STORE_ERR_MAX];
    phg_status rc;
    memset(err, 0, sizeof err);
    rc = phg_store_open(url, NULL, &st, err, sizeof err);
    EXPECT(rc == want, "[%s] %s: got %s, want %s (%s)", tdb_engine_name(g_engine), what,
           phg_status_name(rc), phg_status_name(want), err);
    EXPECT(st == NULL, "%s: *out not NULL after a failure", what);
    EXPECT(err[0] != '\0', "%s: no message in err", what);
    EXPECT(memchr(err, '\0', sizeof err) != NULL, "%s: err not terminated", what);
    /* err may be NULL */
    st = (phg_store *)&st;
    rc = phg_store_open(url, NULL, &st, NULL, 0);
    EXPECT(rc == want, "%s (err NULL): got %s", what, phg_status_name(rc));
    EXPECT(st == NULL, "%s (err NULL): *out not NULL", what);
}

/* ---- URLs and reachability ------------------------------------------------------------ */

static void test_open_bad_urls(void **state)
{
    char *long_url;
    char err[8];
    phg_store *st = NULL;
    phg_status rc;
    (void)state;

    expect_open_fails("", PHG_ERR_INVALID, "empty URL");
    expect_open_fails("mysql://x", PHG_ERR_INVALID, "mysql scheme");
    expect_open_fails("sqlite:", PHG_ERR_INVALID, "sqlite without path");
    expect_open_fails("sqlite://x", PHG_ERR_INVALID, "sqlite://");
    expect_open_fails("postgres://bad host/x", PHG_ERR_INVALID, "postgres URL with a space");
    expect_open_fails("postgresql://bad host/x", PHG_ERR_INVALID, "postgresql URL with a space");
    expect_open_fails("sqlite:/tmp/a\nb.db", PHG_ERR_INVALID, "newline in a sqlite URL");
    expect_open_fails("sqlite:/tmp/a\x7f.db", PHG_ERR_INVALID, "DEL in a sqlite URL");
    expect_open_fails("postgres://postgres@127.0.0.1:1/x\x01", PHG_ERR_INVALID,
                      "control char in a postgres URL");
    expect_open_fails("postgres://post\tgres@127.0.0.1:1/x", PHG_ERR_INVALID,
                      "tab in a postgres URL");
    expect_open_fails("SQLITE:/tmp/x.db", PHG_ERR_INVALID, "upper-case scheme");
    expect_open_fails("postgres:/x", PHG_ERR_INVALID, "postgres: without //");

    long_url = malloc(PHG_STORE_URL_MAX + 100);
    assert_non_null(long_url);
    memcpy(long_url, "sqlite:/tmp/", 12);
    memset(long_url + 12, 'a', PHG_STORE_URL_MAX + 100 - 13);
    long_url[PHG_STORE_URL_MAX + 100 - 1] = '\0';
    expect_open_fails(long_url, PHG_ERR_INVALID, "sqlite URL over 4096 characters");
    memcpy(long_url, "postgres://h/", 13);
    expect_open_fails(long_url, PHG_ERR_INVALID, "postgres URL over 4096 characters");
    long_url[PHG_STORE_URL_MAX + 1] = '\0'; /* 4097: one over */
    expect_open_fails(long_url, PHG_ERR_INVALID, "URL of 4097 characters");
    free(long_url);

    /* A small err buffer is filled and terminated, never overrun. */
    memset(err, 'x', sizeof err);
    rc = phg_store_open("mysql://x", NULL, &st, err, sizeof err);
    EXPECT_RC(rc, PHG_ERR_INVALID);
    EXPECT(memchr(err, '\0', sizeof err) != NULL && strlen(err) == sizeof err - 1,
           "err of 8 bytes: not a truncated, terminated message");
}

static void test_open_unreachable(void **state)
{
    (void)state;
    if (g_engine == TDB_POSTGRES) {
        char err[PHG_STORE_ERR_MAX] = "";
        phg_store *st = NULL;
        phg_store_options o;
        int64_t t0 = tdb_now_ms(), took;
        phg_status rc = phg_store_open("postgres://postgres:s3cretpw@127.0.0.1:1/x", NULL, &st, err,
                                       sizeof err);
        took = tdb_now_ms() - t0;
        EXPECT_RC(rc, PHG_ERR_UNAVAILABLE);
        EXPECT(st == NULL, "unreachable: *out not NULL");
        EXPECT(err[0] != '\0', "unreachable: no message");
        EXPECT(strstr(err, "s3cretpw") == NULL, "the password is in the message: %s", err);
        EXPECT(took < 3000, "unreachable server: took %lld ms", (long long)took);

        /* A host that is not there at all, with a 1 s connect timeout. */
        phg_store_options_init(&o);
        o.connect_timeout_s = 1;
        t0 = tdb_now_ms();
        rc = phg_store_open("postgres://postgres@127.0.0.1:1/x?sslmode=disable", &o, &st, err,
                            sizeof err);
        EXPECT_RC(rc, PHG_ERR_UNAVAILABLE);
        EXPECT(tdb_now_ms() - t0 < 3000, "unreachable with query: too slow");
    } else {
        char dir[] = "/tmp/phg_test_XXXXXX", path[256], url[300];
        FILE *f;
        size_t i;
        assert_non_null(mkdtemp(dir));

        snprintf(url, sizeof url, "sqlite:%s/missing/sub/t.db", dir);
        expect_open_fails(url, PHG_ERR_UNAVAILABLE, "sqlite file in a missing folder");

        /* A file that is not a database (text, longer than a header). */
        snprintf(path, sizeof path, "%s/not.db", dir);
        f = fopen(path, "w");
        assert_non_null(f);
        for (i = 0; i < 200; i++)
            fputs("this is not an SQLite database, only text.\n", f);
        fclose(f);
        snprintf(url, sizeof url, "sqlite:%s", path);
        expect_open_fails(url, PHG_ERR_SCHEMA, "a text file as database");
        unlink(path);

        /* A folder where the file should be. */
        snprintf(path, sizeof path, "%s/adir", dir);
        assert_int_equal(mkdir(path, 0700), 0);
        snprintf(url, sizeof url, "sqlite:%s", path);
        {
            phg_store *st = NULL;
            phg_status rc = phg_store_open(url, NULL, &st, NULL, 0);
            EXPECT(rc == PHG_ERR_UNAVAILABLE || rc == PHG_ERR_IO || rc == PHG_ERR_SCHEMA,
                   "a folder as database: got %s", phg_status_name(rc));
            EXPECT(st == NULL, "a folder as database: opened");
        }
        rmdir(path);
        rmdir(dir);
    }
}

/* The store names its engine and never shows a password. */
static void test_open_names(void **state)
{
    testdb *db = *state;
    phg_store *st = NULL;
    char url[1300], err[PHG_STORE_ERR_MAX] = "";
    phg_status rc;

    st = open_store(db, 0);
    EXPECT(strcmp(phg_store_engine_name(st), tdb_engine_name(g_engine)) == 0, "engine name %s",
           phg_store_engine_name(st));
    EXPECT(strcmp(phg_store_display_url(st), db->url) == 0, "display URL %s",
           phg_store_display_url(st));
    phg_store_close(st);
    phg_store_close(NULL);

    if (g_engine == TDB_POSTGRES) {
        /* The fixture trusts every connection, so a password is accepted. */
        const char *at = strstr(db->url, "postgres@");
        assert_non_null(at);
        snprintf(url, sizeof url, "%.*spostgres:hunter22@%s", (int)(at - db->url), db->url,
                 at + strlen("postgres@"));
        rc = phg_store_open(url, NULL, &st, err, sizeof err);
        EXPECT(rc == PHG_OK, "open with a password: %s (%s)", phg_status_name(rc), err);
        EXPECT(strstr(phg_store_display_url(st), "hunter22") == NULL &&
                   strstr(phg_store_display_url(st), "postgres:***@") != NULL,
               "display URL %s", phg_store_display_url(st));
        phg_store_close(st);
    }
}

/* ---- migrations ------------------------------------------------------------------------- */

static void test_migrate_fresh_and_rerun(void **state)
{
    testdb *db = *state;
    phg_store *st = open_store(db, 0);
    char err[PHG_STORE_ERR_MAX] = "";
    int current = -1, latest = -1, from = -1, to = -1;
    long long rows;

    EXPECT_RC(phg_store_schema_version(st, &current, &latest), PHG_OK);
    EXPECT(current == 0, "fresh database: current %d", current);
    EXPECT(latest == engine_latest(g_engine) && latest >= 1, "latest %d", latest);

    /* Before any migration, the tables are not there: a schema error. */
    {
        char *json = NULL;
        size_t len = 0;
        EXPECT_RC(phg_store_keyring_get(st, &json, &len), PHG_ERR_SCHEMA);
        EXPECT(json == NULL, "keyring_get on an empty database returned text");
    }

    EXPECT_RC(phg_store_migrate(st, &from, &to, err, sizeof err), PHG_OK);
    EXPECT(from == 0 && to == latest, "fresh migrate: %d -> %d (%s)", from, to, err);
    EXPECT_RC(phg_store_schema_version(st, &current, &latest), PHG_OK);
    EXPECT(current == latest, "after migrate: current %d latest %d", current, latest);
    EXPECT(tdb_table_exists(db, "api_keys") && tdb_table_exists(db, "phi_keyring") &&
               tdb_table_exists(db, "phigate_schema") && tdb_table_exists(db, "phigate_changes"),
           "tables missing after migrate");
    rows = tdb_query_int(db, "SELECT count(*) FROM phigate_schema", err, sizeof err);
    EXPECT(rows == latest, "phigate_schema has %lld rows (%s)", rows, err);

    /* Again: nothing to do. */
    from = to = -1;
    EXPECT_RC(phg_store_migrate(st, &from, &to, err, sizeof err), PHG_OK);
    EXPECT(from == latest && to == latest, "re-run: %d -> %d", from, to);
    EXPECT_RC(phg_store_migrate(st, NULL, NULL, NULL, 0), PHG_OK);
    rows = tdb_query_int(db, "SELECT count(*) FROM phigate_schema", err, sizeof err);
    EXPECT(rows == latest, "re-run added rows: %lld", rows);
    phg_store_close(st);

    /* A second store on the same database sees it migrated. */
    st = open_store(db, 1);
    EXPECT_RC(phg_store_schema_version(st, &current, NULL), PHG_OK);
    EXPECT(current == latest, "reopened: current %d", current);
    EXPECT_RC(phg_store_migrate(st, &from, &to, NULL, 0), PHG_OK);
    EXPECT(from == latest && to == latest, "reopened re-run: %d -> %d", from, to);
    phg_store_close(st);
}

static void test_migrate_newer_database(void **state)
{
    testdb *db = *state;
    phg_store *st = open_migrated(db, 0), *st2 = NULL;
    int latest = engine_latest(g_engine), current = -1, lat = -1, from = -1, to = -1;
    char err[PHG_STORE_ERR_MAX] = "", sql[200], *json = NULL;
    size_t len = 0;
    long long rows_before, rows_after;

    /* Another (newer) build migrated the database further. */
    snprintf(sql, sizeof sql, "INSERT INTO phigate_schema (version, applied_at) VALUES (%d, 0)",
             latest + 1);
    EXPECT(tdb_exec(db, sql, err, sizeof err) == 0, "insert newer version: %s", err);
    rows_before = tdb_query_int(db, "SELECT count(*) FROM phigate_schema", err, sizeof err);

    err[0] = '\0';
    EXPECT_RC(phg_store_migrate(st, &from, &to, err, sizeof err), PHG_ERR_SCHEMA);
    EXPECT(strstr(err, "newer") != NULL, "message does not say why: \"%s\"", err);
    EXPECT(from == latest + 1 && to == latest + 1, "newer: from %d to %d", from, to);
    rows_after = tdb_query_int(db, "SELECT count(*) FROM phigate_schema", err, sizeof err);
    EXPECT(rows_after == rows_before, "migrate changed phigate_schema: %lld -> %lld rows",
           rows_before, rows_after);
    EXPECT(tdb_query_int(db, "SELECT count(*) FROM phi_keyring", err, sizeof err) == 0,
           "keyring row appeared");

    /* Every other call is refused now. */
    EXPECT_RC(phg_store_keyring_get(st, &json, &len), PHG_ERR_SCHEMA);
    EXPECT_RC(phg_store_keyring_put(st, "{}", 2), PHG_ERR_SCHEMA);
    EXPECT(tdb_query_int(db, "SELECT count(*) FROM phi_keyring", err, sizeof err) == 0,
           "keyring_put wrote to a newer database");
    EXPECT_RC(phg_store_schema_version(st, &current, &lat), PHG_OK);
    EXPECT(current == latest + 1 && lat == latest, "schema_version: %d, %d", current, lat);
    phg_store_close(st);

    /* A store opened afterwards refuses at once, without a migrate call. */
    st2 = open_store(db, 0);
    EXPECT_RC(phg_store_keyring_get(st2, &json, &len), PHG_ERR_SCHEMA);
    EXPECT_RC(phg_store_keyring_put(st2, "{}", 2), PHG_ERR_SCHEMA);
    EXPECT_RC(phg_store_migrate(st2, NULL, NULL, NULL, 0), PHG_ERR_SCHEMA);
    phg_store_close(st2);
    EXPECT(tdb_query_int(db, "SELECT count(*) FROM phi_keyring", err, sizeof err) == 0,
           "keyring row appeared");
}

static void test_migrate_failing_step(void **state)
{
    testdb *db = *state;
    phg_store *st = open_store(db, 0);
    const phg_migration *real = engine_migrations(g_engine);
    phg_migration steps[2];
    char err[PHG_STORE_ERR_MAX] = "";
    int from = -1, to = -1, current = -1;
    phg_status rc;

    steps[0] = real[0];
    steps[1].version = 2;
    steps[1].name = "broken";
    steps[1].sql = "CREATE TABLE t2(x INT); THIS IS NOT SQL";
    rc = phg_internal_store_migrate_steps(st, steps, 2, &from, &to, err, sizeof err);
    EXPECT(rc != PHG_OK, "a failing step succeeded");
    EXPECT(from == 0 && to == 1, "failing step: from %d to %d", from, to);
    EXPECT(strstr(err, "2") != NULL && strstr(err, "broken") != NULL,
           "the message does not name the failing step: \"%s\"", err);
    EXPECT_RC(phg_store_schema_version(st, &current, NULL), PHG_OK);
    EXPECT(current == 1, "version after the failing step: %d", current);
    EXPECT(!tdb_table_exists(db, "t2"), "t2 exists: the failing step was not rolled back");
    EXPECT(tdb_table_exists(db, "api_keys"), "step 1 was not kept");
    EXPECT(tdb_query_int(db, "SELECT count(*) FROM phigate_schema WHERE version = 2", err,
                         sizeof err) == 0,
           "version 2 recorded");

    /* The store still works, and a fixed step 2 then applies. */
    EXPECT_RC(phg_store_keyring_put(st, "{\"a\":1}", 7), PHG_OK);
    steps[1].sql = "CREATE TABLE t2(x INT)";
    steps[1].name = "fixed";
    EXPECT_RC(phg_internal_store_migrate_steps(st, steps, 2, &from, &to, err, sizeof err), PHG_OK);
    EXPECT(from == 1 && to == 2, "fixed step: from %d to %d", from, to);
    EXPECT(tdb_table_exists(db, "t2"), "t2 missing after the fixed step");
    phg_store_close(st);
}

/* ---- keyring ------------------------------------------------------------------------------ */

static void test_keyring_row(void **state)
{
    testdb *db = *state;
    phg_store *st = open_migrated(db, 0);
    char *json = (char *)&json, *big;
    size_t len = 12345, i, big_len = 64 * 1024;
    const char *a = "{\"version\":1,\"keys\":[]}";
    const char *b = "{\"version\":1,\"keys\":[{\"kid\":\"k7h2p9d4w6e\",\"n\":\"caf\xc3\xa9\"}]}";

    EXPECT_RC(phg_store_keyring_get(st, &json, &len), PHG_ERR_NOT_FOUND);

    EXPECT_RC(phg_store_keyring_put(st, a, strlen(a)), PHG_OK);
    json = NULL;
    EXPECT_RC(phg_store_keyring_get(st, &json, &len), PHG_OK);
    EXPECT(json != NULL && len == strlen(a) && memcmp(json, a, len) == 0 && json[len] == '\0',
           "round trip: got %.*s", (int)len, json ? json : "");
    free(json);

    EXPECT_RC(phg_store_keyring_put(st, b, strlen(b)), PHG_OK);
    json = NULL;
    EXPECT_RC(phg_store_keyring_get(st, &json, &len), PHG_OK);
    EXPECT(json != NULL && len == strlen(b) && memcmp(json, b, len) == 0, "replace: got %.*s",
           (int)len, json ? json : "");
    free(json);
    EXPECT(tdb_query_int(db, "SELECT count(*) FROM phi_keyring", NULL, 0) == 1,
           "keyring rows: not one");

    /* Only len bytes count, and a big text survives. */
    big = malloc(big_len + 1);
    assert_non_null(big);
    big[0] = '"';
    for (i = 1; i < big_len - 1; i++)
        big[i] = (char)('a' + i % 26);
    big[big_len - 1] = '"';
    big[big_len] = 'X'; /* past len: must not be stored */
    EXPECT_RC(phg_store_keyring_put(st, big, big_len), PHG_OK);
    json = NULL;
    EXPECT_RC(phg_store_keyring_get(st, &json, &len), PHG_OK);
    EXPECT(json != NULL && len == big_len && memcmp(json, big, big_len) == 0,
           "64 KiB round trip: %zu bytes", len);
    free(json);
    free(big);

    /* Seen by another store on the same database. */
    {
        phg_store *other = open_store(db, 1);
        EXPECT_RC(phg_store_keyring_put(st, a, strlen(a)), PHG_OK);
        json = NULL;
        EXPECT_RC(phg_store_keyring_get(other, &json, &len), PHG_OK);
        EXPECT(json != NULL && len == strlen(a) && memcmp(json, a, len) == 0, "other store: %.*s",
               (int)len, json ? json : "");
        free(json);
        phg_store_close(other);
    }
    phg_store_close(st);
}

/* ---- threads ------------------------------------------------------------------------------ */

#define THREADS 8
#define ROUNDS 25

typedef struct worker {
    phg_store *st;
    int n;
    int failures;
    phg_status first_rc;
    char what[64];
} worker;

static void *keyring_worker(void *arg)
{
    worker *w = arg;
    int i;
    for (i = 0; i < ROUNDS; i++) {
        char text[64], *json = NULL;
        size_t len = 0;
        phg_status rc;
        int n = snprintf(text, sizeof text, "{\"writer\":%d,\"round\":%d}", w->n, i);
        rc = phg_store_keyring_put(w->st, text, (size_t)n);
        if (rc != PHG_OK) {
            if (w->failures++ == 0) {
                w->first_rc = rc;
                snprintf(w->what, sizeof w->what, "put, round %d", i);
            }
            continue;
        }
        rc = phg_store_keyring_get(w->st, &json, &len);
        if (rc != PHG_OK || json == NULL || len < 10 || strncmp(json, "{\"writer\":", 10) != 0 ||
            strlen(json) != len) {
            if (w->failures++ == 0) {
                w->first_rc = rc;
                snprintf(w->what, sizeof w->what, "get, round %d", i);
            }
        }
        free(json);
    }
    return NULL;
}

static void test_threads_on_one_pool(void **state)
{
    testdb *db = *state;
    phg_store *st = open_migrated(db, 4);
    pthread_t th[THREADS];
    worker w[THREADS];
    int i;

    EXPECT_RC(phg_store_keyring_put(st, "{\"writer\":-1}", 13), PHG_OK);
    for (i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].st = st;
        w[i].n = i;
        assert_int_equal(pthread_create(&th[i], NULL, keyring_worker, &w[i]), 0);
    }
    for (i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < THREADS; i++)
        EXPECT(w[i].failures == 0, "[%s] thread %d: %d failures, the first %s: %s",
               tdb_engine_name(g_engine), i, w[i].failures, w[i].what,
               phg_status_name(w[i].first_rc));
    phg_store_close(st);
}

/* ---- main --------------------------------------------------------------------------------- */

#define DB_TEST(f) cmocka_unit_test_setup_teardown(f, db_setup, db_teardown)

/* Passwords never survive redaction; nothing else changes. */
static void test_redact_url(void **state)
{
    static const char *const cases[][2] = {
        {"postgres://u:secret@host:5432/db", "postgres://u:***@host:5432/db"},
        {"postgres://u:s@cr@t@host/db", "postgres://u:***@host/db"},
        {"postgres://u@host/db?sslmode=require&password=secret",
         "postgres://u@host/db?sslmode=require&password=***"},
        {"postgres://u:a@host/db?password=b&x=1", "postgres://u:***@host/db?password=***&x=1"},
        {"postgres://host/db?note=a@b:c", "postgres://host/db?note=a@b:c"},
        {"sqlite:./var/phigate.db", "sqlite:./var/phigate.db"},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *r = phg_store_redact_url(cases[i][0]);
        assert_non_null(r);
        assert_string_equal(r, cases[i][1]);
        free(r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redact_url),
        cmocka_unit_test(test_open_bad_urls),
        cmocka_unit_test(test_open_unreachable),
        DB_TEST(test_open_names),
        DB_TEST(test_migrate_fresh_and_rerun),
        DB_TEST(test_migrate_newer_database),
        DB_TEST(test_migrate_failing_step),
        DB_TEST(test_keyring_row),
        DB_TEST(test_threads_on_one_pool),
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("store/sqlite", tests, tdb_group_sqlite, NULL);
    failed += cmocka_run_group_tests_name("store/postgres", tests, tdb_group_postgres, NULL);
    return failed != 0;
}
