#!/usr/bin/env bash
# Runs every test program given (default: build/tests/*) and prints each
# PASS/FAIL/SKIP line, then the summary as the last line:
#   N passed, N failed, N skipped
# Exits non-zero if anything failed or no test ran.
#
# Each program is also bounded as a whole (UHMM_PROG_TIMEOUT seconds, default
# 600, times UHMM_TEST_TIMEOUT_SCALE): the harness kills a hung case itself,
# this catches a hung harness.  Either way every thread's stack is printed
# before the kill.  Sanitizer reports are symbolized here, after the fact
# (the runtime symbolizing in-process re-enters the program, see
# docs/design.md): tools/symbolize.sh turns module+offset into lines.
set -u
here=$(cd "$(dirname "$0")" && pwd)
progs=("$@")
if [ ${#progs[@]} -eq 0 ]; then
	progs=(build/tests/test_*)
fi
scale=${UHMM_TEST_TIMEOUT_SCALE:-1}
[ "$scale" -ge 1 ] 2>/dev/null || scale=1
prog_limit=$(( ${UHMM_PROG_TIMEOUT:-600} * scale ))

dump_tree() {
	# every process of the tree rooted at $1, deepest first
	local p kids
	kids=$(cat /proc/"$1"/task/*/children 2>/dev/null)
	for p in $kids; do dump_tree "$p"; done
	echo "    stack| === process $1 ($(tr '\0' ' ' < /proc/"$1"/cmdline 2>/dev/null))"
	if command -v gdb >/dev/null 2>&1; then
		timeout 120 gdb -nx -batch -p "$1" -ex 'set pagination off' \
			-ex 'thread apply all bt' 2>&1 | grep -v '^\[New LWP' | sed 's/^/    stack| /'
	else
		for t in /proc/"$1"/task/*; do
			echo "    stack| thread ${t##*/} $(cat "$t"/comm) wchan=$(cat "$t"/wchan)"
			sed 's/^/    stack|   /' "$t"/stack 2>/dev/null
		done
	fi
}

run_bounded() {
	local out=$1; shift
	"$@" >"$out" 2>&1 &
	local pid=$! waited=0
	while kill -0 "$pid" 2>/dev/null; do
		if [ "$waited" -ge $((prog_limit * 5)) ]; then
			echo "FAIL $(basename "${@: -1}"): whole program timed out after ${prog_limit}s" >>"$out"
			dump_tree "$pid" >>"$out" 2>&1
			pkill -KILL -P "$pid" 2>/dev/null
			kill -KILL "$pid" 2>/dev/null
			wait "$pid" 2>/dev/null
			return 124
		fi
		sleep 0.2
		waited=$((waited + 1))
	done
	wait "$pid"
}

pass=0 fail=0 skip=0
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for p in "${progs[@]}"; do
	# VAR=value@prog: a variant, prog run with VAR=value, its cases named case[value]
	variant= venv=
	if [[ $p == *=*@* ]]; then
		venv=${p%%@*}; p=${p#*@}; variant=${venv#*=}
	fi
	[ -x "$p" ] || continue
	if [ -n "$venv" ]; then
		run_bounded "$tmp" env "$venv" "$p"
	else
		run_bounded "$tmp" "$p"
	fi
	rc=$?
	if [ -n "$variant" ]; then
		sed -i -E "s/^(PASS|FAIL|SKIP) ([^ :]+)/\1 \2[$variant]/" "$tmp"
	fi
	if grep -q -E '(WARNING|ERROR): (ThreadSanitizer|AddressSanitizer|LeakSanitizer)|runtime error:' "$tmp"; then
		bash "$here/../tools/symbolize.sh" "$(dirname "$p")" "$(dirname "$(dirname "$p")")" <"$tmp" >"$tmp.sym" && mv "$tmp.sym" "$tmp"
	fi
	out=$(cat "$tmp")
	printf '%s\n' "$out" | grep -E '^(PASS|FAIL|SKIP) ' || true
	np=$(printf '%s\n' "$out" | grep -c '^PASS ')
	nf=$(printf '%s\n' "$out" | grep -c '^FAIL ')
	ns=$(printf '%s\n' "$out" | grep -c '^SKIP ')
	if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
		echo "FAIL $(basename "$p"): exited $rc without a FAIL line"
		printf '%s\n' "$out" | tail -n 20
		nf=1
	fi
	if [ "$nf" -gt 0 ]; then
		# the stacks of a hung case in full, then the rest of the output's tail
		printf '%s\n' "$out" | grep '^    stack|' || true
		printf '%s\n' "$out" | grep -v -E '^(PASS|SKIP) |^    stack\|' | grep -v '^FAIL ' |
			tail -n 60 | sed 's/^/    | /'
	fi
	pass=$((pass + np)); fail=$((fail + nf)); skip=$((skip + ns))
done
echo "${pass} passed, ${fail} failed, ${skip} skipped"
[ "$fail" -eq 0 ] && [ $((pass + skip)) -gt 0 ]
