#!/usr/bin/env bash
# scripts/bench.sh - pgbench comparison of PostgreSQL direct, PgBouncer and pgsidecar
# on one throwaway, CPU-bound-tuned local cluster. Run with --help for usage.
#
# Everything runs in main(), called on the last line together with exit, so bash has
# parsed the whole file before the benchmark starts: editing this file during a run
# does not disturb that run.
set -Eeuo pipefail
umask 022

PROG=bench.sh
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

usage() {
	cat <<EOF
Usage: scripts/bench.sh [--quick] [--idle] [--help]
       make bench [ARGS=--quick | ARGS=--idle] [QUICK=1] [ROUNDS=3] [CLIENTS='8 64'] ...

Compares pgbench throughput, latency and CPU of three targets, all in front of one
throwaway PostgreSQL cluster started by this script (127.0.0.1 only):
  direct     PostgreSQL itself (initdb in a temp dir, trust auth, fsync,
             synchronous_commit and full_page_writes off, shared_buffers 256MB,
             autovacuum off, max_connections 400 or what the run needs)
  pgbouncer  PgBouncer in transaction mode (skipped with a note if not installed:
             apt-get install pgbouncer)
  pgsidecar  \$PROXY_BIN (skipped with a note if missing), started as
             PROXY_BIN --listen 127.0.0.1:PORT
                       --upstream postgres://bench@127.0.0.1:PGPORT/bench?sslmode=disable
                       --pool-size POOL --max-client-conn MAXCLIENTS --http-listen off
                       --log-level warn --client-auth trust --status-listen off \$PROXY_ARGS
             (--http-listen off: no metrics are collected; PROXY_ARGS='--http-listen
             127.0.0.1:0' measures with metrics on. Logins are not timed, and PgBouncer
             runs with auth_type trust too.)
Runs are interleaved: for every workload, client count and round, each target in
turn. Write workloads get VACUUM + TRUNCATE pgbench_history + CHECKPOINT (straight
on PostgreSQL) before every run.

Needs the PostgreSQL server binaries and pgbench (Debian: apt-get install
postgresql; pgbench is in the postgresql-15 package, psql in postgresql-client-15).
PgBouncer is optional. --idle needs python3, PERF=1 needs perf (linux-perf).

The markdown result table goes to stdout (and OUT_DIR/results.md); progress goes to
stderr. Exit status is 0 when the benchmark completed, even if some runs FAILed
(they are reported in the table); nonzero when setup failed.

Options
  --quick        smoke run: CLIENTS="8 64" DURATION=3 (same as QUICK=1)
  --idle         instead of pgbench: open IDLE_COUNTS idle client connections to
                 each target (one 'SELECT 1' each, unless IDLE_QUERY=0) and report
                 the target's RSS and PSS growth per idle client; proxies are
                 restarted for every count
  -h, --help     this text

Environment (defaults in brackets)
  TARGETS        targets to run, in order ["direct pgbouncer pgsidecar"]
  PROXY_BIN      pgsidecar binary [bin/proxy of this repository; a relative path
                 is taken from the current directory]
  PROXY_ARGS     extra arguments for pgsidecar, after the ones above [none]
  PGBOUNCER_BIN  pgbouncer binary [pgbouncer in PATH, else /usr/sbin/pgbouncer]
  PGBOUNCER_PREPARED
                 N > 0: max_prepared_statements = N on PgBouncer >= 1.21, which
                 then runs the prepared workloads too [0: PgBouncer skips them]
  PG_BIN         PostgreSQL bin dir [pg_config --bindir, else newest
                 /usr/lib/postgresql/*/bin]
  CLIENTS        pgbench client counts ["8 64 256"]
  POOL           server pool size of both proxies [16]
  DURATION       seconds per pgbench run [10]
  ROUNDS         rounds per (workload, clients, target) [1]; with more than one,
                 the table shows medians and the TPS range (peak RSS: max)
  SCALE          pgbench -i scale factor [10]
  WORKLOADS      SCRIPT-MODE items ["select-simple select-extended select-prepared tpcb-simple"];
                 SCRIPT: select (-S), tpcb (built-in tpcb-like), simple-update (-N);
                 MODE: simple, extended, prepared (-M)
  JOBS           pgbench threads [nproc], capped at the client count
  WARMUP         seconds of unrecorded select-only warm-up per target [2; 0 = none]
  MAX_OTHER      repeat a run when processes outside the benchmark used more than
                 this % of the host CPU during it [0 = never; 20 on a shared host]
  RETRIES        at most this many repeats of such a run [2]
  PERF           1 = also count the proxy's system calls and context switches per
                 transaction with perf stat (costs the proxy a little CPU) [0]
  IDLE_COUNTS    --idle: idle connections per step ["1000 5000 10000"]
  IDLE_DIRECT_MAX
                 --idle: larger counts are skipped for direct (one backend
                 process per connection) [1000]
  IDLE_QUERY     --idle: 0 = only log in, no 'SELECT 1' [1]
  START_TIMEOUT  seconds to wait for a target to answer 'select 1' [30]
  OUT_DIR        where results.md, runs.tsv and the logs go [mktemp -d]
  KEEP           1 = keep the temporary cluster directory [0]
  QUICK          1 = same as --quick [0]

As root, PostgreSQL and PgBouncer run as the unprivileged user 'pgsidecar'
(created with useradd --system if missing); pgbench, psql and the proxy run as
the invoking user. Every process the script started is stopped on exit.

Table columns: TPS = median of pgbench's "tps = ... (without initial connection
time)" over the rounds, with its min-max; latency = pgbench "latency average";
the CPU columns are CPU microseconds per transaction over the whole pgbench run
(connections included): proxy = the proxy process (utime+stime of
/proc/PID/stat), PG = the postmaster and its backends, pgbench = the client;
peak RSS = the proxy's VmHWM, reset before each run; other % = host CPU used by
processes outside the benchmark during the run (high: a disturbed run);
vs pgbouncer / vs direct = TPS ratio. With PERF=1 also the proxy's system calls
and context switches per transaction.
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
shell_quote() { # args -> one line that a shell can run again
	local a out=""
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./,:=@%+-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
	done
	printf '%s\n' "${out% }"
}
last_line() { # file -> "; last log line: ..." or nothing
	local l
	l=$(grep -v '^[[:space:]]*$' -- "$1" 2>/dev/null | tail -n 1 || true)
	if [[ -n $l ]]; then printf '; last log line: %s' "${l:0:200}"; fi
}
tail_log() { if [[ -f $1 ]]; then printf '\n'; tail -n "${2:-10}" -- "$1" | sed 's/^/    /'; fi; }

# ------------------------------------------------------------------ process helpers
alive() { # pid -> running and not a zombie
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	[[ -n $s && ${s:0:1} != Z ]]
}
proc_ticks() { # pid -> utime+stime in clock ticks (empty if gone)
	local s f
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	s=${s##*) }
	read -r -a f <<<"$s"
	echo $((f[11] + f[12]))
}
proc_hwm_kb() { awk '/^VmHWM:/ {print $2; exit}' "/proc/$1/status" 2>/dev/null || true; }
all_stats() { cat /proc/[0-9]*/stat 2>/dev/null || true; }
tree_ticks() { # pid -> utime+stime+cutime+cstime of pid and of its live children (postmaster + backends)
	all_stats | awk -v root="$1" '{pid = $1; sub(/^.*\) /, ""); if (pid == root || $2 == root) t += $12 + $13 + $14 + $15} END {printf "%d\n", t}'
}
tree_pids() { all_stats | awk -v root="$1" '{pid = $1; sub(/^.*\) /, ""); if (pid == root || $2 == root) print pid}'; }
mem_tree() { # pid -> "rss_kb pss_kb nprocs" summed over pid and its children
	local pids p rss pss
	pids=$(tree_pids "$1")
	rss=$(for p in $pids; do cat "/proc/$p/status" 2>/dev/null || true; done | awk '/^VmRSS:/ {s += $2} END {printf "%d\n", s}')
	pss=$(for p in $pids; do cat "/proc/$p/smaps_rollup" 2>/dev/null || true; done | awk '/^Pss:/ {s += $2} END {printf "%d\n", s}')
	echo "$rss $pss $(echo "$pids" | grep -c . || true)"
}
host_ticks() { # -> "busy total" jiffies over all CPUs
	awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat
}
is_descendant() { # pid ancestor -> pid == ancestor or below it
	local p=$1 i
	for ((i = 0; i < 64; i++)); do
		[[ $p == "$2" ]] && return 0
		[[ -n $p && $p != 0 && $p != 1 ]] || return 1
		p=$(awk '/^PPid:/ {print $2; exit}' "/proc/$p/status" 2>/dev/null || true)
	done
	return 1
}
stop_pid() { # pid signal wait_s: signal, wait (bounded), then SIGKILL; reap our children
	local pid=$1 sig=${2:-TERM} secs=${3:-10} i
	[[ -n $pid ]] || return 0
	if alive "$pid"; then
		kill "-$sig" "$pid" 2>/dev/null || true
		for ((i = 0; i < secs * 10; i++)); do alive "$pid" || break; sleep 0.1; done
		if alive "$pid"; then
			log "pid $pid did not stop on SIG$sig within ${secs}s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
		fi
	fi
	wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------ ports
USED_PORTS=" "
port_in_use() { # port -> 0 when any TCP socket (listening or connected) uses it on this host
	if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
	if have ss && [[ -n $(ss -Htan "sport = :$1" 2>/dev/null || true) ]]; then return 0; fi
	return 1
}
pick_port() { # -> FREE_PORT, a currently free TCP port on 127.0.0.1, outside the ephemeral range
	local p i lo=32768 hi=60999 a=15000 b=32767
	read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
	# outgoing connections (pgbench's, for instance) take their local ports from lo..hi
	if ((lo > 11024)); then a=$((lo > 26024 ? lo - 15000 : 10000)) b=$((lo - 1)); elif ((hi < 64000)); then a=$((hi + 1)) b=65535; fi
	for ((i = 0; i < 500; i++)); do
		p=$((a + (RANDOM * 32768 + RANDOM) % (b - a + 1)))
		[[ $USED_PORTS != *" $p "* ]] || continue
		if ! port_in_use "$p"; then
			USED_PORTS+="$p "
			FREE_PORT=$p
			return 0
		fi
	done
	die "no free TCP port found on 127.0.0.1 in $a..$b"
}
bind_conflict() { grep -qiE 'address already in use|could not bind' -- "$1" 2>/dev/null; } # logfile
listener_pid() { # port -> pid listening on it (needs ss -p), or empty
	have ss || return 0
	ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true
}

# ------------------------------------------------------------------ state
TMPD="" PG_PID="" PGDATA="" PGPORT=""
declare -A T_PORT=() T_PID=() T_LPID=() T_STARTS=() T_DEAD=()
NOTES=()
AS_USER=()
SETSID=() # servers get their own session: a Ctrl-C on the terminal reaches only this script and pgbench
OS_USER=pgsidecar
CLEANED=0
OPENER_PID="" PERF_PID="" # the --idle connection opener, a running perf stat

# shellcheck disable=SC2317 # cleanup, on_err and stop_postgres are reached through traps
cleanup() {
	local rc=$? t
	((CLEANED)) && return 0
	CLEANED=1
	trap - EXIT ERR INT TERM
	set +e
	if [[ -n $PERF_PID ]]; then stop_pid "$PERF_PID" INT 5; fi
	if [[ -n $OPENER_PID ]]; then stop_pid "$OPENER_PID" TERM 10; fi
	for t in "${!T_LPID[@]}"; do stop_target "$t"; done
	stop_postgres
	if [[ -n $TMPD && -d $TMPD ]]; then
		if [[ ${KEEP:-0} == 1 ]]; then log "kept the cluster directory $TMPD (KEEP=1)"; else rm -rf -- "$TMPD"; fi
	fi
	exit "$rc"
}
# shellcheck disable=SC2317
on_err() { printf '%s: error: unexpected failure at line %s: %s\n' "$PROG" "$1" "$2" >&2; exit 1; }

# ------------------------------------------------------------------ PostgreSQL
own() { if ((${#AS_USER[@]})); then chown -R "$OS_USER:$(id -gn "$OS_USER")" -- "$@"; fi; }
psql_pg() { # psql args... straight to PostgreSQL, as superuser bench
	PGCONNECT_TIMEOUT=10 timeout --foreground 600 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U bench "$@"
}

start_postgres() {
	local maxconn=$1 deadline
	PGDATA=$TMPD/pgdata
	mkdir -m 700 -- "$PGDATA"
	own "$PGDATA"
	log "initdb ($PG_BIN) into $PGDATA"
	(cd -- "$TMPD" && exec timeout --foreground 300 "${AS_USER[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U bench -A trust -E UTF8 \
		--locale=C --no-sync) >"$OUT_DIR/initdb.log" 2>&1 </dev/null ||
		die "initdb failed:$(tail_log "$OUT_DIR/initdb.log")"
	cat >>"$PGDATA/postgresql.conf" <<-EOF

		# scripts/bench.sh: throwaway cluster tuned for CPU-bound benchmarking (never for real data)
		listen_addresses = '127.0.0.1'
		unix_socket_directories = ''
		max_connections = $maxconn
		shared_buffers = 256MB
		fsync = off
		synchronous_commit = off
		full_page_writes = off
		autovacuum = off
		max_wal_size = 8GB
		checkpoint_timeout = 30min
		logging_collector = off
		log_min_messages = warning
		log_checkpoints = off
	EOF
	local attempt
	for ((attempt = 1; ; attempt++)); do
		pick_port
		PGPORT=$FREE_PORT
		log "starting PostgreSQL on 127.0.0.1:$PGPORT"
		# our own child (not via pg_ctl), so that we know the postmaster pid and reap it
		(cd -- "$TMPD" && exec "${SETSID[@]}" "${AS_USER[@]}" "$PG_BIN/postgres" -D "$PGDATA" -p "$PGPORT") \
			>>"$OUT_DIR/postgres.log" 2>&1 </dev/null &
		PG_PID=$!
		deadline=$((SECONDS + 60))
		until timeout --foreground 10 "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -U bench -d postgres; do
			if ! alive "$PG_PID"; then
				wait "$PG_PID" 2>/dev/null || true
				PG_PID=""
				if ((attempt < 5)) && bind_conflict "$OUT_DIR/postgres.log"; then
					log "port $PGPORT was taken meanwhile: trying another one"
					: >"$OUT_DIR/postgres.log"
					continue 2
				fi
				die "PostgreSQL exited during startup:$(tail_log "$OUT_DIR/postgres.log")"
			fi
			((SECONDS < deadline)) || die "PostgreSQL not ready within 60s:$(tail_log "$OUT_DIR/postgres.log")"
			sleep 0.2
		done
		break
	done
	psql_pg -d postgres -c 'CREATE DATABASE bench' >/dev/null 2>"$OUT_DIR/createdb.log" ||
		die "CREATE DATABASE failed:$(tail_log "$OUT_DIR/createdb.log")"
	log "pgbench -i -s $SCALE"
	timeout --foreground $((600 + SCALE * 60)) "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U bench bench \
		>"$OUT_DIR/pgbench-init.log" 2>&1 </dev/null || die "pgbench -i failed:$(tail_log "$OUT_DIR/pgbench-init.log")"
	psql_pg -d bench -c 'CHECKPOINT' >/dev/null
	T_PORT[direct]=$PGPORT
}

# shellcheck disable=SC2317
stop_postgres() { # fast shutdown (SIGINT to the postmaster), then immediate (SIGQUIT), then SIGKILL
	local sig i
	[[ -n $PG_PID ]] || return 0
	for sig in INT QUIT KILL; do
		alive "$PG_PID" || break
		kill "-$sig" "$PG_PID" 2>/dev/null || true
		for ((i = 0; i < 300; i++)); do alive "$PG_PID" || break; sleep 0.1; done
	done
	wait "$PG_PID" 2>/dev/null || true
	PG_PID=""
}

maintenance() { # before every write-workload run, straight on PostgreSQL
	psql_pg -d bench -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' -c 'VACUUM pgbench_accounts' \
		-c 'TRUNCATE pgbench_history' -c 'CHECKPOINT' >/dev/null 2>"$OUT_DIR/maintenance.log" ||
		die "VACUUM on PostgreSQL failed:$(tail_log "$OUT_DIR/maintenance.log")"
}

# ------------------------------------------------------------------ proxies
select1() { # port -> 0 when 'select 1' works through it
	local out
	out=$(PGCONNECT_TIMEOUT=3 timeout --foreground 10 "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$1" -U bench -d bench \
		-c 'select 1' 2>&1 </dev/null || true)
	[[ $out == 1 ]]
}

start_target() { # target -> 0 when it answers; else 1 with START_ERR set (process stopped)
	local attempt
	for ((attempt = 1; attempt <= 3; attempt++)); do
		if start_target_once "$1"; then return 0; fi
		bind_conflict "$START_LOG" || return 1
		log "$1: port ${T_PORT[$1]} was taken meanwhile: trying another one"
	done
	return 1
}
start_target_once() {
	local t=$1 d lpid mpid deadline logf
	START_ERR="" START_LOG=""
	pick_port
	T_PORT[$t]=$FREE_PORT
	T_STARTS[$t]=$((${T_STARTS[$t]:-0} + 1))
	logf=$OUT_DIR/$t.log
	((T_STARTS[$t] == 1)) || logf=$OUT_DIR/$t.start${T_STARTS[$t]}.log
	case $t in
	pgbouncer)
		d=$TMPD/pgbouncer
		rm -rf -- "$d"
		mkdir -m 700 -- "$d"
		printf '"bench" ""\n' >"$d/userlist.txt"
		cat >"$d/pgbouncer.ini" <<-EOF
			[databases]
			bench = host=127.0.0.1 port=$PGPORT dbname=bench user=bench

			[pgbouncer]
			listen_addr = 127.0.0.1
			listen_port = ${T_PORT[$t]}
			unix_socket_dir =
			auth_type = trust
			auth_file = $d/userlist.txt
			pool_mode = transaction
			default_pool_size = $POOL
			min_pool_size = 0
			reserve_pool_size = 0
			max_client_conn = $MAXCLIENTS
			ignore_startup_parameters = extra_float_digits
			log_connections = 0
			log_disconnections = 0
		EOF
		if ((PGB_PREP)); then printf 'max_prepared_statements = %s\n' "$PGBOUNCER_PREPARED" >>"$d/pgbouncer.ini"; fi
		own "$d"
		cp -- "$d/pgbouncer.ini" "$OUT_DIR/pgbouncer.ini"
		(cd -- "$TMPD" && exec "${SETSID[@]}" "${AS_USER[@]}" "$PGBOUNCER_BIN" "$d/pgbouncer.ini") >"$logf" 2>&1 </dev/null &
		lpid=$!
		;;
	pgsidecar)
		PROXY_CMD=("$PROXY_BIN" --listen "127.0.0.1:${T_PORT[$t]}"
			--upstream "postgres://bench@127.0.0.1:$PGPORT/bench?sslmode=disable"
			--pool-size "$POOL" --max-client-conn "$MAXCLIENTS" --http-listen off --log-level warn
			--client-auth trust --status-listen off "${PROXY_EXTRA[@]}")
		shell_quote "${PROXY_CMD[@]}" >"$OUT_DIR/pgsidecar.command"
		"${SETSID[@]}" "${PROXY_CMD[@]}" >"$logf" 2>&1 </dev/null &
		lpid=$!
		;;
	*) die "unknown target $t" ;;
	esac
	T_LPID[$t]=$lpid
	T_PID[$t]=$lpid
	START_LOG=$logf
	log "started $t (pid $lpid) on 127.0.0.1:${T_PORT[$t]}; waiting for 'select 1' (at most ${START_TIMEOUT}s)"
	deadline=$((SECONDS + START_TIMEOUT))
	until select1 "${T_PORT[$t]}"; do
		if ! alive "$lpid"; then
			START_ERR="$t exited before answering on 127.0.0.1:${T_PORT[$t]} (log $logf)$(last_line "$logf")"
			stop_target "$t"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			START_ERR="$t did not answer 'select 1' on 127.0.0.1:${T_PORT[$t]} within ${START_TIMEOUT}s (log $logf)$(last_line "$logf")"
			stop_target "$t"
			return 1
		fi
		sleep 0.2
	done
	# measure the process that really listens (PROXY_BIN may be a wrapper that forks)
	mpid=$(listener_pid "${T_PORT[$t]}")
	if [[ -n $mpid && $mpid != "$lpid" ]] && is_descendant "$mpid" "$lpid"; then T_PID[$t]=$mpid; fi
	return 0
}

stop_target() {
	local t=$1 lpid=${T_LPID[$1]:-} mpid=${T_PID[$1]:-}
	[[ -n $lpid ]] || return 0
	if [[ -n $mpid && $mpid != "$lpid" ]]; then stop_pid "$mpid" TERM 10; fi
	stop_pid "$lpid" TERM 10
	unset "T_LPID[$t]" "T_PID[$t]"
}

# ------------------------------------------------------------------ workloads
wl_args() { # workload -> pgbench args (one per line); fails on unknown
	local s=${1%-*} m=${1##*-}
	[[ $1 == *-* ]] || return 1
	case $m in simple | extended | prepared) ;; *) return 1 ;; esac
	case $s in
	select) printf '%s\n' -S ;;
	tpcb) ;;
	simple-update) printf '%s\n' -N ;;
	*) return 1 ;;
	esac
	printf '%s\n' -M "$m"
}
wl_writes() { [[ ${1%-*} != select ]]; }

