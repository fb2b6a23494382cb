#!/usr/bin/env bash
# Symbolizes sanitizer reports printed with symbolize=0.  A frame such as
#   #3 0x7f.. <null> <null> (libuhmm.so.0+0x1a2b3)
# gets its function and file:line from addr2line; the module is looked up in
# the directories given as arguments, then in the system library folders.
# Other lines pass through unchanged.
# Why: the tests run the sanitizers with symbolize=0 because the in-process
# symbolizer unmaps memory (munmap) inside a report; uhmm's interposer then
# runs inside the report, and a second report deadlocks the sanitizer.
dirs=("$@" /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib/gcc/x86_64-linux-gnu/*)
find_mod() {
	local m=$1 d
	[[ $m == /* ]] && { [ -r "$m" ] && echo "$m"; return; }
	for d in "${dirs[@]}"; do
		[ -r "$d/$m" ] && { echo "$d/$m"; return; }
	done
}
while IFS= read -r line; do
	if [[ $line =~ \(([^()+\ ]+)\+(0x[0-9a-fA-F]+)\) ]]; then
		mod=$(find_mod "${BASH_REMATCH[1]}") off=${BASH_REMATCH[2]}
		if [ -n "$mod" ] && command -v addr2line >/dev/null 2>&1; then
			# a return address points after its call: look one byte back
			[[ $line =~ ^\ *#0\  ]] || off=$(printf '0x%x' $((off - 1)))
			sym=$(addr2line -f -C -i -e "$mod" "$off" 2>/dev/null | paste -sd ' ')
			line="$line $sym"
		fi
	fi
	printf '%s\n' "$line"
done
