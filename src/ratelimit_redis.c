/*
 * ratelimit_redis.c: the Redis engine's half that is not transport: the Lua
 * script that decides atomically on the Redis server, its SHA-1, the key of
 * a rate-limit key and the parser of the script's reply. The transport (the
 * gateway's asynchronous hiredis client) is src/server/redis_rl.c.
 *
 * The algorithm is the local engine's (src/ratelimit.c, the header comment
 * of include/phigate/ratelimit.h): windows cut into PHG_RL_SUBWINDOWS
 * sub-windows, a request admitted when the current sub-window and the
 * PHG_RL_SUBWINDOWS before it hold fewer than N, for every window. The two
 * must answer the same for the same (time, request) sequence; the unit tests
 * run one sequence through both. Key layout and protocol: docs/formats.md
 * 16.4.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "phigate/ratelimit.h"

/*
 * KEYS[1]: phigate:rl:{<key>}, a hash:
 *   "<window_ms>:<j>"  the count of sub-window j (j = floor(t_ms / g)) of
 *                      that window; only non-zero counts are stored
 *   "p"                "<now_ms>|<window_ms>:<last j written>,..." for the
 *                      last write: its time (a key's time never goes back:
 *                      TIME is the wall clock), and what lets a write delete
 *                      the sub-windows that left the range without listing
 *                      the hash (fields of a window stay within [last-S, last])
 * A window keeps its fields across a policy change that keeps the window;
 * a write under a different set of windows (or after the clock went back)
 * lists the hash once and deletes every field outside the current ranges.
 * So the hash never holds more than n * (S + 1) + 1 fields, and it expires
 * after the longest window and one of its sub-windows without a write.
 *
 * ARGV: mode n count_1 window_ms_1 ... count_n window_ms_n [now_ms]. The
 * modes "check_at" and "peek_at" take the time as a last argument instead
 * of Redis's TIME: a test hook, never sent by the gateway.
 *
 * Reply: {allowed, limit, window_s, remaining, reset_s, retry_after_s}.
 * "peek" answers exactly what "check" would (remaining counts the request
 * when it would be admitted) and writes nothing; "reset" deletes the key and
 * answers as "peek" then would.
 * Numbers are Lua doubles: exact for every integer here (below 2^53).
 */
