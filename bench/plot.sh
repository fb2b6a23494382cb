#!/usr/bin/env bash
# bench/plot.sh - draws the figures of "make bench-plot" from the data files
# that bench/run.sh left in BUILD (installs gnuplot-nox with apt-get if
# gnuplot is missing):
#   BUILD/fault_latency.png  CDF of the latency of one CPU access: a
#                            device-private page (uhmm) vs a userfaultfd
#                            MISSING fault + UFFDIO_COPY (floor), and a
#                            device-exclusive page vs UFFDIO_MOVE (floor)
#   BUILD/throughput.png     migration throughput vs size (uhmm to device,
#                            to system) vs single-thread memcpy (floor)
# Usage: bash bench/plot.sh [BUILD [OUT]]  (default BUILD=build, OUT=BUILD)
set -u
build=${1:-build}
out=${2:-$build}   # where the PNGs go (make bench-plot: docs/)

if ! command -v gnuplot >/dev/null 2>&1; then
	echo "bench/plot.sh: installing gnuplot-nox"
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "bench/plot.sh: gnuplot is missing and there is no apt-get: install gnuplot" >&2
		exit 1
	fi
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	if ! $sudo apt-get update -qq ||
		! DEBIAN_FRONTEND=noninteractive $sudo apt-get -y -qq install gnuplot-nox >/dev/null; then
		echo "bench/plot.sh: could not install gnuplot-nox" >&2
		exit 1
	fi
fi

# pngcairo when this gnuplot has it, else the plain png terminal.
if gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then
	term="pngcairo noenhanced size 1200,520 font 'sans,10'"
else
	term="png noenhanced size 1200,520"
fi

have() { [ -s "$build/$1" ]; }

# One "plot" clause per existing file: file, using, title, style.
clause() {
	have "$1" && printf "'%s' using %s with lines lw 2 title '%s', " "$build/$1" "$2" "$3"
}

plots=0
lat_fault=$(clause bench_lat_fault_uhmm.dat 1:2 "uhmm: read of a device-private page"
	clause bench_lat_fault_floor.dat 1:2 "floor: MISSING fault + UFFDIO_COPY")
lat_excl=$(clause bench_lat_excl_uhmm.dat 1:2 "uhmm: write to a device-exclusive page"
	clause bench_lat_excl_floor.dat 1:2 "floor: MISSING fault + UFFDIO_MOVE")
if [ -n "$lat_fault$lat_excl" ]; then
	if gnuplot <<-EOF
	set terminal $term
	set output '$out/fault_latency.png'
	set multiplot layout 1,2 title 'Latency of one CPU access until it returns (CDF, 20000 pages)'
	set logscale x
	set xlabel 'latency (us, log scale)'
	set ylabel 'fraction of accesses'
	set yrange [0:1]
	set grid
	set key bottom right
	set title 'device-private page faulted back to RAM'
	$( [ -n "$lat_fault" ] && echo "plot ${lat_fault%, }" || echo "unset key; plot 2 notitle" )
	set title 'device-exclusive page revoked'
	$( [ -n "$lat_excl" ] && echo "plot ${lat_excl%, }" || echo "unset key; plot 2 notitle" )
	unset multiplot
	EOF
	then
		echo "wrote $out/fault_latency.png"
		plots=$((plots + 1))
	fi
else
	echo "bench/plot.sh: no latency data in $build (run 'make bench' first)"
fi

thr=""
if have bench_throughput_uhmm.dat; then
	f="'$build/bench_throughput_uhmm.dat'"
	thr="$f using 1:2 with linespoints lw 2 title 'uhmm migrate_to_dev', "
	thr+="$f using 1:3 with linespoints lw 2 title 'uhmm migrate_to_sys', "
fi
if have bench_throughput_floor.dat; then
	f="'$build/bench_throughput_floor.dat'"
	thr+="$f using 1:2 with linespoints lw 2 dt 2 title 'floor: memcpy (1 thread)', "
fi
if [ -n "$thr" ]; then
	if gnuplot <<-EOF
	set terminal $term
	set output '$out/throughput.png'
	set title 'Migration throughput vs size (device 0, one command per range)'
	set logscale x 2
	set xlabel 'size (MiB, log scale)'
	set ylabel 'GB/s'
	set yrange [0:*]
	set grid
	set key outside right
	plot ${thr%, }
	EOF
	then
		echo "wrote $out/throughput.png"
		plots=$((plots + 1))
	fi
else
	echo "bench/plot.sh: no throughput data in $build (run 'make bench' first)"
fi
[ $plots -gt 0 ]
