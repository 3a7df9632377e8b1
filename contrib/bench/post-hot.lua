-- wrk script: POST /increment on one key, "hot": the worst case for
-- contention on a single counter.  A fixed request lets wrk reuse it.

wrk.method = "POST"
wrk.path = "/increment"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"hot","value":1}'
