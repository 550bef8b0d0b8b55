/*
 * tests/unit/testdb.h: a fresh, empty database for one test, on either store
 * engine, and direct SQL on it (to plant rows the library would refuse to
 * write, and to look behind its back).
 *
 *   SQLite      a new file in a mkdtemp folder: "sqlite:/tmp/phg_test_XXXXXX/t.db"
 *   PostgreSQL  the throwaway server the ctest fixture started
 *               (tests/pg_server.sh start $PHG_TEST_PG_DIR; its URL is in
 *               $PHG_TEST_PG_DIR/url): DROP DATABASE IF EXISTS and CREATE
 *               DATABASE phg_<prefix>_<pid>_<n>, and the URL of that database.
 *
 * PostgreSQL is a required part of `make test`: without PHG_TEST_PG_DIR or
 * its url file every PostgreSQL test fails with a message saying so. Nothing
 * is ever skipped.
 *
 * Header-only (static functions): each test binary is one .c file. Failures
 * inside these helpers call cmocka's fail_msg, so they may only be used from
 * the test's main thread.
 */
#ifndef PHG_TESTDB_H
#define PHG_TESTDB_H

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>

typedef enum tdb_engine {
    TDB_SQLITE = 0,
    TDB_POSTGRES = 1,
} tdb_engine;

typedef struct testdb {
    tdb_engine engine;
    char url[1200];   /* what phg_store_open takes */
    char dir[256];    /* SQLite: the mkdtemp folder */
    char path[512];   /* SQLite: the database file */
    char dbname[64];  /* PostgreSQL: the database created for the test */
    char admin[1100]; /* PostgreSQL: the fixture's URL (its phigate_test database) */
} testdb;

static inline const char *tdb_engine_name(tdb_engine e)
{
    return e == TDB_SQLITE ? "sqlite" : "postgres";
}

/* Milliseconds of CLOCK_MONOTONIC (one clock for every process of the machine). */
static inline int64_t tdb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void tdb_sleep_ms(int64_t ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/*
 * The fixture's URL into out, or 0 and a reason. Read each time: a test
 * binary may be run with or without the fixture, and must then say why it
 * fails.
 */
static inline int tdb_pg_fixture_url(char *out, size_t len, char *why, size_t why_len)
{
    const char *dir = getenv("PHG_TEST_PG_DIR");
    char path[1024];
    FILE *f;
    size_t n;

    if (dir == NULL || dir[0] == '\0') {
        snprintf(why, why_len,
                 "PHG_TEST_PG_DIR is not set: the PostgreSQL tests are required; run them "
                 "through ctest (which starts tests/pg_server.sh) or set PHG_TEST_PG_DIR");
        return 0;
    }
    snprintf(path, sizeof path, "%s/url", dir);
    f = fopen(path, "r");
    if (f == NULL) {
        snprintf(why, why_len,
                 "%.200s: %s: no PostgreSQL test server; start one with tests/pg_server.sh "
                 "start %.200s",
                 path, strerror(errno), dir);
        return 0;
    }
    n = fread(out, 1, len - 1, f);
    fclose(f);
    out[n] = '\0';
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' '))
        out[--n] = '\0';
    if (strncmp(out, "postgres://", 11) != 0 && strncmp(out, "postgresql://", 13) != 0) {
        snprintf(why, why_len, "%.200s does not hold a postgres:// URL", path);
        return 0;
    }
    return 1;
}

static inline void tdb_pg_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* "database ... does not exist, skipping" and the like */
}

/* Connect with libpq to a URL; fails the test if that is impossible. */
static inline PGconn *tdb_pg_connect(const char *url)
{
    const char *keys[] = {"dbname", "connect_timeout", NULL};
    const char *vals[] = {url, "10", NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", pg != NULL ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        fail_msg("cannot connect to the PostgreSQL test server %s: %s", url, msg);
    }
    PQsetNoticeProcessor(pg, tdb_pg_quiet, NULL);
    return pg;
}

static inline void tdb_pg_exec(PGconn *pg, const char *sql)
{
    PGresult *res = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(pg));
        PQclear(res);
        fail_msg("PostgreSQL: %s: %s", sql, msg);
    }
    PQclear(res);
}

/* url with its database name (the last path segment) replaced by name. */
static inline void tdb_pg_url_with_db(const char *url, const char *name, char *out, size_t len)
{
    const char *authority = strstr(url, "://");
    const char *slash = authority != NULL ? strchr(authority + 3, '/') : NULL;
    const char *query = slash != NULL ? strchr(slash, '?') : NULL;
    if (slash == NULL)
        snprintf(out, len, "%s/%s", url, name);
    else
        snprintf(out, len, "%.*s/%s%s", (int)(slash - url), url, name, query ? query : "");
}

/*
 * A fresh database for a test. prefix: a short [a-z0-9_] name of the test
 * binary or the test. Fails the test (never skips) if the engine cannot give
 * one.
 */
static inline void tdb_create(testdb *db, tdb_engine engine, const char *prefix)
{
    static unsigned counter;
    memset(db, 0, sizeof *db);
    db->engine = engine;
    if (engine == TDB_SQLITE) {
        snprintf(db->dir, sizeof db->dir, "/tmp/phg_test_XXXXXX");
        if (mkdtemp(db->dir) == NULL)
            fail_msg("mkdtemp: %s", strerror(errno));
        snprintf(db->path, sizeof db->path, "%s/t.db", db->dir);
        snprintf(db->url, sizeof db->url, "sqlite:%s", db->path);
        return;
    } else {
        char why[512], sql[256];
        PGconn *pg;
        size_t i;
        if (!tdb_pg_fixture_url(db->admin, sizeof db->admin, why, sizeof why))
            fail_msg("FATAL: %s", why);
        snprintf(db->dbname, sizeof db->dbname, "phg_%.24s_%ld_%u", prefix, (long)getpid(),
                 ++counter);
        for (i = 0; db->dbname[i]; i++) {
            char c = db->dbname[i];
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
                db->dbname[i] = '_';
        }
        pg = tdb_pg_connect(db->admin);
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db->dbname);
        tdb_pg_exec(pg, sql);
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", db->dbname);
        tdb_pg_exec(pg, sql);
        PQfinish(pg);
        tdb_pg_url_with_db(db->admin, db->dbname, db->url, sizeof db->url);
    }
}

