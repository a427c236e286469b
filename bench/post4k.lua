-- wrk script for bench/compare.py's /post4k row: a 4 KiB request body on every request, which
-- slotswitch (request_buffering: on) and nginx (proxy_request_buffering on) read whole before they
-- send the request upstream.
wrk.method = "POST"
wrk.body = string.rep("a", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