static const char RL_SCRIPT[] =
    "-- phigate rate limit: exact sliding windows (docs/formats.md 16.4)\n"
    "local S = 10\n"
    "local mode = ARGV[1]\n"
    "local at = false\n"
    "if mode == 'check_at' then mode = 'check'; at = true\n"
    "elseif mode == 'peek_at' then mode = 'peek'; at = true end\n"
    "if mode ~= 'check' and mode ~= 'peek' and mode ~= 'reset' then\n"
    "  return redis.error_reply('ERR phigate: bad mode') end\n"
    "if #KEYS ~= 1 then return redis.error_reply('ERR phigate: one key') end\n"
    "local function int(s, maxlen)\n"
    "  if type(s) ~= 'string' or #s == 0 or #s > maxlen or not string.find(s, '^%d+$') then\n"
    "    return nil end\n"
    "  return tonumber(s)\n"
    "end\n"
    "local n = int(ARGV[2], 1)\n"
    "if n == nil or n > 4 then return redis.error_reply('ERR phigate: bad n') end\n"
    "if #ARGV ~= 2 + 2 * n + (at and 1 or 0) then\n"
    "  return redis.error_reply('ERR phigate: bad argument count') end\n"
    "local cnt, wms, g, b = {}, {}, {}, {}\n"
    "for i = 1, n do\n"
    "  local c, w = int(ARGV[1 + 2 * i], 9), int(ARGV[2 + 2 * i], 10)\n"
    "  if c == nil or c < 1 or w == nil or w < 1000 or w > 8640000000 or w % 1000 ~= 0 then\n"
    "    return redis.error_reply('ERR phigate: bad limit') end\n"
    "  if i > 1 and w <= wms[i - 1] then\n"
    "    return redis.error_reply('ERR phigate: windows not increasing') end\n"
    "  cnt[i] = c; wms[i] = w; g[i] = math.ceil(w / S)\n"
    "end\n"
    "local now\n"
    "if at then\n"
    "  now = int(ARGV[#ARGV], 15)\n"
    "  if now == nil then return redis.error_reply('ERR phigate: bad now_ms') end\n"
    "else\n"
    "  local t = redis.call('TIME')\n"
    "  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "end\n"
    "local key = KEYS[1]\n"
    "if mode == 'reset' then redis.call('DEL', key) end\n"
    "if n == 0 then return {1, 0, 0, 0, 0, 0} end\n"
    "-- p = '<ms>|<W>:<j>,...': the time and sub-windows of the last admitted request\n"
    "local p, pt, plist = false, nil, nil\n"
    "if mode ~= 'reset' then p = redis.call('HGET', key, 'p') end\n"
    "if p then pt, plist = string.match(p, '^(%d+)|(.*)$') end\n"
    "-- the clock never goes back for a key (TIME is the wall clock: NTP may step it)\n"
    "if pt and tonumber(pt) > now then now = tonumber(pt) end\n"
    "local fields = {}\n"
    "for i = 1, n do\n"
    "  b[i] = math.floor(now / g[i])\n"
    "  for j = b[i] - S, b[i] do fields[#fields + 1] = wms[i] .. ':' .. j end\n"
    "end\n"
    "local vals = {}\n"
    "if mode ~= 'reset' then vals = redis.call('HMGET', key, unpack(fields)) end\n"
    "local cs, sum, allowed, any = {}, {}, 1, false\n"
    "for i = 1, n do\n"
    "  local s, row = 0, {}\n"
    "  for k = 0, S do\n"
    "    local v = vals[1 + (i - 1) * (S + 1) + k]\n"
    "    v = v and tonumber(v) or 0\n"
    "    if v > 0 then any = true end\n"
    "    row[k] = v; s = s + v\n"
    "  end\n"
    "  cs[i] = row; sum[i] = s\n"
    "  if s >= cnt[i] then allowed = 0 end\n"
    "end\n"
    "-- peek answers what check would: the request counted when it is admitted\n"
    "if allowed == 1 then\n"
    "  for i = 1, n do cs[i][S] = cs[i][S] + 1; sum[i] = sum[i] + 1 end\n"
    "end\n"
    "if mode == 'check' and allowed == 1 then\n"
    "  local last, nlast, full = {}, 0, false\n"
    "  if p and not plist then full = true; p = false end\n"
    "  if p then\n"
    "    for w, l in string.gmatch(plist, '(%d+):(%-?%d+)') do\n"
    "      last[tonumber(w)] = tonumber(l); nlast = nlast + 1 end\n"
    "    if nlast ~= n then full = true end\n"
    "  elseif any then full = true end\n"
    "  local del, np, set, ttl = {}, {}, {}, 0\n"
    "  for i = 1, n do\n"
    "    local w, l = wms[i], last[wms[i]]\n"
    "    if p and l == nil then full = true\n"
    "    elseif l ~= nil then\n"
    "      if l > b[i] then full = true\n"
    "      else for j = l - S, math.min(l, b[i] - S - 1) do del[#del + 1] = w .. ':' .. j end end\n"
    "    end\n"
    "    set[#set + 1] = w .. ':' .. b[i]; set[#set + 1] = cs[i][S]\n"
    "    np[i] = w .. ':' .. b[i]\n"
    "    if w + g[i] > ttl then ttl = w + g[i] end\n"
    "  end\n"
    "  if full then\n"
    "    local ks = redis.call('HKEYS', key)\n"
    "    if #ks > 1000 then redis.call('DEL', key); del = {}\n"
    "    else\n"
    "      local keep = {p = true}\n"
    "      for f = 1, #fields do keep[fields[f]] = true end\n"
    "      del = {}\n"
    "      for _, f in ipairs(ks) do if not keep[f] then del[#del + 1] = f end end\n"
    "    end\n"
    "  end\n"
    "  if #del > 0 then redis.call('HDEL', key, unpack(del)) end\n"
    "  redis.call('HSET', key, 'p', string.format('%d', now) .. '|' .. table.concat(np, ','),\n"
    "             unpack(set))\n"
    "  redis.call('PEXPIRE', key, ttl)\n"
    "end\n"
    "local function secs(ms)\n"
    "  local s = math.ceil(ms / 1000)\n"
    "  if s < 1 then s = 1 end\n"
    "  return s\n"
    "end\n"
    "local bi, brem = 0, 0\n"
    "for i = 1, n do\n"
    "  local rem = cnt[i] - sum[i]\n"
    "  if rem < 0 then rem = 0 end\n"
    "  if bi == 0 or rem < brem then bi = i; brem = rem end\n"
    "end\n"
    "local reset_s = 0\n"
    "if brem == 0 then\n"
    "  for k = 0, S do\n"
    "    if cs[bi][k] > 0 then reset_s = secs((b[bi] + k + 1) * g[bi] - now); break end\n"
    "  end\n"
    "end\n"
    "local retry_s = 0\n"
    "if allowed == 0 then\n"
    "  local worst = 0\n"
    "  for i = 1, n do\n"
    "    if sum[i] >= cnt[i] then\n"
    "      local acc = sum[i]\n"
    "      for k = 0, S do\n"
    "        acc = acc - cs[i][k]\n"
    "        if acc < cnt[i] then\n"
    "          local t = (b[i] + k + 1) * g[i] - now\n"
    "          if t > worst then worst = t end\n"
    "          break\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  retry_s = secs(worst)\n"
    "end\n"
    "return {allowed, cnt[bi], wms[bi] / 1000, brem, reset_s, retry_s}\n";

