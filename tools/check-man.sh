#!/bin/bash
# SPDX-License-Identifier: MIT
# tools/check-man.sh BUILD_DIR - every function BUILD_DIR/libuhmm.so.0 exports
# has a man page, and every page formats without a warning.
#
#   - an exported name (nm -D: defined, type T) needs man/man3/NAME.3: a page
#     of its own or a one-line ".so man3/OTHER.3" link to a shared page (the
#     link's target must exist).  The libc interposers (munmap, mmap, mmap64,
#     mremap, mprotect, madvise) are documented in uhmm(7) instead.
#   - every page under man/ is formatted with groff -man -ww (warnings on) and
#     fails on any warning; without groff, man --warnings -l is used.
# Prints one line per problem and exits 1, or
# "man pages: N functions, all documented".
set -u
BUILD=${1:?usage: tools/check-man.sh BUILD_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIB=$BUILD/libuhmm.so.0
[ -f "$LIB" ] || { echo "check-man: $LIB not found (make lib first)"; exit 1; }
command -v nm >/dev/null || { echo "check-man: nm not found (binutils)"; exit 1; }
MAN=$ROOT/man
INTERPOSERS=' munmap mmap mmap64 mremap mprotect madvise '

fail=0
n=0
names=$(nm -D --defined-only "$LIB" | awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' | sort -u)
[ -n "$names" ] || { echo "check-man: $LIB exports no function"; exit 1; }
for f in $names; do
	case "$INTERPOSERS" in *" $f "*) continue ;; esac
	n=$((n + 1))
	page=$MAN/man3/$f.3
	if [ ! -f "$page" ]; then
		echo "missing man page: man/man3/$f.3 ($f is exported by $LIB)"
		fail=1
		continue
	fi
	target=$(sed -n '1s/^\.so[[:space:]]\{1,\}//p' "$page")
	if [ -n "$target" ] && [ ! -f "$MAN/$target" ]; then
		echo "broken man page link: man/man3/$f.3 -> $target"
		fail=1
	fi
done
for f in $INTERPOSERS; do
	if grep -qx "$f" <<<"$names" && ! grep -qw -- "$f" "$MAN/man7/uhmm.7" 2>/dev/null; then
		echo "interposer $f is exported but not described in man/man7/uhmm.7"
		fail=1
	fi
done

# Format every page; warnings (-ww) go to stderr and count as failures.
if command -v groff >/dev/null; then
	fmt() { (cd "$MAN" && { groff -man -Tutf8 -ww -z "$1" >/dev/null; } 2>&1); }
elif command -v man >/dev/null; then
	fmt() { (cd "$MAN" && { MANROFFSEQ='' man --warnings -l "$1" >/dev/null; } 2>&1); }
else
	echo "check-man: neither groff nor man found (apt-get install groff-base man-db)"
	exit 1
fi
shopt -s nullglob
for p in "$MAN"/man3/*.3 "$MAN"/man7/*.7; do
	rel=${p#"$MAN"/}
	out=$(fmt "$rel")
	if [ -n "$out" ]; then
		echo "man/$rel: formatter warnings:"
		# shellcheck disable=SC2001
		sed 's/^/    /' <<<"$out"
		fail=1
	fi
	if ! head -n1 "$p" | grep -q '^\.so ' && ! grep -q '^\.TH ' "$p"; then
		echo "man/$rel: no .TH line"
		fail=1
	fi
done

[ $fail -eq 0 ] || exit 1
echo "man pages: $n functions, all documented"
