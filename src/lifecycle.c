/* SPDX-License-Identifier: MIT */
/*
 * lifecycle.c - the runtime's life: creation on first use (uhmm__as_get),
 * the fork lock and pthread_atfork handling, and the exit.
 */
#include "internal.h"
#include "compat.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Protects g_as creation and teardown; outside the lock order (leaf, init only). */
static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uhmm__as *g_as;
static int g_init_err;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
/* This thread holds the fork lock for writing (atfork_prepare to parent/child). */
static __thread bool tls_fork_holder;

/* ---- fork ---------------------------------------------------------------- */

void uhmm__fork_rdlock(struct uhmm__as *as)
{
	if (!tls_fork_holder)
		pthread_rwlock_rdlock(&as->fork_lock);
}

void uhmm__fork_unlock(struct uhmm__as *as)
{
	if (!tls_fork_holder)
		pthread_rwlock_unlock(&as->fork_lock);
}

static bool off_cpu(struct uhmm__as *as, const struct pmeta *pm, const void *arg)
{
	(void)as, (void)arg;
	return pm->state == PS_PRIVATE || pm->state == PS_EXCLUSIVE;
}

static bool coherent_unlocked(struct uhmm__as *as, const struct pmeta *pm, const void *arg)
{
	(void)as, (void)arg;
	return pm->state == PS_COHERENT && !pm->locked;
}

struct coherent_batch {
	uint64_t frames[BLOCK_PAGES];
	unsigned n;
};

static int coherent_to_system(struct uhmm__as *as, uint64_t addr, struct pmeta *pm, void *arg)
{
	struct coherent_batch *cb = arg;
	if (!coherent_unlocked(as, pm, NULL))
		return 0;
	cb->frames[cb->n++] = pm->frame;
	pm->state = PS_SYSTEM;
	pm->frame = 0;
	uhmm__pmeta_changed(as, addr, pm);
	return 0;
}

/*
 * Before fork(): every page that is not in the CPU view comes back (device
 * private through its owner's migrate_to_ram, exclusive by revocation), and
 * no migration may start until the fork is done, so the child's copy of the
 * address space holds all the data (COW from there on, by the kernel).
 */
static void atfork_prepare(void)
{
	uhmm__set_cow_possible();
	struct uhmm__as *as = uhmm__as_peek();
	if (!as)
		return;
	pthread_rwlock_wrlock(&as->fork_lock);
	tls_fork_holder = true;
	for (;;) {
		uhmm__pt_lock(as);
		uint64_t addr = uhmm__page_find_any(as, off_cpu, NULL);
		uhmm__pt_unlock(as);
		if (!addr)
			break;
		if (uhmm__fault_in(as, addr, false)) {
			uhmm__log("fork: page 0x%llx could not be brought back; the child "
				  "will read zeros there", (unsigned long long)addr);
			uhmm__pt_lock(as);
			struct pmeta *pm = uhmm__pmeta(as, addr, false);
			if (pm && !pm->locked)
				pm->state = PS_SYSTEM;  /* give up on it rather than loop */
			uhmm__pt_unlock(as);
		}
	}
	/*
	 * Coherent pages become plain system pages: after fork they are COW
	 * shared like any anonymous page, and the first write gives each side
	 * a system page of its own.
	 */
	for (;;) {
		struct coherent_batch cb = { .n = 0 };
		uhmm__pt_lock(as);
		uint64_t addr = uhmm__page_find_any(as, coherent_unlocked, NULL);
		if (addr) {  /* the whole 2 MiB block of that page at once */
			uint64_t base = addr & ~((1ULL << BLOCK_SHIFT) - 1);
			uhmm__walk(as, base, uhmm__block_end(base), 0, coherent_to_system, &cb, NULL);
		}
		uhmm__pt_unlock(as);
		if (!addr)
			break;
		uhmm__frame_put_many(as, cb.frames, cb.n);
	}
}

static void atfork_parent(void)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as)
		return;
	tls_fork_holder = false;
	pthread_rwlock_unlock(&as->fork_lock);
}

/*
 * In the child: the parent's userfaultfd does not cover the child's memory
 * (no UFFD_FEATURE_EVENT_FORK), its service thread does not exist, and its
 * device pools belong to the parent.  The child drops the runtime (closing
 * its descriptors and the parent's frame arena) and makes a new one on
 * first use, so that it can open devices and use uhmm itself.
 */
static void atfork_child(void)
{
	struct uhmm__as *as = g_as;
	tls_fork_holder = false;
	if (!as)
		return;
	g_as = NULL;
	g_init_err = 0;
	close(as->uffd);
	close(as->arena_uffd);
	if (as->sigbus_uffd >= 0)
		close(as->sigbus_uffd);
	close(as->maps_fd);
	close(as->pagemap_fd);
	close(as->wake_fd);
	close(as->stop_fd);
	syscall(SYS_munmap, as->arena, as->arena_frames << PG_SHIFT);
	uhmm__staging_fini(as);
	/* The rest of the old runtime's memory is abandoned in the child. */
	pthread_mutex_init(&g_init_lock, NULL);
}

static void install_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---- creation ------------------------------------------------------------ */

