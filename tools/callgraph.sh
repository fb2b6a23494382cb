#!/usr/bin/env bash
# Prints the file-level call graph of the library, "caller callee" per line,
# derived from the object files: a file calls another when it has an
# undefined symbol that the other defines.  Usage: tools/callgraph.sh OBJDIR
set -u
dir=${1:-build/obj}
declare -A def
for o in "$dir"/*.o; do
	f=$(basename "$o" .o)
	while read -r sym; do def[$sym]=$f; done < <(nm --defined-only -g "$o" | awk '$2 ~ /[TDBR]/ {print $3}')
done
for o in "$dir"/*.o; do
	f=$(basename "$o" .o)
	nm -u "$o" | awk '{print $2}' | while read -r sym; do
		t=${def[$sym]:-}
		[ -n "$t" ] && [ "$t" != "$f" ] && echo "$f $t"
	done
done | sort -u