/* The script's comparisons hard-code these. */
_Static_assert(PHG_RL_SUBWINDOWS == 10, "the script's S");
_Static_assert(PHG_RL_WINDOWS_MAX == 4, "the script's n check");
_Static_assert(PHG_RL_COUNT_MAX == 999999999u, "the script's 9-digit counts");
_Static_assert(PHG_RL_WINDOW_MAX_S == 8640000u, "the script's window bound");

#define SHA1_HEX_LEN 40

static char script_sha[SHA1_HEX_LEN + 1];
static pthread_once_t script_sha_once = PTHREAD_ONCE_INIT;

static void compute_script_sha(void)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    unsigned int i;

    /* If SHA-1 is unavailable (a provider refuses it), the hash stays all
     * zeros: every EVALSHA then gets NOSCRIPT and the client falls back to
     * EVAL, which is slower but right. */
    memset(script_sha, '0', SHA1_HEX_LEN);
    script_sha[SHA1_HEX_LEN] = '\0';
    if (EVP_Digest(RL_SCRIPT, sizeof(RL_SCRIPT) - 1, md, &md_len, EVP_sha1(), NULL) != 1 ||
        md_len != SHA1_HEX_LEN / 2)
        return;
    for (i = 0; i < md_len; i++) {
        script_sha[2 * i] = hex[md[i] >> 4];
        script_sha[2 * i + 1] = hex[md[i] & 0x0f];
    }
}

const char *phg_rl_redis_script(void)
{
    return RL_SCRIPT;
}

const char *phg_rl_redis_script_sha(void)
{
    (void)pthread_once(&script_sha_once, compute_script_sha);
    return script_sha;
}

#define KEY_PREFIX "phigate:rl:{"

phg_status phg_rl_redis_key(const char *key, size_t key_len, char *buf, size_t len)
{
    size_t i, need;

    assert(buf != NULL || len == 0);
    if (key == NULL || key_len == 0 || key_len > PHG_RL_KEY_MAX)
        return PHG_ERR_INVALID;
    /* Printable ASCII without braces: a brace would move the hash tag, and
     * the key is also a Redis field of logs and admin answers. */
    for (i = 0; i < key_len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x21 || c > 0x7e || c == '{' || c == '}')
            return PHG_ERR_INVALID;
    }
    need = sizeof(KEY_PREFIX) - 1 + key_len + 1 + 1;
    if (len < need)
        return PHG_ERR_BUFFER_TOO_SMALL;
    memcpy(buf, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    memcpy(buf + sizeof(KEY_PREFIX) - 1, key, key_len);
    buf[need - 2] = '}';
    buf[need - 1] = '\0';
    return PHG_OK;
}

phg_status phg_rl_redis_parse(const long long *values, size_t n, phg_rl_decision *decision)
{
    size_t i;

    assert(decision != NULL);
    memset(decision, 0, sizeof(*decision));
    if (values == NULL || n != 6)
        return PHG_ERR_INVALID;
    for (i = 0; i < n; i++)
        if (values[i] < 0 || values[i] > (long long)UINT32_MAX)
            return PHG_ERR_INVALID;
    if (values[0] > 1 || values[1] > (long long)PHG_RL_COUNT_MAX ||
        values[2] > (long long)PHG_RL_WINDOW_MAX_S || values[3] > values[1])
        return PHG_ERR_INVALID;
    /* A refused answer always says when to come back; an admitted one never. */
    if ((values[0] == 1) != (values[5] == 0))
        return PHG_ERR_INVALID;
    decision->allowed = (int)values[0];
    decision->limit = (uint32_t)values[1];
    decision->window_s = (uint32_t)values[2];
    decision->remaining = (uint32_t)values[3];
    decision->reset_s = (uint32_t)values[4];
    decision->retry_after_s = (uint32_t)values[5];
    return PHG_OK;
}
