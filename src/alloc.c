/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - the runtime's own memory.  Nothing on a fault path may use
 * malloc(): the heap may be a range uhmm registered with userfaultfd, and a
 * fresh heap page touched by the fault-service thread would wait for the
 * fault-service thread.  So every internal allocation comes from mappings
 * made here with the raw mmap system call: power-of-two size classes from
 * 32 bytes to 64 KiB on 1 MiB slabs, larger requests mapped directly.
 * Memory is zeroed on allocation.  g_lock (a leaf lock) protects the lists.
 *
 * The mappings are populated and marked MADV_DONTDUMP: the distinct VMA
 * flag keeps the kernel from merging them with an application mapping next
 * to them, which uhmm might register (a merged VMA once put uhmm's own
 * metadata behind its own fault handler).
 */
#include "internal.h"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MIN_SHIFT 5
#define MAX_SHIFT 16
#define NCLASSES (MAX_SHIFT - MIN_SHIFT + 1)
#define SLAB (1UL << 20)

struct free_obj {
	struct free_obj *next;
};

__thread unsigned uhmm__tls_locks __attribute__((tls_model("initial-exec")));

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct free_obj *g_free[NCLASSES];
static char *g_slab_cur, *g_slab_end;

static void *raw_map(size_t len)
{
	void *p = (void *)syscall(SYS_mmap, NULL, len, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	syscall(SYS_madvise, p, len, MADV_DONTDUMP);
	return p;
}

static unsigned class_of(size_t size)
{
	unsigned c = MIN_SHIFT;
	while ((1UL << c) < size)
		c++;
	return c;
}

void *uhmm__zalloc(size_t size)
{
	if (size == 0)
		size = 1;
	unsigned c = class_of(size);
	if (c > MAX_SHIFT)
		return raw_map((size + PG_SIZE - 1) & PG_MASK);
	size_t sz = 1UL << c;
	uhmm__lock(&g_lock);
	struct free_obj *o = g_free[c - MIN_SHIFT];
	if (o) {
		g_free[c - MIN_SHIFT] = o->next;
	} else {
		if ((size_t)(g_slab_end - g_slab_cur) < sz) {
			char *s = raw_map(SLAB);
			if (!s) {
				uhmm__unlock(&g_lock);
				return NULL;
			}
			g_slab_cur = s;
			g_slab_end = s + SLAB;
		}
		o = (struct free_obj *)g_slab_cur;
		g_slab_cur += sz;
	}
	uhmm__unlock(&g_lock);
	memset(o, 0, sz);
	return o;
}

void uhmm__free(void *p, size_t size)
{
	if (!p)
		return;
	if (size == 0)
		size = 1;
	unsigned c = class_of(size);
	if (c > MAX_SHIFT) {
		syscall(SYS_munmap, p, (size + PG_SIZE - 1) & PG_MASK);
		return;
	}
	struct free_obj *o = p;
	uhmm__lock(&g_lock);
	o->next = g_free[c - MIN_SHIFT];
	g_free[c - MIN_SHIFT] = o;
	uhmm__unlock(&g_lock);
}
