#!/bin/bash
# model/run.sh - verify the Promela model of uhmm's page protocol (model/uhmm.pml)
# with spin: generate the verifier (spin -a), compile pan with gcc, run it for
# each configuration, and exit non-zero on any error.  See docs/model.md.
#
#   bash model/run.sh             safety (-DSAFETY) + non-progress checks; must pass
#   bash model/run.sh --mutant    BUG_SKIP_INVALIDATE: spin must find the violation
#   bash model/run.sh --briefed   the protocol as first briefed (3 deviations): each
#                                 must fail, proving why the model deviates
#   bash model/run.sh --livelock  unbounded device retries: spin must find a
#                                 non-progress cycle (CPU <-> device exclusivity)
#   bash model/run.sh --all       all of the above
# Work files go to $MODEL_BUILD (default build/model).  Needs spin and gcc;
# installs spin with apt-get when it is missing.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PML=$ROOT/model/uhmm.pml
WORK=${MODEL_BUILD:-$ROOT/build/model}
MEMLIM=${MODEL_MEMLIM:-3072}            # MiB per pan run
MODES=()

for a in "$@"; do
	case $a in
	--mutant|--briefed|--livelock) MODES+=("${a#--}") ;;
	--all) MODES=(check mutant briefed livelock) ;;
	-h|--help) sed -n '2,15p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown argument $a" >&2; exit 2 ;;
	esac
