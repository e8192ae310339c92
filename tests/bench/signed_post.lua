-- wrk script: every request is a payment with its own payment id and customer, signed
-- like the platform signs it: `X-Signature: sha256=<hex HMAC-SHA256 of the body>`.
-- HMAC comes from the OpenSSL libcrypto wrk itself links (LuaJIT FFI), so signing costs
-- microseconds and never limits the rate.
--
-- args: TEMPLATE_FILE SECRET. The template is the body cut at each place the request key
-- goes, parts separated by newlines; the key is "<thread><8-digit counter>".
-- done() prints one line `BENCH {json}` with the totals and a count per HTTP status.

local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md,
                    unsigned int *md_len);
]]

local function libcrypto()
  local ok = pcall(function() return ffi.C.HMAC end)
  if ok then return ffi.C end
  return ffi.load("crypto")
end

local crypto = libcrypto()
local digest = ffi.new("unsigned char[32]")
local digest_len = ffi.new("unsigned int[1]")
local hex = {}
for i = 0, 255 do hex[i] = string.format("%02x", i) end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local parts, secret, sha256, headers, sig
local counter = 0
counts = {}

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local text = file:read("*a")
  file:close()
  parts = {}
  for part in (text .. "\n"):gmatch("([^\n]*)\n") do parts[#parts + 1] = part end
  secret = args[2]
  sha256 = crypto.EVP_sha256()
  headers = { ["Content-Type"] = "application/json" }
  sig = {}
end

function request()
  counter = counter + 1
  local body = table.concat(parts, string.format("%d%08d", tid, counter))
  crypto.HMAC(sha256, secret, #secret, body, #body, digest, digest_len)
  for i = 0, 31 do sig[i + 1] = hex[digest[i]] end
  headers["X-Signature"] = "sha256=" .. table.concat(sig)
  return wrk.format("POST", nil, headers, body)
end

function response(status, _, _)
  local key = tostring(status)
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, _)
  local statuses = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      statuses[#statuses + 1] = string.format("[%s, %d]", status, n)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "statuses": [%s], ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, table.concat(statuses, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