/* Remove what tdb_create made. Every store on it should be closed first
 * (PostgreSQL connections still open are terminated). Safe to call twice. */
static inline void tdb_drop(testdb *db)
{
    if (db->engine == TDB_SQLITE && db->dir[0] != '\0') {
        DIR *d = opendir(db->dir);
        struct dirent *e;
        char path[1024];
        if (d != NULL) {
            while ((e = readdir(d)) != NULL) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                    continue;
                snprintf(path, sizeof path, "%s/%s", db->dir, e->d_name);
                (void)unlink(path);
            }
            closedir(d);
        }
        (void)rmdir(db->dir);
        db->dir[0] = '\0';
    } else if (db->engine == TDB_POSTGRES && db->dbname[0] != '\0') {
        char sql[256];
        PGconn *pg = tdb_pg_connect(db->admin);
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db->dbname);
        tdb_pg_exec(pg, sql);
        PQfinish(pg);
        db->dbname[0] = '\0';
    }
}

/*
 * Run SQL directly on the test's database, outside the library. Returns 0 on
 * success, or -1 and the engine's message in err (the test decides).
 */
static inline int tdb_exec(const testdb *db, const char *sql, char *err, size_t err_len)
{
    if (err_len > 0)
        err[0] = '\0';
    if (db->engine == TDB_SQLITE) {
        sqlite3 *s = NULL;
        char *msg = NULL;
        int rc = sqlite3_open_v2(db->path, &s, SQLITE_OPEN_READWRITE, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_busy_timeout(s, 5000);
            rc = sqlite3_exec(s, sql, NULL, NULL, &msg);
        }
        if (rc != SQLITE_OK)
            snprintf(err, err_len, "%s", msg != NULL ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        sqlite3_close(s);
        return rc == SQLITE_OK ? 0 : -1;
    } else {
        PGconn *pg = tdb_pg_connect(db->url);
        PGresult *res = PQexec(pg, sql);
        ExecStatusType st = PQresultStatus(res);
        int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        if (!ok)
            snprintf(err, err_len, "%s", PQerrorMessage(pg));
        PQclear(res);
        PQfinish(pg);
        return ok ? 0 : -1;
    }
}

/*
 * The first column of the first row of a query, as an integer: -1 if there
 * is no row, -2 (and err) if the query fails.
 */
static inline long long tdb_query_int(const testdb *db, const char *sql, char *err, size_t err_len)
{
    long long v = -1;
    if (err_len > 0)
        err[0] = '\0';
    if (db->engine == TDB_SQLITE) {
        sqlite3 *s = NULL;
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_open_v2(db->path, &s, SQLITE_OPEN_READONLY, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_prepare_v2(s, sql, -1, &st, NULL);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW)
                v = sqlite3_column_int64(st, 0);
            if (rc == SQLITE_ROW || rc == SQLITE_DONE)
                rc = SQLITE_OK;
        }
        if (rc != SQLITE_OK) {
            snprintf(err, err_len, "%s", s != NULL ? sqlite3_errmsg(s) : sqlite3_errstr(rc));
            v = -2;
        }
        sqlite3_finalize(st);
        sqlite3_close(s);
    } else {
        PGconn *pg = tdb_pg_connect(db->url);
        PGresult *res = PQexec(pg, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            snprintf(err, err_len, "%s", PQerrorMessage(pg));
            v = -2;
        } else if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
            v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        }
        PQclear(res);
        PQfinish(pg);
    }
    return v;
}

/* 1 if a table of that name exists in the test's database. */
static inline int tdb_table_exists(const testdb *db, const char *table)
{
    char sql[256], err[256];
    long long v;
    if (db->engine == TDB_SQLITE)
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '%s'", table);
    else
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM information_schema.tables WHERE table_schema = "
                 "current_schema() AND table_name = '%s'",
                 table);
    v = tdb_query_int(db, sql, err, sizeof err);
    if (v < 0)
        fail_msg("cannot look for table %s: %s", table, err);
    return v > 0;
}

/* ---- the two cmocka groups every store test runs ---------------------------- */

/* The engine of the group being run, set by the group setups below. */
static tdb_engine g_engine;

static inline int tdb_group_sqlite(void **state)
{
    (void)state;
    g_engine = TDB_SQLITE;
    return 0;
}

static inline int tdb_group_postgres(void **state)
{
    char url[1100], why[512];
    (void)state;
    g_engine = TDB_POSTGRES;
    if (!tdb_pg_fixture_url(url, sizeof url, why, sizeof why)) {
        fprintf(stderr, "FATAL: %s\n", why);
        return -1; /* every PostgreSQL test fails: PostgreSQL is required */
    }
    return 0;
}

/* Open a store on the test database with `pool` connections (0: default). */
static inline phg_status tdb_open_store(const testdb *db, size_t pool, phg_store **st, char *err,
                                        size_t err_len)
{
    phg_store_options o;
    phg_store_options_init(&o);
    if (pool != 0)
        o.pool_size = pool;
    err[0] = '\0';
    return phg_store_open(db->url, &o, st, err, err_len);
}

#endif
