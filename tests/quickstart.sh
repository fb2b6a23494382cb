#!/bin/bash
# SPDX-License-Identifier: MIT
# tests/quickstart.sh [FILE.md] - the quick start compiles as it stands and runs.
#
# Extracts the first ```c block of FILE.md (default README.md; after its
# "Quick start" heading if it has one), compiles it
# against include/ and $BUILD/libuhmm.so (BUILD defaults to build; make lib
# first), runs it, and prints
#   PASS quickstart.compiles
# or
#   FAIL quickstart.compiles: reason
# exiting 0 or 1.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MD=${1:-$ROOT/README.md}
BUILD=${BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
CC=${CC:-cc}

fail() {
	echo "FAIL quickstart.compiles: $*"
	exit 1
}

[ -f "$MD" ] || fail "$MD not found"
[ -f "$BUILD/libuhmm.so" ] || fail "$BUILD/libuhmm.so not found (make lib first)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uhmm-quickstart.XXXXXX") || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

# The first fenced block whose info string is c (```c), up to its closing
# fence; if the file has a "Quick start" heading (any level, any case), the
# first such block after it (README.md has a non-compilable usage sketch
# before the quick start).
extract() { # $1: 1 = only after a quick start heading
	awk -v after="$1" '
		/^#+[[:space:]]*[Qq]uick[ -]?[Ss]tart/ { seen = 1 }
		!inblock && (!after || seen) && /^[[:space:]]*```[[:space:]]*c[[:space:]]*$/ { inblock = 1; next }
		inblock && /^[[:space:]]*```/ { exit }
		inblock { print }
	' "$MD"
}
if grep -Eq '^#+[[:space:]]*[Qq]uick[ -]?[Ss]tart' "$MD"; then
	extract 1 >"$tmp/quickstart.c"
else
	extract 0 >"$tmp/quickstart.c"
fi
[ -s "$tmp/quickstart.c" ] || fail "no \`\`\`c block in $MD"
lines=$(wc -l <"$tmp/quickstart.c")

if ! $CC -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Werror -pthread \
	-I"$ROOT/include" -o "$tmp/quickstart" "$tmp/quickstart.c" \
	-L"$BUILD" -luhmm -Wl,-rpath,"$BUILD" >"$tmp/cc.log" 2>&1; then
	sed 's/^/    /' "$tmp/cc.log" | head -n 30
	fail "the $lines-line block of $MD does not compile"
fi

timeout 60 "$tmp/quickstart" >"$tmp/run.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
	sed 's/^/    /' "$tmp/run.log" | tail -n 20
	[ $rc -eq 124 ] && fail "the program did not finish within 60 s"
	fail "the program exited with status $rc"
fi
sed 's/^/    /' "$tmp/run.log"
echo "PASS quickstart.compiles"
