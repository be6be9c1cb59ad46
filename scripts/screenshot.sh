#!/usr/bin/env bash
# screenshot.sh: a PNG of pgsidecar's live status page ("/" on --status-listen)
# with some traffic on it: a client left idle in a transaction (a leak suspect),
# one running a long query, and one waiting for a server connection.
#
#   scripts/screenshot.sh [OUT.png]
#       builds bin/proxy, starts `bin/proxy dev` (a throwaway PostgreSQL and the
#       proxy, pool size 2, leak threshold 2s) and shoots it.
#   scripts/screenshot.sh OUT.png http://127.0.0.1:9127 [postgres://...]
#       shoots a running proxy's HTTP address; the traffic is made through the
#       PostgreSQL URL (3rd argument or $DATABASE_URL), or skipped without one.
#
# Environment: LISTEN, HTTP_LISTEN (dev mode addresses, default 127.0.0.1:16432
# and 127.0.0.1:19127), WAIT (seconds before the shot, default 4), CHROMIUM
# (the browser binary), NO_BUILD=1 (use bin/proxy as it is).
# Needs psql and chromium (Debian: apt-get install -y postgresql-client chromium).
# Every process it starts is ended on exit, by pid (or its own process group).
set -euo pipefail

out=$(realpath -m "${1:-/tmp/pgsidecar-status.png}")
http_url=${2:-}
db_url=${3:-${DATABASE_URL:-}}
listen=${LISTEN:-127.0.0.1:16432}
http_listen=${HTTP_LISTEN:-127.0.0.1:19128}
wait_s=${WAIT:-4}
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}

cd "$(dirname "$0")/.."
if [[ -z $chromium ]]; then
	echo "screenshot.sh: chromium not found (apt-get install -y chromium, or set CHROMIUM)" >&2
	exit 1
fi
command -v psql >/dev/null || { echo "screenshot.sh: psql not found" >&2; exit 1; }

tmp=$(mktemp -d)
proxy_pid=""
groups=() # process groups (setsid) of the clients: psql and what its \! runs

cleanup() {
	local g
	for g in "${groups[@]}"; do
		kill -TERM -- "-$g" 2>/dev/null || true
	done
	if [[ -n $proxy_pid ]]; then
		# SIGTERM: the proxy drains and stops its throwaway PostgreSQL.
		kill -TERM "$proxy_pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$proxy_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$proxy_pid" 2>/dev/null || true
	fi
	for g in "${groups[@]}"; do
		kill -KILL -- "-$g" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z $http_url ]]; then
	if [[ -z ${NO_BUILD:-} ]]; then
		go build -o bin/proxy ./cmd/proxy
	fi
	# Own process group, so that whatever is left of it can be ended at once.
	setsid bin/proxy dev --listen "$listen" --http-listen off --status-listen "$http_listen" \
		--pool-size 2 --leak-threshold 2s --shutdown-timeout 2s \
		>"$tmp/proxy.out" 2>"$tmp/proxy.log" &
	proxy_pid=$!
	http_url="http://$http_listen"
	for _ in $(seq 300); do
		db_url=$(sed -n 's/^DATABASE_URL=//p' "$tmp/proxy.out")
		[[ -n $db_url ]] && curl -fsS "$http_url/status.json" >/dev/null 2>&1 && break
		if ! kill -0 "$proxy_pid" 2>/dev/null; then
			echo "screenshot.sh: bin/proxy dev exited:" >&2
			cat "$tmp/proxy.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	[[ -n $db_url ]] || { echo "screenshot.sh: no DATABASE_URL from bin/proxy dev" >&2; cat "$tmp/proxy.log" >&2; exit 1; }
	echo "proxy: $db_url, status page $http_url/"
fi
http_url=${http_url%/}

# client runs psql as APP in its own process group, fed the SQL on stdin.
client() {
	local app=$1 sql=$2
	PGAPPNAME=$app setsid psql "$db_url" -X -q -o /dev/null <<<"$sql" >"$tmp/$app.log" 2>&1 &
	groups+=("$!")
}

if [[ -n $db_url ]]; then
	# A leak: BEGIN, one statement, then the client does something else.
	client leaky-worker "BEGIN;
SELECT 'leak demo' AS forgot_to_commit;
\\! sleep 600"
	sleep 0.5
	# A long query, then one more client, which waits: the pool (size 2) is full.
	client report-job "SELECT pg_sleep(600);"
	sleep 0.5
	client web "SELECT 1;"
else
	echo "screenshot.sh: no PostgreSQL URL: shooting the page without traffic" >&2
fi

sleep "$wait_s"
curl -fsS "$http_url/status.json" >"$tmp/status.json" && echo "status.json: $(cat "$tmp/status.json")"

"$chromium" --headless --disable-gpu --no-sandbox --hide-scrollbars \
	--user-data-dir="$tmp/chromium" --virtual-time-budget=3000 \
	--screenshot="$out" --window-size=1280,900 "$http_url/" >"$tmp/chromium.log" 2>&1 || {
	echo "screenshot.sh: chromium failed:" >&2
	cat "$tmp/chromium.log" >&2
	exit 1
}
echo "screenshot: $out"
