#!/usr/bin/env bash
# bench/run.sh - runs the uhmm benchmarks ("make bench") and merges their
# output: bench_floor (kernel-only floors) then bench_uhmm (the figures), both
# from BUILD/bench/, then bench_farmem (far memory over UCX, with its own
# floors) when it was built.  Prints the machine and a table (metric, value, unit,
# floor, ratio), and writes
#   BUILD/bench.json       one JSON object per metric and line:
#                          {"metric": M, "value": V, "unit": U, "floor": F, "ratio": R}
#   BUILD/bench_table.md   the same table in Markdown, for docs/performance.md
# ratio = value / floor (null where either is unknown).  The whole run stays
# under 5 minutes: each program has a time budget (BENCH_BUDGET_S) and each
# measurement group its own deadline; a group that fails or runs out of time
# reports null for its metrics and says why in the notes.
# Usage: bash bench/run.sh [BUILD]        (default BUILD=build)
set -u
build=${1:-build}
bindir="$build/bench"
metrics=(fault_to_ram_p50 fault_to_ram_p99 exclusive_revoke_p50 exclusive_revoke_p99
	migrate_to_dev_gbps migrate_to_sys_gbps fault_to_ram_seq_gbps coherent_migrate_gbps
	range_fault_mpages_s notifier_invalidate_ns_100k migrate_scaling
	fault_to_ram_free_p50 exclusive_revoke_free_p50 fault_to_ram_seq_free_gbps self_fault_p50
	owned_fault_to_ram_p50 owned_migrate_to_dev_gbps owned_migrate_to_sys_gbps
	concurrent_fault_speedup thp_migrate_gbps
	farmem_migrate_gbps farmem_fault_p50 farmem_seq_gbps farmem_fault_inline_p50
	farmem_migrate_gbps_thp farmem_seq_gbps_thp
	farmem_migrate_gbps_tcp farmem_fault_p50_tcp farmem_seq_gbps_tcp)

for p in bench_floor bench_uhmm; do
	if [ ! -x "$bindir/$p" ]; then
		echo "bench/run.sh: $bindir/$p is missing (run 'make bench')" >&2
		exit 1
	fi
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)
machine="$(nproc) CPUs ($cpu), $mem RAM, Linux $(uname -r), THP ${thp:-unknown}"
echo "machine: $machine"
placement=${BENCH_PLACEMENT:-same}
case $placement in
split) where="measuring thread on CPU 0, helper threads on CPU 1" ;;
free) where="measuring thread on CPU 0, helper threads unpinned" ;;
*) where="every thread on CPU 0" ;;
esac
echo "placement: BENCH_PLACEMENT=$placement: $where"
machine="$machine; placement $placement ($where)"

rm -f "$build"/bench_*.jsonl "$build"/bench_*_notes.txt "$build"/bench_*.dat "$build/bench.json"
start=$(date +%s)
# timeout signals the whole process group, so group children go too.
BENCH_BUDGET_S=${BENCH_FLOOR_BUDGET_S:-60} timeout -k 5 75 "$bindir/bench_floor" "$build"
rc_floor=$?
BENCH_BUDGET_S=${BENCH_UHMM_BUDGET_S:-420} timeout -k 5 435 "$bindir/bench_uhmm" "$build"
rc_uhmm=$?
rc_farmem=0
if [ -x "$bindir/bench_farmem" ]; then
	BENCH_BUDGET_S=${BENCH_FARMEM_BUDGET_S:-200} timeout -k 5 215 "$bindir/bench_farmem" "$build"
	rc_farmem=$?
fi
[ $rc_floor -eq 0 ] || echo "bench/run.sh: bench_floor exited with status $rc_floor"
[ $rc_uhmm -eq 0 ] || echo "bench/run.sh: bench_uhmm exited with status $rc_uhmm"
[ $rc_farmem -eq 0 ] || echo "bench/run.sh: bench_farmem exited with status $rc_farmem"

# Merge: a metric's value comes from bench_uhmm, its floor from whichever
# line carries one (bench_floor, or bench_uhmm for the self-floored ones).
cat "$build/bench_floor.jsonl" "$build/bench_uhmm.jsonl" "$build/bench_farmem.jsonl" 2>/dev/null |
	sed -E -e 's/^\{"metric": "([^"]*)", "value": ([^,]*), /\1\t\2\t/' \
		-e 's/"unit": "([^"]*)", "floor": ([^,]*), "ratio": ([^}]*)\}$/\1\t\2/' |
	awk -F'\t' -v order="${metrics[*]}" -v json="$build/bench.json" -v md="$build/bench_table.md" \
		-v machine="$machine" '
	NF == 4 {
		if ($2 != "null") val[$1] = $2
		if ($4 != "null") flo[$1] = $4
		unit[$1] = $3
	}
	function fmt(x) { return x == "null" ? "-" : sprintf("%.4g", x) }
	END {
		n = split(order, m, " ")
		printf "\n%-28s %12s %-9s %12s %9s\n", "metric", "value", "unit", "floor", "ratio"
		printf "| metric | value | unit | floor | ratio |\n|---|---:|---|---:|---:|\n" > md
		nulls = 0
		for (i = 1; i <= n; i++) {
			k = m[i]
			v = (k in val) ? val[k] : "null"
			f = (k in flo) ? flo[k] : "null"
			u = (k in unit) ? unit[k] : ""
			r = (v != "null" && f != "null" && f + 0 != 0) ? sprintf("%.6g", v / f) : "null"
			nulls += v == "null"
			printf "{\"metric\": \"%s\", \"value\": %s, \"unit\": \"%s\", \"floor\": %s, \"ratio\": %s}\n", \
				k, v, u, f, r > json
			printf "%-28s %12s %-9s %12s %9s\n", k, fmt(v), u, fmt(f), fmt(r)
			printf "| %s | %s | %s | %s | %s |\n", k, fmt(v), u, fmt(f), fmt(r) > md
		}
		printf "\nMachine: %s\n", machine > md
		printf "\nratio = value / floor: lower is better for latencies, the notifier cost and\n"
		printf "migrate_scaling (flat = 1.0); higher is better for GB/s and Mpages/s.\n"
		if (nulls)
			printf "%d metric(s) not measured (null): see the notes.\n", nulls
	}'

notes=$(cat "$build/bench_floor_notes.txt" "$build/bench_uhmm_notes.txt" \
	"$build/bench_farmem_notes.txt" 2>/dev/null)
if [ -n "$notes" ]; then
	echo
	echo "notes:"
	printf '%s\n' "$notes" | sed 's/^/  - /'
	{ echo; echo "Notes:"; echo; printf '%s\n' "$notes" | sed 's/^/- /'; } >> "$build/bench_table.md"
fi
echo
echo "wrote $build/bench.json and $build/bench_table.md in $(( $(date +%s) - start )) s"