# run_pgbench target workload clients seconds logfile -> R_STATUS (ok|FAIL) R_TPS R_LAT R_TX R_CPU R_RSS
# R_PG R_CL R_OTHER R_SC R_CS R_ERR (CPU figures in microseconds per transaction)
run_pgbench() {
	local t=$1 wl=$2 c=$3 dur=$4 logf=$5 j=$JOBS rc=0 pid="" t0="" t1="" vals failed aborted
	local pg0 pg1 hb0 ht0 hb1 ht1 cl=0 sc=- cs=-
	local -a args
	mapfile -t args < <(wl_args "$wl")
	((j <= c)) || j=$c
	R_STATUS=FAIL R_TPS="" R_LAT="" R_TX="" R_CPU="" R_RSS="" R_PG="" R_CL="" R_OTHER="" R_SC="" R_CS="" R_ERR=""
	if [[ $t != direct ]]; then
		pid=${T_PID[$t]:-}
		if [[ -z $pid ]] || ! alive "$pid"; then
			R_ERR="$t is not running"
			return 0
		fi
		if ((PERF)); then
			perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$logf.perf" >/dev/null 2>&1 </dev/null &
			PERF_PID=$!
			sleep 0.3
		fi
		echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true # reset VmHWM: peak RSS of this run
		t0=$(proc_ticks "$pid")
	fi
	{
		printf '# %s\n' "$(date -u +%FT%TZ) target=$t workload=$wl clients=$c jobs=$j"
		printf '# pgbench -h 127.0.0.1 -p %s -U bench -n -T %s -c %s -j %s %s bench\n' "${T_PORT[$t]}" "$dur" "$c" "$j" "${args[*]}"
	} >"$logf"
	pg0=$(tree_ticks "$PG_PID")
	read -r hb0 ht0 <<<"$(host_ticks)"
	# pgbench runs under a bash that reports its reaped child's CPU (cutime, cstime) when it ends
	timeout --foreground -k 10 $((dur + 120)) bash -c '"$@"; rc=$?; read -r s </proc/$$/stat; echo "CHILDSTAT $s"; exit $rc' \
		pgbench-run "$PG_BIN/pgbench" -h 127.0.0.1 -p "${T_PORT[$t]}" -U bench -n \
		-T "$dur" -c "$c" -j "$j" "${args[@]}" bench >>"$logf" 2>&1 </dev/null || rc=$?
	read -r hb1 ht1 <<<"$(host_ticks)"
	if [[ -n $pid ]]; then
		t1=$(proc_ticks "$pid")
		R_RSS=$(proc_hwm_kb "$pid")
	fi
	if [[ -n $PERF_PID ]]; then
		stop_pid "$PERF_PID" INT 5
		PERF_PID=""
		read -r sc cs <<<"$(awk -F, '$3 == "raw_syscalls:sys_enter" {sc = $1} $3 == "context-switches" {cs = $1}
			END {print (sc ~ /^[0-9]+$/ ? sc : "-"), (cs ~ /^[0-9]+$/ ? cs : "-")}' "$logf.perf" 2>/dev/null || echo "- -")"
	fi
	if [[ $t == direct ]]; then sleep 0.5; fi # the backends that exited: reaped into the postmaster's cutime
	pg1=$(tree_ticks "$PG_PID")
	vals=$(awk '
		/^number of transactions actually processed:/ {tx = $6}
		/^number of failed transactions:/ {failed = $5}
		/^latency average = / {lat = $4}
		/^tps = .*(without initial connection time|excluding connections establishing)/ {tps = $3}
		/^CHILDSTAT / {sub(/^.*\) /, ""); cl = $14 + $15; next}
		/aborted/ {aborted = 1}
		END {printf "%s %s %s %s %d %d\n", (tps == "" ? "-" : tps), (lat == "" ? "-" : lat), (tx == "" ? 0 : tx),
			(failed == "" ? 0 : failed), aborted, cl}' "$logf")
	read -r R_TPS R_LAT R_TX failed aborted cl <<<"$vals"
	[[ $R_TPS != - ]] || R_TPS=""
	[[ $R_LAT != - ]] || R_LAT=""
	if ((rc == 124 || rc == 137)); then
		R_ERR="pgbench did not finish within $((dur + 120))s"
	elif ((rc != 0 || aborted)) || [[ -z $R_TPS ]] || ! is_uint "$failed" || ((failed > 0)); then
		R_ERR=$(grep -v -e '^#' -e '^CHILDSTAT ' "$logf" | grep -m 1 -E 'error|ERROR|FATAL|aborted|could not|failed: [1-9]|server closed' || true)
		[[ -n $R_ERR ]] || R_ERR="pgbench exited with status $rc (failed transactions: $failed)"
	fi
	if [[ -n $pid ]] && ! alive "$pid"; then R_ERR="$t (pid $pid) died during the run${R_ERR:+; $R_ERR}"; fi
	if ((R_TX > 0)); then
		# microseconds of CPU per transaction: ticks / HZ * 1e6 / transactions
		if [[ -n $t0 && -n $t1 ]]; then R_CPU=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v tx="$R_TX" 'BEGIN {printf "%.1f", d / hz * 1e6 / tx}'); fi
		R_PG=$(awk -v d=$((pg1 - pg0)) -v hz="$HZ" -v tx="$R_TX" 'BEGIN {printf "%.1f", d / hz * 1e6 / tx}')
		R_CL=$(awk -v d="$cl" -v hz="$HZ" -v tx="$R_TX" 'BEGIN {printf "%.1f", d / hz * 1e6 / tx}')
		if [[ $sc != - ]]; then R_SC=$(awk -v a="$sc" -v n="$R_TX" 'BEGIN {printf "%.2f", a / n}'); fi
		if [[ $cs != - ]]; then R_CS=$(awk -v a="$cs" -v n="$R_TX" 'BEGIN {printf "%.3f", a / n}'); fi
	fi
	R_OTHER=$(awk -v db=$((hb1 - hb0)) -v dt=$((ht1 - ht0)) -v d=$(((${t1:-0} - ${t0:-0}) + (pg1 - pg0) + cl)) \
		'BEGIN {o = (dt > 0 ? 100 * (db - d) / dt : 0); if (o < 0) o = 0; printf "%.0f", o}')
	if [[ -z $R_ERR ]]; then R_STATUS=ok; fi
	return 0
}

