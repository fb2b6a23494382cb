/* SPDX-License-Identifier: MIT */
/*
 * uffd.c - the userfaultfd layer: opening it (syscall, then /dev/userfaultfd),
 * feature negotiation, registration and the resolve ioctls.  Owns nothing but
 * the translation of kernel errors into uhmm's errno contract; every ioctl
 * retries EAGAIN (the kernel returns it while the mm is changing).
 */
#include "internal.h"
#include "compat.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Features uhmm asks for; missing optional ones only disable a capability. */
#define WANTED_FEATURES (UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | \
			 UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_MISSING_SHMEM | \
			 UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_MOVE |     \
			 UFFD_FEATURE_THREAD_ID)

static int open_raw(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	int err = errno;
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0) {
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		int err2 = errno;
		close(dev);
		if (fd >= 0)
			return fd;
		err = err2;
	}
	return -err;
}

/* UFFDIO_MOVE/COPY/ZEROPAGE/WAKE go to the userfaultfd that registered dst. */
static int fd_for(struct uhmm__as *as, uint64_t dst)
{
	uint64_t a = (uint64_t)(uintptr_t)as->arena;
	if (as->arena_uffd >= 0 && dst >= a && dst < a + (as->arena_frames << PG_SHIFT))
		return as->arena_uffd;
	return uhmm__ss_has(as, dst) ? as->sigbus_uffd : as->uffd;
}

const char *uhmm__uffd_why(int err)
{
	switch (err) {
	case -EPERM:
		return "userfaultfd is not permitted for this user: run as root, or "
		       "'sysctl vm.unprivileged_userfaultfd=1', or give this user read-write "
		       "access to /dev/userfaultfd (UFFD_USER_MODE_ONLY is not enough: "
		       "uhmm must serve kernel-mode faults such as read(2) into device pages)";
	case -ENOSYS:
		return "this kernel has no userfaultfd (CONFIG_USERFAULTFD=n)";
	default:
		return "userfaultfd could not be opened";
	}
}

int uhmm__uffd_open(uint64_t *features_out)
{
	int fd = open_raw();
	if (fd < 0)
		return fd;
	/* First ask what the kernel has, then open again with what we want. */
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	if (ioctl(fd, UFFDIO_API, &api) != 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	uint64_t avail = api.features;
	close(fd);
	fd = open_raw();
	if (fd < 0)
		return fd;
	api = (struct uffdio_api){ .api = UFFD_API, .features = avail & WANTED_FEATURES };
	if (ioctl(fd, UFFDIO_API, &api) != 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	*features_out = api.features;
	return fd;
}

/*
 * The kernel answers EAGAIN while the address space is changing, and an
 * munmap/mremap/madvise of a registered range does not finish until its
 * event has been *read*.  The service thread is the reader: when it gets
 * EAGAIN it reads the pending messages itself (handled later) so the change
 * can complete; other threads wait for it.  False after 10 s of EAGAIN.
 */
static bool wait_again(struct uhmm__as *as, uint64_t *t0)
{
	if (!*t0)
		*t0 = uhmm__now_ns();
	else if (uhmm__now_ns() - *t0 > 10000000000ull)
		return false;
	if (!uhmm__in_service_thread() || !uhmm__uffd_drain(as))
		sched_yield();
	return true;
}

static int uffd_ioctl(struct uhmm__as *as, uint64_t dst, unsigned long req, void *arg)
{
	int fd = fd_for(as, dst);
	uint64_t t0 = 0;
	for (int tries = 0;; tries++) {
		if (UHMM_UNLIKELY(uhmm__inject(INJ_UFFD_IOCTL)) && tries == 0) {
			errno = EAGAIN;
		} else if (ioctl(fd, req, arg) == 0) {
			return 0;
		}
		if (errno != EAGAIN || !wait_again(as, &t0))
			return -errno;
	}
}

/* The arena's own userfaultfd: MOVE only, no events. */
int uhmm__uffd_open_arena(void)
{
	int fd = open_raw();
	if (fd < 0)
		return fd;
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_MOVE };
	if (ioctl(fd, UFFDIO_API, &api) != 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/*
 * The self-service ranges' userfaultfd: a fault on a missing page of a range
 * registered with it is a SIGBUS in the faulting thread (UFFD_FEATURE_SIGBUS),
 * no message; MOVE for migration; no events.  -EOPNOTSUPP without SIGBUS.
 */
int uhmm__uffd_open_sigbus(void)
{
	int fd = open_raw();
	if (fd < 0)
		return fd;
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_SIGBUS | UFFD_FEATURE_MOVE };
	if (ioctl(fd, UFFDIO_API, &api) != 0) {
		int err = errno == EINVAL ? -EOPNOTSUPP : -errno;
		close(fd);
		return err;
	}
	return fd;
}

int uhmm__uffd_register_fd(int fd, uint64_t start, uint64_t len, bool missing)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP | (missing ? UFFDIO_REGISTER_MODE_MISSING : 0),
	};
	TR('R', start, 0, len, missing);
	if (ioctl(fd, UFFDIO_REGISTER, &reg) == 0)
		return 0;
	if (!missing)
		return -errno;
	/* Some kernels refuse WP on some mappings; MISSING alone still works. */
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	return ioctl(fd, UFFDIO_REGISTER, &reg) == 0 ? 0 : -errno;
}

