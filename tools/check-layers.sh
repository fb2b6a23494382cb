#!/usr/bin/env bash
# make check-layers: the library's file-level call graph (from the object
# files in OBJDIR: a file calls another when one of its undefined symbols is
# defined there) against the layer table docs/layers.txt.  Fails on a call
# from a lower layer into a higher one, on an object the table does not
# name, and on a public-only layer using an internal (uhmm__) symbol.
# Also reports the largest circle of files within a layer.
set -u
objdir=${1:-build/obj}
table=${2:-docs/layers.txt}
declare -A layer_of public_only def
n=0
declare -A link_only
while read -r name rest; do
	[[ -z $name || $name == \#* ]] && continue
	if [ "$name" = link: ]; then link_only[$rest]=0; continue; fi
	po=0
	if [[ $rest == public-only:* ]]; then po=1; rest=${rest#public-only:}; fi
	name=${name%:}
	for f in $rest; do layer_of[$f]=$n; public_only[$f]=$po; done
	n=$((n + 1))
done < <(sed 's/: */: /' "$table" | sed 's/^\([a-z_]*\) public-only: /\1 public-only:/')
bad=0
for o in "$objdir"/*.o; do
	f=$(basename "$o" .o)
	if [ -z "${layer_of[$f]:-}" ]; then
		echo "check-layers: $f.o is in no layer of $table"; bad=1
	fi
	while read -r s; do def[$s]=$f; done < <(nm --defined-only -g "$o" | awk '$2 ~ /[TDBRV]/ {print $3}')
done
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT
for o in "$objdir"/*.o; do
	f=$(basename "$o" .o)
	while read -r s; do
		t=${def[$s]:-}
		[ -z "$t" ] || [ "$t" = "$f" ] && continue
		echo "$f $t $s" >>"$edges"
	done < <(nm -u "$o" | awk '{print $2}')
done
while read -r f t s; do
	lf=${layer_of[$f]:-} lt=${layer_of[$t]:-}
	[ -z "$lf" ] || [ -z "$lt" ] && continue
	if [ -n "${link_only["$f $t $s"]+x}" ]; then link_only["$f $t $s"]=1; continue; fi
	if [ "$lt" -gt "$lf" ]; then
		echo "check-layers: $f calls up into $t ($s)"; bad=1
	fi
	if [ "${public_only[$f]}" = 1 ] && [[ $s == uhmm__* ]]; then
		echo "check-layers: $f (public-only) uses internal $s of $t"; bad=1
	fi
done <"$edges"
for k in "${!link_only[@]}"; do
	if [ "${link_only[$k]}" = 0 ]; then
		echo "check-layers: link-only reference '$k' of $table does not exist"; bad=1
	fi
done
# strongly connected components of the file graph (for the report)
scc=$(awk '{print $1, $2}' "$edges" | sort -u | python3 -c '
import sys, collections
g = collections.defaultdict(set)
for l in sys.stdin:
    a, b = l.split(); g[a].add(b); g[b]
idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in g[v]:
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 2: out.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in list(g):
    if v not in idx: sc(v)
for comp in out: print(len(comp), " ".join(comp))
')
if [ -n "$scc" ]; then
	echo "$scc" | while read -r k files; do
		echo "check-layers: note: a circle of $k files within a layer: $files"
	done
fi
[ "$bad" -eq 0 ] && echo "check-layers: $(wc -l <"$edges") cross-file references, none upward"
exit "$bad"