# ------------------------------------------------------------------ aggregation
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { # workload clients target column -> values of the ok rounds (runs.tsv)
	awk -F'\t' -v w="$1" -v c="$2" -v t="$3" -v k="$4" \
		'NR > 1 && $1 == w && $2 == c && $4 == t && $5 == "ok" && $k != "" {print $k}' "$RUNS"
}
fmt() { if [[ -z $2 ]]; then echo "-"; else awk -v f="$1" -v v="$2" 'BEGIN {printf f "\n", v}'; fi; }
ratio() { if [[ -z $1 || -z $2 ]]; then echo "-"; else awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f\n", a / b; else print "-"}'; fi; }
md_cell() { local s=${1//|/\\|}; s=${s//$'\t'/ }; printf '%s' "${s:0:160}"; }

# ------------------------------------------------------------------ main
main() {
	local quick=${QUICK:-0} idle=0 a
	# libpq settings of the caller must not leak into psql/pgbench (everything is explicit)
	unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
		PGSSLMODE PGOPTIONS PGAPPNAME PGTARGETSESSIONATTRS PGCONNECT_TIMEOUT PGREQUIRESSL PGGSSENCMODE
	for a in "$@"; do
		case $a in
		-h | --help) usage; exit 0 ;;
		--quick) quick=1 ;;
		--idle) idle=1 ;;
		*) usage >&2; die "unknown argument: $a" ;;
		esac
	done

	TARGETS=${TARGETS:-direct pgbouncer pgsidecar}
	CLIENTS=${CLIENTS:-8 64 256}
	DURATION=${DURATION:-10}
	if [[ $quick == 1 ]]; then CLIENTS="8 64" DURATION=3; fi
	POOL=${POOL:-16}
	ROUNDS=${ROUNDS:-1}
	SCALE=${SCALE:-10}
	WORKLOADS=${WORKLOADS:-select-simple select-extended select-prepared tpcb-simple}
	WARMUP=${WARMUP:-2}
	START_TIMEOUT=${START_TIMEOUT:-30}
	KEEP=${KEEP:-0}
	MAX_OTHER=${MAX_OTHER:-0}
	RETRIES=${RETRIES:-2}
	PERF=${PERF:-0}
	PGBOUNCER_PREPARED=${PGBOUNCER_PREPARED:-0}
	IDLE_COUNTS=${IDLE_COUNTS:-1000 5000 10000}
	IDLE_DIRECT_MAX=${IDLE_DIRECT_MAX:-1000}
	IDLE_QUERY=${IDLE_QUERY:-1}
	PGB_PREP=0
	read -r -a PROXY_EXTRA <<<"${PROXY_ARGS:-}"
	local v
	for v in POOL DURATION ROUNDS SCALE WARMUP START_TIMEOUT MAX_OTHER RETRIES PERF PGBOUNCER_PREPARED IDLE_DIRECT_MAX IDLE_QUERY; do
		is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
	done
	((POOL > 0 && DURATION > 0 && ROUNDS > 0 && SCALE > 0 && START_TIMEOUT > 0)) ||
		die "POOL, DURATION, ROUNDS, SCALE and START_TIMEOUT must be > 0"
	local -a CLIENT_LIST WL_LIST TARGET_LIST IDLE_LIST=()
	read -r -a CLIENT_LIST <<<"$CLIENTS"
	if ((idle)); then read -r -a IDLE_LIST <<<"$IDLE_COUNTS"; fi
	read -r -a WL_LIST <<<"$WORKLOADS"
	read -r -a TARGET_LIST <<<"$TARGETS"
	((${#CLIENT_LIST[@]} > 0)) || die "CLIENTS is empty"
	((${#WL_LIST[@]} > 0)) || die "WORKLOADS is empty"
	((${#TARGET_LIST[@]} > 0)) || die "TARGETS is empty"
	local c w t maxc=0
	for c in "${CLIENT_LIST[@]}"; do
		if ! is_uint "$c" || ((c < 1 || c > 1000)); then
			die "client counts must be integers 1..1000 (max_client_conn 1000), got '$c'"
		fi
		((c <= maxc)) || maxc=$c
	done
	local maxidle=0 directidle=0
	for c in "${IDLE_LIST[@]}"; do
		if ! is_uint "$c" || ((c < 1 || c > 100000)); then die "idle counts must be integers 1..100000, got '$c'"; fi
		((c <= maxidle)) || maxidle=$c
		((c > IDLE_DIRECT_MAX || c <= directidle)) || directidle=$c
	done
	if ((idle)); then
		((${#IDLE_LIST[@]} > 0)) || die "IDLE_COUNTS is empty"
		maxc=$maxidle
	fi
	MAXCLIENTS=$((maxc + 100)) # max_client_conn of both proxies
	for w in "${WL_LIST[@]}"; do
		wl_args "$w" >/dev/null || die "unknown workload '$w' (SCRIPT-MODE; SCRIPT: select, tpcb, simple-update; MODE: simple, extended, prepared)"
	done
	for t in "${TARGET_LIST[@]}"; do
		case $t in direct | pgbouncer | pgsidecar) ;; *) die "unknown target '$t' (direct, pgbouncer, pgsidecar)" ;; esac
	done

	# tools
	for v in awk sed grep sort timeout mktemp getconf; do have "$v" || die "required tool '$v' not found"; done
	HZ=$(getconf CLK_TCK)
	NCPU=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
	JOBS=${JOBS:-$NCPU}
	if ! is_uint "$JOBS" || ((JOBS < 1)); then die "JOBS must be a positive integer, got '$JOBS'"; fi
	if [[ -z ${PG_BIN:-} ]]; then
		if have pg_config; then PG_BIN=$(pg_config --bindir 2>/dev/null || true); fi
		if [[ ! -x ${PG_BIN:-}/initdb ]]; then
			PG_BIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
		fi
	fi
	for v in initdb postgres pg_isready psql pgbench; do
		[[ -x $PG_BIN/$v ]] || die "PostgreSQL binary '$v' not found in '$PG_BIN' (set PG_BIN)"
	done
	local PG_VERSION PGB_VERSION="" PROXY_DESC=""
	PG_VERSION=$("$PG_BIN/postgres" --version | sed -E 's/^postgres \(PostgreSQL\) /PostgreSQL /')

	if [[ -z ${PGBOUNCER_BIN:-} ]]; then
		PGBOUNCER_BIN=$(command -v pgbouncer 2>/dev/null || true)
		if [[ -z $PGBOUNCER_BIN && -x /usr/sbin/pgbouncer ]]; then PGBOUNCER_BIN=/usr/sbin/pgbouncer; fi
	fi
	if [[ -n $PGBOUNCER_BIN && -x $PGBOUNCER_BIN ]]; then
		PGB_VERSION=$("$PGBOUNCER_BIN" --version 2>/dev/null | head -n 1 || true)
		if ((PGBOUNCER_PREPARED > 0)); then
			if [[ $PGB_VERSION =~ ([0-9]+)\.([0-9]+) ]] && ((BASH_REMATCH[1] * 100 + BASH_REMATCH[2] >= 121)); then
				PGB_PREP=1
			else
				NOTES+=("PGBOUNCER_PREPARED ignored: ${PGB_VERSION:-this PgBouncer} has no max_prepared_statements (needs 1.21 or later)")
			fi
		fi
	else
		PGBOUNCER_BIN=""
	fi
	if ((PERF)) && ! ((idle)); then
		have perf || die "PERF=1 needs perf (Debian: apt-get install linux-perf)"
		perf stat -x, -e raw_syscalls:sys_enter,context-switches -o /dev/null -- true >/dev/null 2>&1 ||
			die "PERF=1: 'perf stat -e raw_syscalls:sys_enter,context-switches' does not work here (perf_event_paranoid?)"
	fi
	if ((idle)); then
		PY=$(command -v python3 2>/dev/null || true)
		[[ -n $PY ]] || die "--idle needs python3"
		[[ -f $SCRIPT_DIR/idle-conns.py ]] || die "--idle needs $SCRIPT_DIR/idle-conns.py"
	fi
	local -a ACTIVE=()
	for t in "${TARGET_LIST[@]}"; do
		case $t in
		direct) ACTIVE+=(direct) ;;
		pgbouncer)
			if [[ -n $PGBOUNCER_BIN ]]; then
				ACTIVE+=(pgbouncer)
			else
				NOTES+=("pgbouncer skipped: not installed (no pgbouncer in PATH or /usr/sbin; apt-get install pgbouncer, or set PGBOUNCER_BIN)")
			fi
			;;
		pgsidecar)
			PROXY_BIN=${PROXY_BIN:-$REPO_ROOT/bin/proxy}
			if [[ -f $PROXY_BIN && -x $PROXY_BIN ]]; then
				PROXY_BIN=$(cd -- "$(dirname -- "$PROXY_BIN")" && pwd)/$(basename -- "$PROXY_BIN")
				ACTIVE+=(pgsidecar)
			else
				NOTES+=("pgsidecar skipped: no executable PROXY_BIN '$PROXY_BIN' (build it first: make build)")
			fi
			;;
		esac
	done
	((${#ACTIVE[@]} > 0)) || die "no target left to run"

	# privileges: postgres and pgbouncer refuse to run as root
	if ((EUID == 0)); then
		have setpriv || die "running as root needs setpriv (util-linux) to drop privileges"
		if ! id -u "$OS_USER" >/dev/null 2>&1; then
			log "creating system user $OS_USER to run PostgreSQL and PgBouncer"
			useradd --system --no-create-home --shell /usr/sbin/nologin "$OS_USER" || die "useradd $OS_USER failed"
		fi
		AS_USER=(setpriv --reuid="$OS_USER" --regid="$(id -g "$OS_USER")" --init-groups --)
	fi
	if [[ -n ${PGBOUNCER_BIN:-} ]] && ((${#AS_USER[@]})) && [[ " ${ACTIVE[*]} " == *" pgbouncer "* ]]; then
		"${AS_USER[@]}" test -x "$PGBOUNCER_BIN" || die "user $OS_USER cannot run $PGBOUNCER_BIN"
	fi

	# descriptors: a proxy holds one per client and one per server connection
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	local nofile
	nofile=$(ulimit -n)
	if [[ $nofile != unlimited ]] && ((nofile < maxc + 2 * POOL + 100)); then
		die "open-files limit $nofile is too low for $maxc clients (raise it: ulimit -n)"
	fi

	if have setsid; then SETSID=(setsid); fi

	# directories
	if [[ -n ${OUT_DIR:-} ]]; then
		mkdir -p -- "$OUT_DIR" || die "cannot create OUT_DIR $OUT_DIR"
		OUT_DIR=$(cd -- "$OUT_DIR" && pwd)
	else
		OUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgsidecar-bench.out.XXXXXX")
	fi
	mkdir -p -- "$OUT_DIR/runs"
	RUNS=$OUT_DIR/runs.tsv
	trap cleanup EXIT
	trap 'log "interrupted (SIGINT): stopping what this script started"; exit 130' INT
	trap 'log "terminated (SIGTERM): stopping what this script started"; exit 143' TERM
	trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR
	TMPD=$(mktemp -d "${TMPDIR:-/tmp}/pgsidecar-bench.XXXXXX")
	chmod 755 -- "$TMPD"
	if ((${#AS_USER[@]})) && ! "${AS_USER[@]}" test -x "$TMPD"; then
		die "user $OS_USER cannot enter $TMPD (set TMPDIR to a directory it can reach)"
	fi

	# PostgreSQL
	local maxconn=400 need direct=$maxc
	if ((idle)); then direct=$directidle; fi
	need=$((direct + 2 * POOL + 20))
	if ((need > maxconn)); then
		maxconn=$need
		NOTES+=("max_connections raised to $maxconn for $direct direct clients")
	fi
	start_postgres "$maxconn"

	# proxies
	local -a TARGETS_RUN=()
	for t in "${ACTIVE[@]}"; do
		if [[ $t == direct ]]; then TARGETS_RUN+=(direct); continue; fi
		if start_target "$t"; then
			TARGETS_RUN+=("$t")
		else
			log "$START_ERR"
			NOTES+=("$t skipped: $START_ERR")
		fi
	done
	((${#TARGETS_RUN[@]} > 0)) || die "no target could be started"
	if [[ -n ${T_PID[pgsidecar]:-} ]]; then PROXY_DESC=$(cat "$OUT_DIR/pgsidecar.command"); fi
	if ((idle)); then
		run_idle
		return 0
	fi

	# warm-up
	if ((WARMUP > 0)); then
		for t in "${TARGETS_RUN[@]}"; do
			run_pgbench "$t" select-simple 8 "$WARMUP" "$OUT_DIR/runs/warmup-$t.log"
			if [[ $R_STATUS != ok ]]; then
				log "warm-up on $t failed: $R_ERR"
				NOTES+=("warm-up on $t failed: $R_ERR")
			fi
		done
	fi

	# interleaved runs
	local total=0 n=0 r logf attempt disturbed=0
	for w in "${WL_LIST[@]}"; do
		for t in "${TARGETS_RUN[@]}"; do
			if skip_run "$t" "$w"; then
				# PgBouncer before 1.21 (Debian 12 ships 1.18) cannot serve named prepared
				# statements in transaction mode; 1.21+ can with max_prepared_statements.
				[[ -n ${PREP_NOTE:-} ]] || NOTES+=("pgbouncer skipped for prepared workloads: it needs max_prepared_statements (PgBouncer 1.21 or later; set PGBOUNCER_PREPARED=N)")
				PREP_NOTE=1
			else
				total=$((total + ${#CLIENT_LIST[@]} * ROUNDS))
			fi
		done
	done
	log "benchmark: $total runs of ${DURATION}s (about $((total * (DURATION + 2) / 60 + 1)) min); logs in $OUT_DIR"
	printf '%s\t' workload clients round target status tps lat_ms txns proxy_cpu_us_per_tx pg_cpu_us_per_tx \
		pgbench_cpu_us_per_tx peak_rss_kb other_pct attempts proxy_syscalls_per_tx proxy_cswitches_per_tx >"$RUNS"
	printf 'error\n' >>"$RUNS"
	for w in "${WL_LIST[@]}"; do
		for c in "${CLIENT_LIST[@]}"; do
			for ((r = 1; r <= ROUNDS; r++)); do
				for t in "${TARGETS_RUN[@]}"; do
					if skip_run "$t" "$w"; then continue; fi
					n=$((n + 1))
					logf=$OUT_DIR/runs/$w-c$c-r$r-$t.log
					for ((attempt = 1; ; attempt++)); do
						alive "$PG_PID" || die "PostgreSQL (pid $PG_PID) died; its log:$(tail_log "$OUT_DIR/postgres.log")"
						if [[ $t != direct && -z ${T_DEAD[$t]:-} ]] && { [[ -z ${T_PID[$t]:-} ]] || ! alive "${T_PID[$t]}"; }; then
							log "$t is not running: restarting it"
							stop_target "$t"
							if start_target "$t"; then
								NOTES+=("$t was restarted before $w clients=$c round $r (it had died)")
							else
								log "$START_ERR"
								NOTES+=("$t could not be restarted (its remaining runs FAIL): $START_ERR")
								T_DEAD[$t]=1
							fi
						fi
						if wl_writes "$w"; then maintenance; fi
						run_pgbench "$t" "$w" "$c" "$DURATION" "$logf"
						if [[ $R_STATUS == ok ]]; then
							log "[$n/$total] $w c=$c r$r $t: $(fmt %.0f "$R_TPS") tps, $(fmt %.3f "$R_LAT") ms, CPU µs/tx: proxy $(fmt %.1f "$R_CPU"), PG $(fmt %.1f "$R_PG"), pgbench $(fmt %.1f "$R_CL"); other load ${R_OTHER}%"
						else
							log "[$n/$total] $w c=$c r$r $t: FAIL: $R_ERR (log $logf)"
						fi
						if [[ $R_STATUS != ok ]] || ((MAX_OTHER == 0 || R_OTHER <= MAX_OTHER)); then break; fi
						if ((attempt > RETRIES)); then disturbed=$((disturbed + 1)); break; fi
						log "  processes outside the benchmark used ${R_OTHER}% of the host CPU (> MAX_OTHER=$MAX_OTHER): repeating in 5s"
						sleep 5
					done
					printf '%s\t' "$w" "$c" "$r" "$t" "$R_STATUS" "$R_TPS" "$R_LAT" "$R_TX" "$R_CPU" "$R_PG" "$R_CL" "$R_RSS" \
						"$R_OTHER" "$attempt" "$R_SC" "$R_CS" >>"$RUNS"
					printf '%s\n' "${R_ERR//$'\t'/ }" >>"$RUNS"
				done
			done
		done
	done
	if ((disturbed > 0)); then
		NOTES+=("$disturbed runs had more than ${MAX_OTHER}% foreign CPU load after $RETRIES repeats ('other %'): those rows are disturbed")
	fi

	# table
	local res=$OUT_DIR/results.md cpu_model params tps lat cpu pg cl rss other nfail err note tmin tmax perfh="" perfs="" perfc
	local -A TPS=()
	if ((PERF)); then perfh=" proxy syscalls/tx | proxy ctx switches/tx |" perfs="--:|--:|"; fi
	cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
	params="targets ${TARGETS_RUN[*]}; workloads ${WL_LIST[*]}; clients ${CLIENT_LIST[*]}; pool $POOL; ${DURATION}s x $ROUNDS round(s); scale $SCALE; pgbench -j min($JOBS, clients)"
	{
		echo "pgsidecar bench $(date -u +'%Y-%m-%d %H:%M UTC') | CPU: ${cpu_model:-unknown} | nproc $NCPU | $PG_VERSION | ${PGB_VERSION:-PgBouncer: not installed} | $params"
		echo
		echo "| workload | clients | target | TPS$( ((ROUNDS > 1)) && echo " (min-max)") | latency ms | proxy CPU µs/tx | PG CPU µs/tx | pgbench CPU µs/tx | proxy peak RSS MiB |$perfh other % | vs pgbouncer | vs direct | note |"
		echo "|---|--:|---|--:|--:|--:|--:|--:|--:|$perfs--:|--:|--:|---|"
		for w in "${WL_LIST[@]}"; do
			for c in "${CLIENT_LIST[@]}"; do
				TPS=()
				for t in "${TARGETS_RUN[@]}"; do TPS[$t]=$(col "$w" "$c" "$t" 6 | median); done
				for t in "${TARGETS_RUN[@]}"; do
					perfc=""
					if ((PERF)); then perfc=" - | - |"; fi
					if skip_run "$t" "$w"; then
						printf '| %s | %s | %s | skipped | - | - | - | - | - |%s - | - | - | see notes |\n' "$w" "$c" "$t" "$perfc"
						continue
					fi
					nfail=$(awk -F'\t' -v w="$w" -v c="$c" -v t="$t" 'NR > 1 && $1 == w && $2 == c && $4 == t && $5 != "ok" {n++} END {print n + 0}' "$RUNS")
					err=$(awk -F'\t' -v w="$w" -v c="$c" -v t="$t" 'NR > 1 && $1 == w && $2 == c && $4 == t && $5 != "ok" {print $17; exit}' "$RUNS")
					note=""
					if ((nfail > 0)); then note="FAIL ($nfail/$ROUNDS): $(md_cell "$err")"; fi
					if [[ -z ${TPS[$t]} ]]; then
						printf '| %s | %s | %s | FAIL | - | - | - | - | - |%s - | - | - | %s |\n' "$w" "$c" "$t" "$perfc" "$note"
						continue
					fi
					tps=$(fmt %.0f "${TPS[$t]}")
					if ((ROUNDS > 1)); then
						tmin=$(col "$w" "$c" "$t" 6 | sort -g | head -n 1)
						tmax=$(col "$w" "$c" "$t" 6 | sort -g | tail -n 1)
						tps+=" ($(fmt %.0f "$tmin")-$(fmt %.0f "$tmax"))"
					fi
					lat=$(col "$w" "$c" "$t" 7 | median)
					cpu=$(col "$w" "$c" "$t" 9 | median)
					pg=$(col "$w" "$c" "$t" 10 | median)
					cl=$(col "$w" "$c" "$t" 11 | median)
					rss=$(col "$w" "$c" "$t" 12 | sort -g | tail -n 1)
					[[ -z $rss ]] || rss=$(awk -v k="$rss" 'BEGIN {print k / 1024}')
					other=$(col "$w" "$c" "$t" 13 | sort -g | tail -n 1)
					if ((PERF)); then
						perfc=" $(fmt %.1f "$(col "$w" "$c" "$t" 15 | median)") | $(fmt %.2f "$(col "$w" "$c" "$t" 16 | median)") |"
					fi
					printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |%s %s | %s | %s | %s |\n' "$w" "$c" "$t" \
						"$tps" "$(fmt %.3f "$lat")" \
						"$(fmt %.1f "$cpu")" "$(fmt %.1f "$pg")" "$(fmt %.1f "$cl")" "$(fmt %.1f "$rss")" "$perfc" "$(fmt %.0f "$other")" \
						"$(ratio "${TPS[$t]}" "${TPS[pgbouncer]:-}")" "$(ratio "${TPS[$t]}" "${TPS[direct]:-}")" "$note"
				done
			done
		done
		echo
		echo "TPS: median over the rounds$( ((ROUNDS > 1)) && echo " (range)"). CPU: microseconds per transaction (median), over the whole pgbench run."
		echo "other %: host CPU used outside the benchmark (max over the rounds); a high value means a disturbed row."
		footer
	} >"$res"
	cat -- "$res"
	echo
	echo "Logs: $OUT_DIR"
	log "results: $res; per-run data: $RUNS; pgbench output: $OUT_DIR/runs/"
	return 0
}

# footer: the commands of the proxies and the notes, under a result table
footer() {
	if [[ -n $PROXY_DESC ]]; then
		echo
		echo "pgsidecar: \`$PROXY_DESC\`"
	fi
	if [[ " ${TARGETS_RUN[*]} " == *" pgbouncer "* ]]; then
		echo "pgbouncer: pool_mode transaction, default_pool_size $POOL, max_client_conn $MAXCLIENTS$( ((PGB_PREP)) && echo ", max_prepared_statements $PGBOUNCER_PREPARED")"
	fi
	if ((${#NOTES[@]} > 0)); then
		echo
		echo "Notes:"
		printf -- '- %s\n' "${NOTES[@]}"
	fi
}

# skip_run target workload -> 0 when the target does not run the workload
skip_run() { [[ $1 == pgbouncer && $2 == *-prepared ]] && ((!PGB_PREP)); }

# run_idle: the --idle mode, for every target and idle count
run_idle() {
	local t n pid out err deadline secs opened alive_s i rss0 pss0 np0 rss1 pss1 np1 orc
	local csv=$OUT_DIR/idle.tsv res=$OUT_DIR/results.md cpu_model
	local -a qarg=()
	((IDLE_QUERY)) || qarg=(--no-query)
	printf 'target\tidle_clients\topened\topen_seconds\trss_before_kb\trss_after_kb\trss_per_client_kb\tpss_before_kb\tpss_after_kb\tpss_per_client_kb\tprocesses\tstill_open\n' >"$csv"
	for t in "${TARGETS_RUN[@]}"; do
		for n in "${IDLE_LIST[@]}"; do
			if [[ $t == direct ]] && ((n > IDLE_DIRECT_MAX)); then
				NOTES+=("direct with $n idle clients skipped (> IDLE_DIRECT_MAX=$IDLE_DIRECT_MAX: one backend process each)")
				continue
			fi
			if [[ $t == direct ]]; then
				pid=$PG_PID
			else # a fresh process for every count
				stop_target "$t"
				if ! start_target "$t"; then
					NOTES+=("$t with $n idle clients: could not be started: $START_ERR")
					continue
				fi
				pid=${T_PID[$t]}
			fi
			sleep 1
			read -r rss0 pss0 np0 <<<"$(mem_tree "$pid")"
			out=$OUT_DIR/runs/idle-$t-$n.out err=$OUT_DIR/runs/idle-$t-$n.err
			log "idle: $t, opening $n connections"
			"$PY" "$SCRIPT_DIR/idle-conns.py" --host 127.0.0.1 --port "${T_PORT[$t]}" --user bench --db bench -n "$n" \
				--concurrency 64 --timeout 60 --hold 900 "${qarg[@]}" >"$out" 2>"$err" </dev/null &
			OPENER_PID=$!
			deadline=$((SECONDS + 60 + n / 50))
			while ! grep -q '^READY' "$out"; do
				if ! alive "$OPENER_PID"; then
					wait "$OPENER_PID" 2>/dev/null || true
					OPENER_PID=""
					die "opening $n idle connections to $t failed:$(tail_log "$err" 5)"
				fi
				((SECONDS < deadline)) || die "opening $n idle connections to $t took more than $((60 + n / 50))s"
				sleep 0.2
			done
			sleep 2
			alive "$pid" || die "$t (pid $pid) died holding $n idle connections"
			read -r rss1 pss1 np1 <<<"$(mem_tree "$pid")"
			orc=0
			kill -TERM "$OPENER_PID" 2>/dev/null || true
			for ((i = 0; i < 300; i++)); do alive "$OPENER_PID" || break; sleep 0.1; done
			if alive "$OPENER_PID"; then kill -KILL "$OPENER_PID" 2>/dev/null || true; fi
			wait "$OPENER_PID" 2>/dev/null || orc=$?
			OPENER_PID=""
			read -r _ opened secs < <(grep -m 1 '^READY' "$out") || true
			alive_s=$(grep -m 1 '^ALIVE' "$out" | cut -d' ' -f2 || true)
			[[ -n $alive_s ]] || alive_s="?"
			if [[ $alive_s != "$n/$n" ]]; then NOTES+=("$t with $n idle clients: only $alive_s connections still open at the end (opener exit $orc)"); fi
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$n" "${opened:-}" "${secs:-}" "$rss0" "$rss1" \
				"$(awk -v a="$rss0" -v b="$rss1" -v n="$n" 'BEGIN {printf "%.2f", (b - a) / n}')" "$pss0" "$pss1" \
				"$(awk -v a="$pss0" -v b="$pss1" -v n="$n" 'BEGIN {printf "%.2f", (b - a) / n}')" "$np1" "$alive_s" >>"$csv"
			log "idle: $t $n clients: RSS $((rss0 / 1024)) -> $((rss1 / 1024)) MiB, $(awk -v a="$rss0" -v b="$rss1" -v n="$n" 'BEGIN {printf "%.1f", (b - a) / n}') KiB per client"
			if [[ $t == direct ]]; then # wait (bounded) for the backends to go
				for ((i = 0; i < 300; i++)); do
					read -r _ _ np1 <<<"$(mem_tree "$pid")"
					((np1 > np0)) || break
					sleep 0.1
				done
			fi
		done
		if [[ $t != direct ]]; then stop_target "$t"; fi
	done
	cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
	{
		echo "pgsidecar bench --idle $(date -u +'%Y-%m-%d %H:%M UTC') | CPU: ${cpu_model:-unknown} | nproc $NCPU | $PG_VERSION | ${PGB_VERSION:-PgBouncer: not installed} | targets ${TARGETS_RUN[*]}; idle clients ${IDLE_LIST[*]}$( ((IDLE_QUERY)) && echo ", one SELECT 1 each" || echo ", login only")"
		echo
		echo "| target | idle clients | open s | RSS before MiB | RSS after MiB | RSS KiB/client | PSS KiB/client | processes | still open |"
		echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
		awk -F'\t' 'NR > 1 {printf "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %s |\n", $1, $2, $4, $5 / 1024, $6 / 1024, $7, $10, $11, $12}' "$csv"
		echo
		echo "RSS/PSS summed over the target process and its children (direct: postmaster + backends), 2s after the"
		echo "last connection opened, minus the same before; the proxies are restarted for every count."
		footer
	} >"$res"
	cat -- "$res"
	echo
	echo "Logs: $OUT_DIR"
	log "results: $res; per-count data: $csv"
}

main "$@"; exit $?
