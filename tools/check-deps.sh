#!/bin/sh
# Checks what the build and the tests need, in one line each.
missing=0
for t in cc make; do
	command -v $t >/dev/null 2>&1 || { echo "uhmm: '$t' is missing: apt-get install build-essential"; missing=1; }
done
if [ "$(uname -s)" != Linux ]; then echo "uhmm: needs Linux"; missing=1; fi
[ $missing -eq 0 ] || exit 1
if [ "$(id -u)" != 0 ] && [ "$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null)" != 1 ] && [ ! -r /dev/userfaultfd ]; then
	echo "uhmm: userfaultfd is not available to this user: run as root, or 'sysctl vm.unprivileged_userfaultfd=1', or grant read-write access to /dev/userfaultfd"
	exit 1
fi
exit 0
