/* SPDX-License-Identifier: MIT */
/*
 * intercept.c - notify before change.  libuhmm exports munmap, mremap,
 * mprotect, madvise and mmap; an application linked with it calls these
 * instead of libc's.  Each one invalidates the device mirrors of the range
 * (interval notifiers) and settles the device pages of the range *before*
 * making the system call, which is what invariant I2 needs.  Calls that do
 * not go through these symbols (raw syscall(), libc-internal calls such as
 * free() of a large block) are caught after the fact by the userfaultfd
 * UNMAP/REMOVE/REMAP events of tracked ranges; docs/design.md states the
 * guarantee of each path.
 */
#include "internal.h"
#include "compat.h"

#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

void uhmm__intercept_link(void)
{
	/* Referenced by the runtime so that static links keep this object. */
}

/*
 * The runtime an interposed call must go through, or NULL: straight to the
 * kernel.  Also NULL while this thread holds a uhmm lock (see uhmm__lock):
 * such a call comes from inside uhmm (a sanitizer report, a signal
 * handler), and taking uhmm's locks again would deadlock.  It then gets
 * what a raw syscall() gets: the userfaultfd events after the fact
 * (docs/design.md section 4).
 */
static struct uhmm__as *live_as(void)
{
	if (uhmm__holds_lock())
		return NULL;
	struct uhmm__as *as = uhmm__as_peek();
	return as && as->pid == getpid() ? as : NULL;
}

static void range_of(uint64_t addr, uint64_t len, uint64_t *s, uint64_t *e)
{
	*s = addr & PG_MASK;
	*e = (addr + len + PG_SIZE - 1) & PG_MASK;
	if (*e < *s)
		*e = UINT64_MAX & PG_MASK;
}

__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	struct uhmm__as *as = live_as();
	if (!as || len == 0 || ((uintptr_t)addr & (PG_SIZE - 1)))
		return (int)syscall(SYS_munmap, addr, len);
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	struct inflight_op *op = uhmm__inflight_begin(as, s, e, true);
	TR('N', s, 0, e - s, op ? op->expect : -1);
	uhmm__before_unmap(as, s, e, UHMM_NOTIFY_UNMAP);
	int rc = (int)syscall(SYS_munmap, addr, len);
	TR('n', s, 0, e - s, rc);
	uhmm__inflight_end(as, op, rc == 0);
	return rc;
}

__attribute__((visibility("default"))) void *mremap(void *old, size_t old_size,
						     size_t new_size, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	struct uhmm__as *as = live_as();
	if (!as || ((uintptr_t)old & (PG_SIZE - 1)))
		return (void *)syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
	uint64_t os, oe;
	range_of((uintptr_t)old, old_size ? old_size : PG_SIZE, &os, &oe);
	/* Whether the kernel sends REMAP or UNMAP here depends on the move: not counted on. */
	struct inflight_op *op = uhmm__inflight_begin(as, os, oe, true);
	/*
	 * Device pages come back to the CPU first, so the kernel moves the data
	 * with the mapping; the old range's mirrors go away before the move.
	 */
	uhmm__bring_back_range(as, os, oe);
	uhmm__before_unmap(as, os, oe, UHMM_NOTIFY_UNMAP);
	/*
	 * uhmm's registration may have split the mapping into several VMAs,
	 * and the kernel does not mremap across VMAs: unregister the range
	 * (its pages are all back in the CPU view) so that they merge again.
	 */
	uhmm__lock(&as->reg_lock);
	uhmm__uffd_unregister(as->uffd, os, oe - os);
	uhmm__uffd_unregister(as->sigbus_uffd, os, oe - os);  /* a self-service range */
	uhmm__unlock(&as->reg_lock);
	if ((flags & MREMAP_FIXED) && new_addr) {
		uint64_t s, e;
		range_of((uintptr_t)new_addr, new_size, &s, &e);
		uhmm__before_unmap(as, s, e, UHMM_NOTIFY_UNMAP);
	}
	void *rc = (void *)syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
	uhmm__inflight_end(as, op, rc != MAP_FAILED);
	return rc;
}

__attribute__((visibility("default"))) int mprotect(void *addr, size_t len, int prot)
{
	struct uhmm__as *as = live_as();
	if (!as || len == 0 || ((uintptr_t)addr & (PG_SIZE - 1)))
		return (int)syscall(SYS_mprotect, addr, len, prot);
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	uhmm__invalidate(as, s, e, UHMM_NOTIFY_PROTECTION_VMA, NULL);
	/*
	 * Device pages only live in read-write private mappings (UFFDIO_MOVE
	 * needs equal access flags on both sides), so a range that stops being
	 * read-write gets its pages back first.
	 */
	if (prot != (PROT_READ | PROT_WRITE))
		uhmm__bring_back_range(as, s, e);
	return (int)syscall(SYS_mprotect, addr, len, prot);
}

static bool advice_discards(int advice)
{
	return advice == MADV_DONTNEED || advice == MADV_REMOVE ||
	       advice == MADV_DONTNEED_LOCKED;
}

__attribute__((visibility("default"))) int madvise(void *addr, size_t len, int advice)
{
	struct uhmm__as *as = live_as();
	if (!as || len == 0 || ((uintptr_t)addr & (PG_SIZE - 1)) ||
	    !(advice_discards(advice) || advice == MADV_FREE))
		return (int)syscall(SYS_madvise, addr, len, advice);
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	bool discard = advice_discards(advice);
	struct inflight_op *op = uhmm__inflight_begin(as, s, e, discard);
	/* Discarded data: device pages of the range are freed and read zero. */
	if (discard)
		uhmm__before_unmap(as, s, e, UHMM_NOTIFY_CLEAR);
	else
		uhmm__invalidate(as, s, e, UHMM_NOTIFY_CLEAR, NULL);
	int rc = (int)syscall(SYS_madvise, addr, len, advice);
	uhmm__inflight_end(as, op, rc == 0);
	return rc;
}

__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags,
						   int fd, off_t off)
{
	struct uhmm__as *as = (flags & MAP_FIXED) ? live_as() : NULL;
	if (!as || ((uintptr_t)addr & (PG_SIZE - 1)) || len == 0)
		return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	/* MAP_FIXED replaces whatever was there: that is an unmap first. */
	uint64_t s, e;
	range_of((uintptr_t)addr, len, &s, &e);
	struct inflight_op *op = uhmm__inflight_begin(as, s, e, true);
	uhmm__before_unmap(as, s, e, UHMM_NOTIFY_UNMAP);
	void *rc = (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	uhmm__inflight_end(as, op, rc != MAP_FAILED);
	return rc;
}

__attribute__((visibility("default"))) void *mmap64(void *addr, size_t len, int prot, int flags,
						     int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

