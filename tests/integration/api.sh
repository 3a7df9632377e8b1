#!/bin/bash
# The HTTP API: every answer the contract names, each kind of bad input,
# keep-alive, h2c, the /api/v1 aliases, percent-encoded keys, and that a
# refused request changes nothing (not the total, not PostgreSQL, not the
# journal).
. "$(dirname "$0")/lib.sh"
need h2load psql

pg_start
tallyd_conf
tallyd_start

RECS=0		# increments acknowledged, so records in the journal

# post_ok DESCRIPTION KEY VALUE EXPECTED_TOTAL
post_ok() {
	local st
	st=$(post "$2" "$3")
	[ "$st" = 202 ] && RECS=$((RECS + 1))
	assert_eq "$1: status" 202 "$st"
	assert_eq "$1: body" "{\"key\":$(json_str "$2"),\"value\":$4}" "$(last_body)"
}

# --- liveness and readiness
assert_eq "GET /healthz" 200 "$(http GET /healthz)"
assert_eq "/healthz body" '{"status":"ok"}' "$(last_body)"
# Ready once the flusher has connected to PostgreSQL, shortly after start.
assert_eq "GET /readyz with PostgreSQL up" 200 "$(wait_status /readyz 200)"
assert_match "/readyz is a JSON object" '^\{.*\}$' "$(last_body)"
assert_match "/readyz names PostgreSQL" '"postgres' "$(last_body)"
assert_match "/readyz gives journal LSNs" '[Ll][Ss][Nn].*[0-9]' "$(last_body)"
assert_match "/readyz Content-Type" '^application/json' "$(last_header Content-Type)"

# --- the write path
post_ok "first increment" k 20 20
assert_match "202 Content-Type" '^application/json' "$(last_header Content-Type)"
post_ok "second increment" k 5 25
post_ok "negative increment" k -3 22
post_ok "zero increment" k 0 22
assert_eq "GET /increment/k" 200 "$(http GET /increment/k)"
assert_eq "GET body" '{"k":22}' "$(last_body)"
assert_match "GET Content-Type" '^application/json' "$(last_header Content-Type)"

st=$(post_body '{"key":"ct","value":1}' -H 'Content-Type: application/json; charset=utf-8')
[ "$st" = 202 ] && RECS=$((RECS + 1))
assert_eq "Content-Type with charset parameter" 202 "$st"
st=$(http POST /increment -H 'Content-Type:' --data-binary '{"key":"ct","value":2}')
[ "$st" = 202 ] && RECS=$((RECS + 1))
assert_eq "missing Content-Type is accepted" 202 "$st"
assert_eq "missing Content-Type: body" '{"key":"ct","value":3}' "$(last_body)"
st=$(post_body '{ "value" : 4 ,
	"key" : "ct" }')
[ "$st" = 202 ] && RECS=$((RECS + 1))
assert_eq "members in any order, with whitespace" 202 "$st"
assert_eq "reordered body: total" '{"key":"ct","value":7}' "$(last_body)"

# --- aliases
st=$(http POST /api/v1/increment -H 'Content-Type: application/json' \
    --data-binary '{"key":"k","value":8}')
[ "$st" = 202 ] && RECS=$((RECS + 1))
assert_eq "POST /api/v1/increment" 202 "$st"
assert_eq "POST /api/v1/increment body" '{"key":"k","value":30}' "$(last_body)"
assert_eq "GET /api/v1/increment/k" 200 "$(http GET /api/v1/increment/k)"
assert_eq "GET /api/v1/increment/k body" '{"k":30}' "$(last_body)"

# --- int64 limits
MAX=9223372036854775807
MIN=-9223372036854775808
post_ok "int64 max" big $MAX $MAX
assert_eq "total beyond int64 max" 422 "$(post big $MAX)"
assert_match "422 is a JSON error" '^\{.*"error":"[^"]+"' "$(last_body)"
assert_eq "total beyond int64 max by one" 422 "$(post big 1)"
assert_eq "total stays at int64 max" "{\"big\":$MAX}" "$(get big)"
post_ok "int64 min" small $MIN $MIN
assert_eq "total below int64 min" 422 "$(post small -1)"
assert_eq "total stays at int64 min" "{\"small\":$MIN}" "$(get small)"

