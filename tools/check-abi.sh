#!/bin/bash
# SPDX-License-Identifier: MIT
# tools/check-abi.sh BUILD_DIR [--update] - the symbols BUILD_DIR/libuhmm.so.0
# exports, with their versions, are exactly those of abi/libuhmm.abi.
#
# The list is regenerated from the built library (nm -D --defined-only
# --with-symbol-versions): one line per exported symbol, sorted, as
# NAME@@VERSION (the default version of NAME), NAME@VERSION (an old version
# kept for old binaries) or plain NAME (unversioned: the libc interposers,
# see src/libuhmm.map).  Version-definition entries (type A) are left out.
# A difference prints the diff and exits 1.  With --update the file is
# rewritten from the library instead (an intended change: review the diff).
set -u
BUILD=${1:?usage: tools/check-abi.sh BUILD_DIR [--update]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIB=$BUILD/libuhmm.so.0
ABI=$ROOT/abi/libuhmm.abi
[ -f "$LIB" ] || { echo "check-abi: $LIB not found (make lib first)"; exit 1; }

have=$(nm -D --defined-only --with-symbol-versions "$LIB" | awk '$2 != "A" { print $3 }' | LC_ALL=C sort -u)
[ -n "$have" ] || { echo "check-abi: no symbols read from $LIB"; exit 1; }

if [ "${2:-}" = "--update" ]; then
	{
		echo "# The ABI of libuhmm.so.0: every exported symbol and its version, sorted"
		echo "# (LC_ALL=C).  Checked by make check-abi (tools/check-abi.sh); regenerate"
		echo "# with tools/check-abi.sh build --update after an intended change."
		echo "$have"
	} >"$ABI"
	echo "abi: wrote $(wc -l <<<"$have") symbols to abi/libuhmm.abi"
	exit 0
fi

[ -f "$ABI" ] || { echo "check-abi: abi/libuhmm.abi missing"; exit 1; }
want=$(grep -v -e '^#' -e '^[[:space:]]*$' "$ABI" | LC_ALL=C sort -u)
if ! d=$(diff -u --label abi/libuhmm.abi --label "$LIB" <(echo "$want") <(echo "$have")); then
	echo "check-abi: the exported symbols of $LIB differ from abi/libuhmm.abi"
	echo "(- only in the file, + only in the library):"
	echo "$d"
	echo "A new function: declare it UHMM_API, list it in the newest node of"
	echo "src/libuhmm.map and add NAME@@VERSION to abi/libuhmm.abi (or run"
	echo "tools/check-abi.sh $BUILD --update and review the diff).  A symbol that"
	echo "disappeared or changed version breaks binaries linked against it."
	exit 1
fi
echo "abi: $(wc -l <<<"$have") symbols match abi/libuhmm.abi"
