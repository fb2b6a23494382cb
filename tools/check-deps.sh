#!/bin/sh
# Checks what the build and the tests need, in one line each.
missing=0
for t in cc make; do
	command -v $t >/dev/null 2>&1 || { echo "uhmm: '$t' is missing: apt-get install build-essential"; missing=1; }
done
if [ "$(uname -s)" != Linux ]; then echo "uhmm: needs Linux"; missing=1; fi
[ $missing -eq 0 ] || exit 1
# gdb prints a hung test's stacks (tests/harness.h); without it the dump
# falls back to /proc/PID/task/*/stack.  Installed when we can.
if ! command -v gdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "uhmm: installing gdb (stack dumps of hung tests)"
	{ apt-get install -y -qq gdb || { apt-get update -qq && apt-get install -y -qq gdb; }; } >/dev/null 2>&1 ||
		echo "uhmm: could not install gdb; hung tests will show kernel stacks only"
fi
if [ "$(id -u)" != 0 ] && [ "$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null)" != 1 ] && [ ! -r /dev/userfaultfd ]; then
	echo "uhmm: userfaultfd is not available to this user: run as root, or 'sysctl vm.unprivileged_userfaultfd=1', or grant read-write access to /dev/userfaultfd"
	exit 1
fi
exit 0