# --- percent-encoded keys
post_ok "key with a space" 'a b' 1 1
post_ok "key with a slash" 'a/b' 2 2
post_ok "key with a quote" 'a"b' 3 3
post_ok "key with a backslash" 'a\b' 4 4
post_ok "unicode key" 'café' 5 5
post_ok "key of max_key_bytes (256) bytes" "$(printf 'x%.0s' $(seq 256))" 6 6
LONGKEY=$(printf 'x%.0s' $(seq 256))
assert_eq "GET a%20b" '{"a b":1}' "$(http GET /increment/a%20b >/dev/null; last_body)"
assert_eq "GET a%2Fb" '{"a/b":2}' "$(http GET /increment/a%2Fb >/dev/null; last_body)"
assert_eq "GET a%22b" '{"a\"b":3}' "$(http GET /increment/a%22b >/dev/null; last_body)"
assert_eq "GET a%5Cb" '{"a\\b":4}' "$(http GET /increment/a%5Cb >/dev/null; last_body)"
assert_eq "GET caf%C3%A9" '{"café":5}' "$(http GET /increment/caf%C3%A9 >/dev/null; last_body)"
assert_eq "GET caf%c3%a9 (lower-case escapes)" '{"café":5}' \
    "$(http GET /increment/caf%c3%a9 >/dev/null; last_body)"
assert_eq "GET the 256-byte key" "{\"$LONGKEY\":6}" "$(get "$LONGKEY")"
assert_eq "GET of a key never incremented" 404 "$(http GET /increment/never)"
assert_match "404 is a JSON error" '^\{.*"error":"[^"]+"' "$(last_body)"
assert_eq "GET with a bad escape" 400 "$(http GET /increment/a%zz)"
assert_match "400 is a JSON error" '^\{.*"error":"[^"]+"' "$(last_body)"
assert_eq "GET of a key that is not UTF-8" 400 "$(http GET /increment/%FF)"

# --- keep-alive: one curl, several requests, one connection
out=$(curl -s -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
    -w '%{http_code} %{num_connects}\n' \
    -H 'Content-Type: application/json' --data-binary '{"key":"ka","value":2}' \
    "$BASE/increment" "$BASE/increment" "$BASE/increment" "$BASE/increment")
n202=$(echo "$out" | grep -c '^202 ')
RECS=$((RECS + n202))
assert_eq "keep-alive POSTs all 202" 4 "$n202"
assert_eq "keep-alive POSTs used one connection" 1 \
    "$(echo "$out" | awk '{ s += $2 } END { print s }')"
out=$(curl -s -o /dev/null -o /dev/null -o /dev/null \
    -w '%{http_code} %{num_connects}\n' "$BASE/increment/ka" "$BASE/healthz" "$BASE/increment/k")
assert_eq "keep-alive GETs" "200 1 200 0 200 0" "$(echo $out)"
assert_eq "keep-alive total" '{"ka":8}' "$(get ka)"

# --- h2c
out=$(curl -s --http2-prior-knowledge -o "$T/h2.body" -w '%{http_version} %{http_code}' \
    -H 'Content-Type: application/json' --data-binary '{"key":"h2","value":7}' \
    "$BASE/increment")
[ "$out" = "2 202" ] && RECS=$((RECS + 1))
assert_eq "h2c POST" "2 202" "$out"
assert_eq "h2c POST body" '{"key":"h2","value":7}' "$(json_min <"$T/h2.body")"
out=$(curl -s --http2-prior-knowledge -o "$T/h2.body" -w '%{http_version} %{http_code}' \
    "$BASE/increment/h2")
assert_eq "h2c GET" "2 200" "$out"
assert_eq "h2c GET body" '{"h2":7}' "$(json_min <"$T/h2.body")"
out=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version} %{http_code}' \
    -X PUT "$BASE/increment")
assert_eq "h2c PUT /increment" "2 405" "$out"

printf '{"key":"h2load","value":3}' >"$T/h2load.json"
h2load -n 1000 -c 4 -m 10 -d "$T/h2load.json" -H 'Content-Type: application/json' \
    "$BASE/increment" >"$T/h2load.out" 2>&1
n2xx=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$T/h2load.out")
RECS=$((RECS + ${n2xx:-0}))
assert_eq "h2load over h2c: 2xx answers" 1000 "${n2xx:-none}"
assert_match "h2load over h2c: all succeeded" '1000 succeeded, 0 failed, 0 errored' \
    "$(cat "$T/h2load.out")"
h2load --h1 -n 500 -c 4 -d "$T/h2load.json" -H 'Content-Type: application/json' \
    "$BASE/increment" >"$T/h2load1.out" 2>&1
