/* SPDX-License-Identifier: MIT */
/*
 * test_stress_thp.c - the stress test (test_stress.c) on THP-backed ranges:
 * each range is one 2 MiB THP (MADV_HUGEPAGE) when it is mapped again, so
 * exclusive grants, migrations, partial MADV_DONTNEED and mremap all meet
 * huge pages.  It fails if no exclusive grant hit a THP-mapped page, and
 * SKIPs where the kernel gives no THP.
 */
#define STRESS_THP 1
#include "test_stress.c"
