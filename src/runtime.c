/* SPDX-License-Identifier: MIT */
/*
 * runtime.c - what every layer of the library may use: the log, the
 * debug build's assertion failure, and the thread-local facts about the
 * calling thread (the lock count of uhmm__lock is in alloc.c, beside the
 * allocator it guards).  Calls nothing of uhmm's.
 */
#include "internal.h"

#include <stdarg.h>

static __thread bool tls_in_service;
static __thread bool tls_fault_worker;

void uhmm__log(const char *fmt, ...)
{
	va_list ap;
	char buf[512];
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "uhmm: %s\n", buf);
}

#ifdef UHMM_DEBUG
void uhmm__assert_fail(const char *cond, const char *file, int line)
{
	uhmm__log("assertion failed: %s (%s:%d)", cond, file, line);
	abort();
}
#endif

/* A fault worker (faultwork.c) marks itself once, at its start. */
void uhmm__set_fault_worker(void)
{
	tls_fault_worker = true;
}

bool uhmm__in_fault_worker(void)
{
	return tls_fault_worker;
}

/* The fault-service thread marks itself once, at its start. */
void uhmm__set_service_thread(void)
{
	tls_in_service = true;
}

bool uhmm__in_service_thread(void)
{
	return tls_in_service;
}

/*
 * Set for good at the first fork() after uhmm started (in the parent, and
 * so in the child): from then on private pages may be shared copy-on-write,
 * and the page scan (vma.c) must read the kernel's "exclusively mapped" bit.
 */
static bool g_cow_possible;

void uhmm__set_cow_possible(void)
{
	__atomic_store_n(&g_cow_possible, true, __ATOMIC_RELAXED);
}

bool uhmm__cow_possible(void)
{
	return __atomic_load_n(&g_cow_possible, __ATOMIC_RELAXED);
}
