#!/usr/bin/env bash
# Runs every test program given (default: build/tests/*) and prints each
# PASS/FAIL/SKIP line, then the summary as the last line:
#   N passed, N failed, N skipped
# Exits non-zero if anything failed or no test ran.
set -u
progs=("$@")
if [ ${#progs[@]} -eq 0 ]; then
	progs=(build/tests/test_*)
fi
pass=0 fail=0 skip=0
for p in "${progs[@]}"; do
	[ -x "$p" ] || continue
	out=$("$p" 2>&1)
	rc=$?
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
		printf '%s\n' "$out" | grep -v -E '^(PASS|SKIP) ' | grep -v '^FAIL ' | tail -n 40 | sed 's/^/    | /'
	fi
	pass=$((pass + np)); fail=$((fail + nf)); skip=$((skip + ns))
done
echo "${pass} passed, ${fail} failed, ${skip} skipped"
[ "$fail" -eq 0 ] && [ $((pass + skip)) -gt 0 ]