/* Drop fd's registration of [start, start + len) (none there: nothing). */
void uhmm__uffd_unregister(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_range ur = { .start = start, .len = len };
	if (fd >= 0)
		ioctl(fd, UFFDIO_UNREGISTER, &ur);
}

int uhmm__uffd_register(struct uhmm__as *as, uint64_t start, uint64_t len, bool missing)
{
	return uhmm__uffd_register_fd(as->uffd, start, len, missing);
}

/*
 * Move len bytes of pages from src to dst (both page aligned).  Returns 0
 * when all moved, else the kernel's error with *moved saying how far it got.
 * -ENOENT: src has a hole at src + *moved.  -EEXIST: dst populated there.
 * -EBUSY: the src page is shared (COW, pinned).
 */
int uhmm__uffd_move(struct uhmm__as *as, uint64_t dst, uint64_t src, uint64_t len,
		    bool wake, uint64_t *moved)
{
	return uhmm__uffd_move_mode(as, dst, src, len, wake ? 0 : UFFDIO_MOVE_MODE_DONTWAKE,
				    moved);
}

/* The same with the ioctl's mode bits (UFFDIO_MOVE_MODE_*). */
int uhmm__uffd_move_mode(struct uhmm__as *as, uint64_t dst, uint64_t src, uint64_t len,
			 uint64_t mode, uint64_t *moved)
{
	uint64_t done = 0, t0 = 0;
	int rc = 0;
	int fd = fd_for(as, dst);
	while (done < len) {
		struct uffdio_move mv = {
			.dst = dst + done, .src = src + done, .len = len - done, .mode = mode,
		};
		if (UHMM_UNLIKELY(uhmm__inject(INJ_UFFD_IOCTL))) {
			mv.move = -EAGAIN;
		} else if (ioctl(fd, UFFDIO_MOVE, &mv) == 0) {
			done = len;
			break;
		} else {
			rc = -errno;
		}
		if (mv.move > 0)
			done += (uint64_t)mv.move;
		else if (mv.move < 0)
			rc = (int)mv.move;
		if (rc != -EAGAIN || !wait_again(as, &t0))
			break;
		rc = 0;
	}
	if (moved)
		*moved = done;
	TR('M', dst, src, len, done == len ? 0 : (rc ? rc : -EIO));
	return done == len ? 0 : (rc ? rc : -EIO);
}

int uhmm__uffd_zeropage(struct uhmm__as *as, uint64_t dst, uint64_t len, bool wake)
{
	struct uffdio_zeropage zp = {
		.range = { .start = dst, .len = len },
		.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE,
	};
	int rc = uffd_ioctl(as, dst, UFFDIO_ZEROPAGE, &zp);
	TR('Z', dst, 0, len, rc);
	return rc;
}

/*
 * A copy interrupted part way (EAGAIN: the range is changing) goes on after
 * what it did; not through uffd_ioctl(), whose retry would repeat the part
 * already copied (-EEXIST).
 */
int uhmm__uffd_copy(struct uhmm__as *as, uint64_t dst, const void *src, uint64_t len)
{
	return uhmm__uffd_copy_wake(as, dst, src, len, true);
}

int uhmm__uffd_copy_wake(struct uhmm__as *as, uint64_t dst, const void *src, uint64_t len,
			 bool wake)
{
	uint64_t done = 0, t0 = 0;
	int rc = 0;
	int fd = fd_for(as, dst);
	while (done < len) {
		struct uffdio_copy cp = {
			.dst = dst + done, .src = (uint64_t)(uintptr_t)src + done, .len = len - done,
			.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE,
		};
		if (UHMM_UNLIKELY(uhmm__inject(INJ_UFFD_IOCTL))) {
			rc = -EAGAIN;
		} else if (ioctl(fd, UFFDIO_COPY, &cp) == 0) {
			done = len;
			rc = 0;
			break;
		} else {
			rc = -errno;
			if (cp.copy > 0)
				done += (uint64_t)cp.copy;
		}
		if (rc != -EAGAIN || !wait_again(as, &t0))
			break;
		rc = 0;
	}
	TR('C', dst, 0, len, done == len ? 0 : rc);
	return done == len ? 0 : (rc ? rc : -EIO);
}

int uhmm__uffd_wake(struct uhmm__as *as, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return ioctl(as->uffd, UFFDIO_WAKE, &r) == 0 ? 0 : -errno;
}
/* Read uffd messages, counting them under read_lock (see as->ev_read). */
ssize_t uhmm__uffd_read_msgs(struct uhmm__as *as, void *buf, size_t len)
{
	uhmm__lock(&as->read_lock);
	ssize_t n = read(as->uffd, buf, len);
	if (n > 0)
		as->ev_read += (uint64_t)n / sizeof(struct uffd_msg);
	uhmm__unlock(&as->read_lock);
	return n;
}

/*
 * The service thread, inside an operation that got EAGAIN: read what is
 * pending on the uffd without handling it (that may need locks the
 * operation holds), so that an munmap/mremap waiting for its event to be
 * read can finish.  The messages wait in as->pending for the service loop.
 * Returns true if anything was read.
 */
bool uhmm__uffd_drain(struct uhmm__as *as)
{
	if (!as->pending)
		return false;
	unsigned room = 256 - as->npending;
	if (!room)
		return false;
	ssize_t n = uhmm__uffd_read_msgs(as, as->pending + as->npending,
					 room * sizeof(struct uffd_msg));
	if (n <= 0)
		return false;
	as->npending += (unsigned)(n / (ssize_t)sizeof(struct uffd_msg));
	return true;
}

