/* SPDX-License-Identifier: MIT */
/*
 * inject.c - fault injection.  UHMM_INJECT="point:percent[,point:percent]"
 * with points device_alloc, sys_alloc, copy, uffd_ioctl, thread makes the
 * chosen operations fail at that rate (read once, at first use).  Each
 * point counts how often it fired, so tests can prove it was reached.
 */
#include "internal.h"
#include "uhmm_dmirror.h"

static int g_rate[INJ_NPOINTS];      /* percent; read-only after init */
static uint64_t g_fired[INJ_NPOINTS];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const char *const g_names[INJ_NPOINTS] = {
	"device_alloc", "sys_alloc", "copy", "uffd_ioctl", "thread", "driver_copy",
};
static __thread uint64_t tls_rng;

static void inject_init(void)
{
	const char *env = getenv("UHMM_INJECT");
	if (!env)
		return;
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", env);
	for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(tok, ':');
		if (!colon)
			continue;
		*colon = 0;
		for (int i = 0; i < INJ_NPOINTS; i++)
			if (!strcmp(tok, g_names[i]))
				g_rate[i] = atoi(colon + 1);
	}
}

bool uhmm__inject(enum inject_point p)
{
	pthread_once(&g_once, inject_init);
	if (UHMM_LIKELY(!g_rate[p]))
		return false;
	if (!tls_rng)
		tls_rng = (uint64_t)(uintptr_t)&tls_rng ^ uhmm__now_ns();
	tls_rng ^= tls_rng << 13;
	tls_rng ^= tls_rng >> 7;
	tls_rng ^= tls_rng << 17;
	if ((int)(tls_rng % 100) >= g_rate[p])
		return false;
	__atomic_fetch_add(&g_fired[p], 1, __ATOMIC_RELAXED);
	return true;
}

long uhmm_inject_fired(const char *point)
{
	for (int i = 0; i < INJ_NPOINTS; i++)
		if (point && !strcmp(point, g_names[i]))
			return (long)__atomic_load_n(&g_fired[i], __ATOMIC_RELAXED);
	return -1;
}