done
[ ${#MODES[@]} -eq 0 ] && MODES=(check)

if ! command -v spin >/dev/null 2>&1; then
	echo "spin not found: installing it (apt-get install -y spin)"
	(apt-get update && apt-get install -y spin) >/dev/null || {
		echo "model: FAIL (could not install spin)"; exit 1; }
fi
command -v gcc >/dev/null 2>&1 || { echo "model: FAIL (gcc not found)"; exit 1; }
mkdir -p "$WORK" || exit 1

FAILS=0
TOTAL_STATES=0
NRUNS=0
T0=$(date +%s)

# verify NAME KIND EXPECT SPIN_FLAGS...
#   KIND:   safety (assertions + invalid end states) or npc (non-progress cycles)
#   EXPECT: pass (no error allowed) or fail (spin must find an error)
verify() {
	local name=$1 kind=$2 expect=$3; shift 3
	local dir=$WORK/$name cc pflags out errs states mem secs line
	rm -rf "$dir"; mkdir -p "$dir"; cp "$PML" "$dir/uhmm.pml"
	if [ "$kind" = safety ]; then
		cc="-DSAFETY -DCOLLAPSE"; pflags=""
	else
		cc="-DNP -DCOLLAPSE"; pflags="-l"
	fi
	if ! (cd "$dir" && spin -a "$@" uhmm.pml >spin.out 2>&1 &&
	      gcc -O2 $cc -DMEMLIM=$MEMLIM -o pan pan.c >gcc.out 2>&1); then
		echo "  FAIL $name: could not build the verifier (see $dir)"
		FAILS=$((FAILS + 1)); return
	fi
	secs=$(date +%s%N)
	(cd "$dir" && ./pan -m100000 $pflags >pan.out 2>&1)
	secs=$(awk -v a="$secs" -v b="$(date +%s%N)" 'BEGIN { print (b - a) / 1e9 }')
	out=$dir/pan.out
	errs=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | head -1)
	states=$(awk '/states, stored/ {print $1; exit}' "$out")
	mem=$(awk '/total actual memory usage/ {print $1; exit}' "$out")
	states=$(printf '%.0f' "${states:-0}")
	NRUNS=$((NRUNS + 1)); TOTAL_STATES=$((TOTAL_STATES + states))
	line=$(printf '%-22s %-6s %10s states %7.1fs %7.0f MiB' "$name" "$kind" \
		"$states" "$secs" "${mem:-0}")
	if grep -q "reached -DMEMLIM\|max search depth too small\|out of memory" "$out" ||
	   [ -z "$errs" ]; then
		echo "  FAIL $line: search incomplete (see $out)"
		FAILS=$((FAILS + 1)); return
	fi
	if [ "$expect" = pass ] && [ "$errs" = 0 ]; then
		echo "  ok   $line"
	elif [ "$expect" = fail ] && [ "$errs" != 0 ]; then
		echo "  ok   $line: found as expected: $(first_error "$out")"
		trail "$dir" "$@"
	elif [ "$expect" = pass ]; then
		echo "  FAIL $line: $(first_error "$out")"
		trail "$dir" "$@"
		FAILS=$((FAILS + 1))
	else
		echo "  FAIL $line: spin found no violation, but one was expected"
		FAILS=$((FAILS + 1))
	fi
}

first_error() {
	grep -m1 -E "^pan:[0-9]+: |^pan: " "$1" | sed 's/^pan:[0-9]*: //'
}

# Replay the counterexample into trail.txt; show its last protocol steps
# (page state, mirror entries, data moves, faults, the failed assertion).
trail() {
	local dir=$1; shift
	(cd "$dir" && spin -t -p -g "$@" uhmm.pml >trail.txt 2>&1)
	echo "       counterexample: ${dir#$ROOT/}/trail.txt; last protocol steps:"
	sed '/trail ends/q' "$dir/trail.txt" | grep -E "^ *[0-9]+:\s+proc" |
		sed -E 's/\s+/ /g; s/ uhmm.pml:[0-9]+ \(state [0-9]+\)//' |
		grep -vE 'Bown==_pid|assert\(done\)' |
		grep -E 'st\[p\] = |mir\[.*\] = |cpu\[p\] = |frm\[.*\] = |assert\(|fq[!?]|CYCLE' |
		tail -n "${MODEL_TRAIL_LINES:-10}" | sed 's/^ */         /' | cut -c1-110
}

# The configurations.  Each is exhaustive (hash compaction is not used:
# -DCOLLAPSE only compresses the stored states losslessly).
ONE="-DNPICK=1 -DNCPU=1 -DCPU_OPS=1 -DDEV_OPS=1"

for mode in "${MODES[@]}"; do
	case $mode in
	check)
		echo "== safety: assertions (I1 no lost update, I2 notify before change,"
		echo "   data in one place) and invalid end states (deadlock)"
		verify two-pages safety pass -DNPICK=2 -DNCPU=2 -DCPU_OPS=1 -DDEV_OPS=1 \
			-DWITH_DEV1=0 -DWITH_TAKER=0 -DWITH_UNMAP=0
		verify migrate safety pass $ONE -DWITH_TAKER=0 -DWITH_UNMAP=0
		verify exclusive safety pass $ONE -DWITH_MIGRATOR=0 -DWITH_UNMAP=0
		verify two-cpus safety pass -DNPICK=1 -DNCPU=2 -DCPU_OPS=1 -DDEV_OPS=1 \
			-DWITH_DEV1=0 -DWITH_UNMAP=0
		verify unmap-migrate safety pass $ONE -DWITH_TAKER=0 -DUNMAP_PAGE=0
		verify unmap-exclusive safety pass $ONE -DWITH_MIGRATOR=0 -DUNMAP_PAGE=0
		verify all-actors-dev0 safety pass $ONE -DUNMAP_PAGE=0 -DWITH_DEV1=0
		verify all-actors-dev1 safety pass $ONE -DUNMAP_PAGE=0 -DWITH_DEV0=0
		echo "== progress: no non-progress cycle (every run ends; with no invalid"
		echo "   end state, every CPU access and device command completes)"
		verify npc-migrate npc pass $ONE -DWITH_TAKER=0 -DWITH_UNMAP=0
		verify npc-exclusive npc pass $ONE -DWITH_MIGRATOR=0 -DWITH_UNMAP=0
		verify npc-all-actors npc pass $ONE -DUNMAP_PAGE=0 -DWITH_DEV1=0
		;;
	mutant)
		echo "== mutant BUG_SKIP_INVALIDATE (migration notifies nobody): must fail"
		verify mutant-skip-invalidate safety fail $ONE -DWITH_TAKER=0 \
			-DWITH_UNMAP=0 -DBUG_SKIP_INVALIDATE
		;;
	briefed)
		echo "== the protocol as first briefed: each deviation must fail"
		verify briefed-owner-skip safety fail $ONE -DWITH_UNMAP=0 -DSKIP_MODE=1
		verify briefed-late-map safety fail $ONE -DWITH_TAKER=0 \
			-DWITH_UNMAP=0 -DLATE_MAP=1
		verify briefed-unmap-order safety fail $ONE -DWITH_TAKER=0 \
			-DUNMAP_PAGE=0 -DUNMAP_LOCK_FIRST=0
		;;
	livelock)
		echo "== unbounded device retries (MAX_RETRY=0): a non-progress cycle exists"
		verify livelock-exclusive npc fail -DNPICK=1 -DNCPU=1 -DCPU_OPS=1 \
			-DDEV_OPS=1 -DWITH_DEV1=0 -DWITH_MIGRATOR=0 -DWITH_TAKER=0 \
			-DWITH_UNMAP=0 -DMAX_RETRY=0
		;;
	esac
done

T=$(( $(date +%s) - T0 ))
if [ $FAILS -eq 0 ]; then
	echo "model: OK (${MODES[*]}: $NRUNS spin runs, $TOTAL_STATES states, ${T}s)"
	exit 0
fi
echo "model: FAIL ($FAILS of $NRUNS spin runs failed, ${T}s)"
exit 1