static uint64_t probe_ufeat(struct uhmm__as *as)
{
	uint64_t f = 0;
	if (as->features & UFFD_FEATURE_MOVE)
		f |= UHMM_FEAT_MOVE;
	if ((as->features & UFFD_FEATURE_EVENT_UNMAP) && (as->features & UFFD_FEATURE_EVENT_REMOVE))
		f |= UHMM_FEAT_EVENTS;
	f |= UHMM_FEAT_WP;
	struct pm_scan_arg a = { .size = sizeof(a), .start = 0, .end = 0 };
	if (ioctl(as->pagemap_fd, PAGEMAP_SCAN, &a) >= 0 || errno != ENOTTY)
		f |= UHMM_FEAT_PAGEMAP_SCAN;
	struct procmap_query q = { .size = sizeof(q), .query_addr = (uint64_t)(uintptr_t)&probe_ufeat };
	if (ioctl(as->maps_fd, PROCMAP_QUERY, &q) == 0)
		f |= UHMM_FEAT_PROCMAP_QUERY;
	return f;
}

static void as_destroy_fds(struct uhmm__as *as)
{
	int fds[] = { as->uffd, as->arena_uffd, as->sigbus_uffd, as->maps_fd, as->pagemap_fd,
		      as->wake_fd, as->stop_fd };
	for (unsigned i = 0; i < ARRAY_SIZE(fds); i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

static int as_create(struct uhmm__as **out)
{
	if (sysconf(_SC_PAGESIZE) != (long)PG_SIZE) {
		uhmm__log("page size is %ld; uhmm supports 4 KiB pages only", sysconf(_SC_PAGESIZE));
		return -ENOTSUP;
	}
	struct uhmm__as *as = uhmm__zalloc(sizeof(*as));
	if (!as)
		return -ENOMEM;
	as->uffd = as->arena_uffd = as->sigbus_uffd = as->maps_fd = as->pagemap_fd = as->wake_fd =
		as->stop_fd = -1;
	int rc = uhmm__uffd_open(&as->features);
	if (rc < 0) {
		uhmm__log("%s (%s)", uhmm__uffd_why(rc), strerror(-rc));
		uhmm__free(as, sizeof(*as));
		return rc == -EACCES ? -EPERM : rc;
	}
	as->uffd = rc;
	as->pid = getpid();
	as->maps_fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	as->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	as->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	as->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	as->pending = uhmm__zalloc(256 * sizeof(struct uffd_msg));
	as->hash_size = 4096;
	as->hash = uhmm__zalloc(as->hash_size * sizeof(*as->hash));
	rc = -ENOMEM;
	if (as->maps_fd < 0 || as->pagemap_fd < 0 || as->wake_fd < 0 || as->stop_fd < 0 ||
	    !as->hash || !as->pending) {
		rc = as->hash ? -errno : -ENOMEM;
		goto fail;
	}
	as->ufeat = probe_ufeat(as);
	pthread_rwlock_init(&as->fork_lock, NULL);
	pthread_mutex_init(&as->reg_lock, NULL);
	pthread_mutex_init(&as->read_lock, NULL);
	pthread_mutex_init(&as->nt_lock, NULL);
	pthread_cond_init(&as->nt_cond, NULL);
	pthread_mutex_init(&as->pt_lock, NULL);
	pthread_cond_init(&as->pt_cond, NULL);
	pthread_mutex_init(&as->arena_lock, NULL);
	pthread_mutex_init(&as->fwd_lock, NULL);
	rc = uhmm__arena_init(as);
	if (!rc)
		rc = uhmm__staging_init(as);
	if (rc)
		goto fail;
	if (uhmm__inject(INJ_THREAD)) {
		rc = -EAGAIN;
		goto fail;
	}
	rc = -pthread_create(&as->service, NULL, uhmm__service_main, as);
	if (rc)
		goto fail;
	pthread_setname_np(as->service, "uhmm-fault");
	as->service_started = true;
	uhmm__publish_start(as);  /* /dev/shm/uhmm.<pid>, UHMM_TRACE_FILE (publish.c) */
	*out = as;
	return 0;
fail:
	uhmm__log("runtime creation failed: %s", strerror(-rc));
	if (as->arena)
		syscall(SYS_munmap, as->arena, as->arena_frames << PG_SHIFT);
	uhmm__staging_fini(as);
	as_destroy_fds(as);
	uhmm__free(as->hash, as->hash_size * sizeof(*as->hash));
	uhmm__free(as, sizeof(*as));
	return rc;
}

struct uhmm__as *uhmm__as_peek(void)
{
	return __atomic_load_n(&g_as, __ATOMIC_ACQUIRE);
}

struct uhmm__as *uhmm__as_get(int *err)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (UHMM_LIKELY(as))
		return as;
	pthread_once(&g_atfork_once, install_atfork);
	uhmm__intercept_link();
	uhmm__lock(&g_init_lock);
	if (!g_as && !g_init_err) {
		int rc = as_create(&as);
		if (rc)
			g_init_err = rc;
		else
			__atomic_store_n(&g_as, as, __ATOMIC_RELEASE);
	}
	as = g_as;
	if (!as && err)
		*err = g_init_err;
	uhmm__unlock(&g_init_lock);
	return as;
}

int uhmm_init(void)
{
	int err = 0;
	return uhmm__as_get(&err) ? 0 : err;
}

uint64_t uhmm_features(void)
{
	struct uhmm__as *as = uhmm__as_get(NULL);
	return as ? as->ufeat : 0;
}

/*
 * At exit: devices are told (RELEASE) and the service thread stops.  Pages
 * still on devices are not brought back: the process is going away.
 */
__attribute__((destructor)) static void as_exit(void)
{
	struct uhmm__as *as = uhmm__as_peek();
	if (!as || as->pid != getpid())
		return;
	uhmm__notifier_release_all(as);
	uint64_t one = 1;
	if (write(as->stop_fd, &one, sizeof(one)) == sizeof(one) && as->service_started)
		pthread_join(as->service, NULL);
	uhmm__publish_exit();  /* the timeline written, /dev/shm/uhmm.<pid> removed */
}

