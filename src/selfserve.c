/* SPDX-License-Identifier: MIT */
/*
 * selfserve.c - self-service CPU faults (uhmm_self_service): a range
 * registered with its own userfaultfd opened with UFFD_FEATURE_SIGBUS, so
 * that a CPU access to a page of it that is not in the CPU view (on a
 * device, held exclusive, never populated) is a SIGBUS in the faulting
 * thread, which uhmm's handler resolves there and then (fault.c,
 * uhmm__fault_self): no message, no service thread, no thread hand-off.
 *
 * The handler runs in the faulting thread at the faulting instruction: it
 * takes uhmm's locks, so it refuses (and the signal goes on to the previous
 * handler, or kills) when the thread already holds one, which only uhmm's
 * own code touching such a page could cause.  A SIGBUS that is not a fault
 * on a self-service page goes to the handler installed before uhmm's.
 */
#include "internal.h"
#include "compat.h"

#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

static struct sigaction g_old_bus;      /* the handler before uhmm's */
static pthread_once_t g_handler_once = PTHREAD_ONCE_INIT;
static int g_handler_err;

/* Was the access that faulted a write?  (Only a hint for the driver.) */
static bool fault_was_write(const void *ucp)
{
#if defined(__x86_64__)
	const ucontext_t *uc = ucp;
	return uc->uc_mcontext.gregs[REG_ERR] & 2;
#else
	(void)ucp;
	return false;
#endif
}

/* Not ours: what would have happened without uhmm. */
static void chain(int sig, siginfo_t *si, void *uc)
{
	if (g_old_bus.sa_flags & SA_SIGINFO) {
		if (g_old_bus.sa_sigaction)
			g_old_bus.sa_sigaction(sig, si, uc);
		return;
	}
	if (g_old_bus.sa_handler != SIG_DFL && g_old_bus.sa_handler != SIG_IGN) {
		g_old_bus.sa_handler(sig);
		return;
	}
	/* the default action: for a fault, the access runs again and kills */
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigemptyset(&dfl.sa_mask);
	sigaction(SIGBUS, &dfl, NULL);
	if (si->si_code <= 0)  /* sent, not a fault: send it again */
		raise(sig);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	struct uhmm__as *as = uhmm__as_peek();
	uint64_t addr = (uint64_t)(uintptr_t)si->si_addr & PG_MASK;
	if (as && si->si_code == BUS_ADRERR && as->pid == getpid() && !uhmm__holds_lock() &&
	    uhmm__ss_has(as, addr)) {
		int rc = uhmm__fault_self(as, addr, fault_was_write(uc));
		if (rc == 0) {
			errno = saved;
			return;  /* the access runs again and finds its page */
		}
		STAT_ADD(cpu_faults_sigbus, 1);
		uhmm__log("self-service fault at 0x%llx could not be served (%s)",
			  (unsigned long long)addr, strerror(-rc));
	}
	chain(sig, si, uc);
	errno = saved;
}

static void install_handler(void)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus,
				.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER | SA_ONSTACK };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, &g_old_bus) != 0)
		g_handler_err = -errno;
}

/* The range's registration moves from the process uffd to the SIGBUS one. */
static int switch_registration(struct uhmm__as *as, uint64_t start, uint64_t end)
{
	struct reg_range *r = uhmm__zalloc(sizeof(*r));
	if (!r)
		return -ENOMEM;
	uhmm__pt_lock(as);
	bool busy = false;
	for (unsigned i = 0; i < SS_MAX && !busy; i++)
		busy = as->ss[i].start < as->ss[i].end && as->ss[i].start < end &&
		       start < as->ss[i].end;
	uhmm__pt_unlock(as);
	if (busy) {
		uhmm__free(r, sizeof(*r));
		return -EBUSY;
	}
	uhmm__uffd_unregister(as->uffd, start, end - start);
	uhmm__pt_lock(as);
	uhmm__reg_forget(as, start, end);
	uhmm__pt_unlock(as);
	int rc = uhmm__uffd_register_fd(as->sigbus_uffd, start, end - start, true);
	if (rc) {
		uhmm__free(r, sizeof(*r));
		return rc;
	}
	uhmm__pt_lock(as);
	bool added = uhmm__ss_add(as, start, end);
	if (added)
		uhmm__reg_add(as, r, start, end, true);
	uhmm__pt_unlock(as);
	if (!added) {
		uhmm__uffd_unregister(as->sigbus_uffd, start, end - start);
		uhmm__free(r, sizeof(*r));
		return -ENOSPC;
	}
	return 0;
}

int uhmm_self_service(uint64_t start, uint64_t len)
{
	if (!len || ((start | len) & ~PG_MASK) || start + len < start)
		return -EINVAL;
	int err = 0;
	struct uhmm__as *as = uhmm__as_get(&err);
	if (!as)
		return err;
	uint64_t end = start + len;
	struct vma v;
	int rc = uhmm__vma_find(as, start, &v);
	if (rc || v.start > start || v.end < end)
		return -EFAULT;  /* not one mapping */
	if (v.shared || v.file || v.hugetlb || !v.read || !v.write)
		return -EINVAL;  /* device-private memory lives in private anonymous RW */
	pthread_once(&g_handler_once, install_handler);
	if (g_handler_err)
		return g_handler_err;
	uhmm__lock(&as->reg_lock);
	if (as->sigbus_uffd < 0) {
		int fd = uhmm__uffd_open_sigbus();
		if (fd >= 0)
			__atomic_store_n(&as->sigbus_uffd, fd, __ATOMIC_RELEASE);
		rc = fd < 0 ? fd : 0;
	}
	uhmm__unlock(&as->reg_lock);
	if (rc)
		return rc;
	/*
	 * The range is marked as being torn down meanwhile (no migration,
	 * grant or device mapping starts on it), its pages come back to the
	 * CPU, and only then does its registration change: while it has none
	 * the kernel fills holes with zeros itself, which is right only for
	 * pages that are not on a device.
	 */
	struct inflight_op *op = uhmm__inflight_begin(as, start, end, true);
	if (!op)
		return -ENOMEM;
	rc = uhmm__bring_back_range(as, start, end);
	if (rc == 0) {
		uhmm__wait_range_unlocked(as, start, end);
		uhmm__lock(&as->reg_lock);
		rc = switch_registration(as, start, end);
		uhmm__unlock(&as->reg_lock);
	}
	uhmm__inflight_end(as, op, rc == 0);
	return rc;
}
