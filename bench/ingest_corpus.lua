-- wrk script for bench/ingest: POST a pre-signed corpus, one request per line, in order.
--
--   wrk -t2 -c50 -d5s --latency -s bench/ingest_corpus.lua URL -- CORPUS THREADS
--
-- CORPUS holds one request per line: `sha256=<hex>` TAB compact JSON body. Thread i of THREADS
-- sends the lines that start inside the i-th byte slice of the file, so no two threads send
-- the same line (wamid). Lines are read as they are sent: init only seeks, so no thread starts
-- its load while another is still loading (wrk counts those requests, not that time).
-- A thread that runs out of lines starts its slice over (repeated wamids: duplicates for
-- zapstream) and counts it in `wraps`. done() prints one machine-readable line: `BENCH k=v ...`.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, count = args[1], tonumber(args[2])
  corpus = assert(io.open(path, "rb"))
  local size = corpus:seek("end")
  local first = math.floor(size * tid / count)
  slice_end = math.floor(size * (tid + 1) / count)
  -- A line belongs to the slice holding its first byte: skip the one that began before it.
  slice_start = 0
  if first > 0 then
    corpus:seek("set", first - 1)
    slice_start = first - 1 + #corpus:read("*l") + 1
  end
  assert(slice_start < slice_end, "corpus slice " .. tid .. " of " .. path .. " is empty")
  corpus:seek("set", slice_start)
  offset = slice_start
  sent, wraps, non2xx = 0, 0, 0
  req_headers = {["Content-Type"] = "application/json"}
end

function request()
  if offset >= slice_end then
    wraps = wraps + 1
    corpus:seek("set", slice_start)
    offset = slice_start
  end
  local line = corpus:read("*l")
  offset = offset + #line + 1
  local tab = line:find("\t", 1, true)
  req_headers["X-Hub-Signature-256"] = line:sub(1, tab - 1)
  sent = sent + 1
  return wrk.format("POST", nil, req_headers, line:sub(tab + 1))
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total_sent, total_wraps, total_non2xx = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_wraps = total_wraps + thread:get("wraps")
    total_non2xx = total_non2xx + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d sent=%d p50_us=%d p99_us=%d mean_us=%.1f non2xx=%d"
      .. " status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d"
      .. " wraps=%d\n",
    summary.requests, summary.duration, total_sent, latency:percentile(50),
    latency:percentile(99), latency.mean, total_non2xx, e.status, e.connect, e.read, e.write,
    e.timeout, total_wraps))
end