n2xx=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$T/h2load1.out")
RECS=$((RECS + ${n2xx:-0}))
assert_eq "h2load over HTTP/1.1: 2xx answers" 500 "${n2xx:-none}"
assert_eq "h2load total" '{"h2load":4500}' "$(get h2load)"

# --- everything above reaches PostgreSQL exactly
pg_wait_value k 30
pg_wait_value big $MAX
pg_wait_value small $MIN
pg_wait_value 'a"b' 3
pg_wait_value 'a\b' 4
pg_wait_value 'café' 5
pg_wait_value h2load 4500
# Rows rewritten every flush keep room in their page (HOT updates).
assert_eq "tally_counters made with fillfactor 70" "{fillfactor=70}" \
    "$(pg_sql "SELECT reloptions FROM pg_class WHERE oid = 'tally_counters'::regclass")"
assert_eq "journal holds one record per 202" "$RECS" "$(journal_records)"
assert_eq "journal verify" 0 "$(tallyctl journal verify >"$T/verify.out" 2>&1; echo $?)"

# --- refused requests change nothing
keys_before=$(pg_sql "select count(*) from tally_counters")
sum_before=$(pg_sql "select sum(value::numeric) from tally_counters")
recs_before=$(journal_records)

# expect STATUS DESCRIPTION CURL_ARG...: a POST /increment.
expect() {
	local want=$1 what=$2 st
	shift 2
	st=$(http POST /increment "$@")
	assert_eq "$what" "$want" "$st"
	if [ "$want" != 202 ]; then
		assert_match "$what: JSON error" '^\{.*"error":"[^"]+"' "$(last_body)"
	fi
}
J=(-H 'Content-Type: application/json')

expect 400 "malformed JSON" "${J[@]}" --data-binary '{"key":"k","value":}'
expect 400 "truncated JSON" "${J[@]}" --data-binary '{"key":"k","value":1'
expect 400 "truncated string" "${J[@]}" --data-binary '{"key":"k'
expect 400 "not JSON" "${J[@]}" --data-binary 'key=k&value=1'
expect 400 "empty body" "${J[@]}" --data-binary ''
expect 400 "no body" "${J[@]}"
expect 400 "an array" "${J[@]}" --data-binary '[{"key":"k","value":1}]'
expect 400 "a string" "${J[@]}" --data-binary '"k"'
expect 400 "a number" "${J[@]}" --data-binary '1'
expect 400 "null" "${J[@]}" --data-binary 'null'
expect 400 "two objects" "${J[@]}" --data-binary '{"key":"k","value":1}{"key":"k","value":1}'
expect 400 "empty object" "${J[@]}" --data-binary '{}'
expect 400 "missing key" "${J[@]}" --data-binary '{"value":1}'
expect 400 "missing value" "${J[@]}" --data-binary '{"key":"k"}'
expect 400 "key is a number" "${J[@]}" --data-binary '{"key":1,"value":1}'
expect 400 "key is null" "${J[@]}" --data-binary '{"key":null,"value":1}'
expect 400 "key is an object" "${J[@]}" --data-binary '{"key":{},"value":1}'
expect 400 "value is a string" "${J[@]}" --data-binary '{"key":"k","value":"1"}'
expect 400 "value is null" "${J[@]}" --data-binary '{"key":"k","value":null}'
expect 400 "value is a boolean" "${J[@]}" --data-binary '{"key":"k","value":true}'
expect 400 "value is an array" "${J[@]}" --data-binary '{"key":"k","value":[1]}'
expect 400 "value is a float" "${J[@]}" --data-binary '{"key":"k","value":1.5}'
expect 400 "value is 1.0" "${J[@]}" --data-binary '{"key":"k","value":1.0}'
expect 400 "value in exponent form" "${J[@]}" --data-binary '{"key":"k","value":1e3}'
expect 400 "value beyond int64 max" "${J[@]}" --data-binary '{"key":"k","value":9223372036854775808}'
expect 400 "value beyond int64 min" "${J[@]}" --data-binary '{"key":"k","value":-9223372036854775809}'
expect 400 "value far beyond int64" "${J[@]}" --data-binary '{"key":"k","value":123456789012345678901234567890}'
expect 400 "unknown extra field" "${J[@]}" --data-binary '{"key":"k","value":1,"extra":1}'
expect 400 "duplicate field" "${J[@]}" --data-binary '{"key":"k","value":1,"value":2}'
expect 400 "empty key" "${J[@]}" --data-binary '{"key":"","value":1}'
expect 400 "key of 257 bytes" "${J[@]}" --data-binary "{\"key\":\"${LONGKEY}y\",\"value\":1}"
expect 400 "key of 129 two-byte characters (258 bytes)" "${J[@]}" \
    --data-binary "{\"key\":\"$(printf 'é%.0s' $(seq 129))\",\"value\":1}"
printf '{"key":"k\377","value":1}' >"$T/bad-utf8.json"
expect 400 "key not UTF-8" "${J[@]}" --data-binary "@$T/bad-utf8.json"
printf '{"key":"\300\257","value":1}' >"$T/overlong.json"
expect 400 "key with an overlong UTF-8 sequence" "${J[@]}" --data-binary "@$T/overlong.json"
expect 400 "key containing \\u0000" "${J[@]}" --data-binary '{"key":"k\u0000","value":1}'
head -c 5000 /dev/zero | tr '\0' ' ' >"$T/big.json"
printf '{"key":"k","value":1}' >>"$T/big.json"
expect 413 "body over max_body (4K)" "${J[@]}" --data-binary "@$T/big.json"
expect 415 "Content-Type text/plain" -H 'Content-Type: text/plain' \
    --data-binary '{"key":"k","value":1}'
expect 415 "Content-Type form-urlencoded (curl's default)" \
    --data-binary '{"key":"k","value":1}'
expect 415 "Content-Type application/jsonx" -H 'Content-Type: application/jsonx' \
    --data-binary '{"key":"k","value":1}'
expect 422 "total beyond int64 (again)" "${J[@]}" --data-binary '{"key":"big","value":1}'

assert_eq "unknown path" 404 "$(http GET /nope)"
assert_match "unknown path: JSON error" '^\{.*"error":"[^"]+"' "$(last_body)"
assert_eq "POST to an unknown path" 404 \
    "$(http POST /increments "${J[@]}" --data-binary '{"key":"k","value":1}')"
# Allow on /increment/{key}: GET, and HEAD as well when HEAD is served.
allow_get() {
	local allow
	allow=$(last_header Allow)
	case "$allow" in
	GET) ok "$1: GET" ;;
	"GET, HEAD"|"GET,HEAD"|"HEAD, GET"|"HEAD,GET")
		assert_eq "$1: $allow, and HEAD is served" 200 \
		    "$(curl -s -m 5 -I -o /dev/null -w '%{http_code}' "$BASE/increment/k")" ;;
	*) assert_eq "$1" GET "$allow" ;;
	esac
}
assert_eq "PUT /increment" 405 "$(http PUT /increment "${J[@]}" --data-binary '{"key":"k","value":1}')"
assert_eq "PUT /increment: Allow" POST "$(last_header Allow)"
assert_match "405 is a JSON error" '^\{.*"error":"[^"]+"' "$(last_body)"
assert_eq "GET /increment" 405 "$(http GET /increment)"
assert_eq "GET /increment: Allow" POST "$(last_header Allow)"
assert_eq "POST /increment/k" 405 "$(http POST /increment/k "${J[@]}" --data-binary '{"key":"k","value":1}')"
allow_get "POST /increment/k: Allow"
assert_eq "DELETE /increment/k" 405 "$(http DELETE /increment/k)"
allow_get "DELETE /increment/k: Allow"
assert_eq "PUT /api/v1/increment" 405 "$(http PUT /api/v1/increment "${J[@]}" --data-binary '{"key":"k","value":1}')"
assert_eq "PUT /api/v1/increment: Allow" POST "$(last_header Allow)"

assert_eq "after refusals: k" '{"k":30}' "$(get k)"
assert_eq "after refusals: big" "{\"big\":$MAX}" "$(get big)"
assert_match "after refusals: the 257-byte key does not exist" '^40[04]$' \
    "$(http GET "/increment/${LONGKEY}y")"
assert_eq "after refusals: journal records" "$recs_before" "$(journal_records)"
sleep 1	# ten flush intervals
assert_eq "after refusals: PostgreSQL keys" "$keys_before" \
    "$(pg_sql "select count(*) from tally_counters")"
assert_eq "after refusals: PostgreSQL sum" "$sum_before" \
    "$(pg_sql "select sum(value::numeric) from tally_counters")"
pg_wait_value k 30 1

# --- a graceful stop
tallyd_stop TERM
assert_eq "SIGTERM: exit status" 0 "$TALLYD_STATUS"
assert_eq "journal verify after stop" 0 "$(tallyctl journal verify >"$T/verify.out" 2>&1; echo $?)"
