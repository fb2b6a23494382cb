/* SPDX-License-Identifier: MIT */
/*
 * uhmm_dmirror.h - the reference device (a simulated driver written only
 * against uhmm.h, like the kernel's lib/test_hmm.c and its test_hmm_uapi.h)
 * and the test hooks (fault injection).  Installed beside uhmm.h and linked
 * by the same `pkg-config --libs uhmm`; uhmm.h itself holds only the HMM API.
 */
#ifndef UHMM_DMIRROR_H
#define UHMM_DMIRROR_H

#include <uhmm.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Fault injection (for tests)                                               */
/* ------------------------------------------------------------------------ */

/*
 * The environment variable UHMM_INJECT="point:percent[,point:percent...]",
 * read once at first use, makes operations fail at that rate.  Points:
 * device_alloc (device page allocation: -ENOMEM), sys_alloc (system page
 * allocation: -ENOMEM), copy (uhmm_page_copy: -EIO), uffd_ioctl (a
 * userfaultfd ioctl reports EAGAIN once; uhmm retries), thread (the
 * fault-service thread cannot be created: uhmm_init fails with -EAGAIN),
 * driver_copy (a driver-owned pool's copy in uhmm_migrate_copy fails with
 * -EIO as if the driver had failed it: the pages stay where they were).
 * Returns how often point fired in this process, or -1 for an unknown name.
 */
UHMM_API long uhmm_inject_fired(const char *point);

/* ------------------------------------------------------------------------ */
/* Reference device: the simulated driver (lib/test_hmm.c)                   */
/* ------------------------------------------------------------------------ */

/* Devices 0 and 1 have device-private memory, 2 and 3 device-coherent. */
#define UHMM_DMIRROR_NDEVICES 4

struct uhmm_dmirror;
struct uhmm_dmirror_cmd {
	uint64_t addr;    /* in: page-aligned virtual address in this process */
	uint64_t ptr;     /* in: caller buffer: data, or one byte per page for snapshot;
			     migrate_to_dev and exclusive copy what the device now
			     holds into it (0: no read-back) */
	uint64_t npages;  /* in: number of pages */
	uint64_t cpages;  /* out: pages copied / migrated / made exclusive */
	uint64_t faults;  /* out: device faults taken */
};

UHMM_API int  uhmm_dmirror_open(unsigned int dev, struct uhmm_dmirror **out);
UHMM_API void uhmm_dmirror_close(struct uhmm_dmirror *dm);
UHMM_API int  uhmm_dmirror_read(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);
UHMM_API int  uhmm_dmirror_write(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);
UHMM_API int  uhmm_dmirror_migrate_to_dev(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);
UHMM_API int  uhmm_dmirror_migrate_to_sys(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);
UHMM_API int  uhmm_dmirror_snapshot(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);
UHMM_API int  uhmm_dmirror_exclusive(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);
UHMM_API int  uhmm_dmirror_check_exclusive(struct uhmm_dmirror *dm, struct uhmm_dmirror_cmd *cmd);
UHMM_API int  uhmm_dmirror_release(struct uhmm_dmirror *dm);            /* evict all device memory */
UHMM_API int  uhmm_dmirror_set_flags(struct uhmm_dmirror *dm, uint64_t flags);
UHMM_API int  uhmm_dmirror_atomic_add(struct uhmm_dmirror *dm, uint64_t addr, uint64_t val,
				      uint64_t *old);                   /* device atomic on a u64 */
#define UHMM_DMIRROR_FLAG_FAIL_ALLOC (1ULL << 0)  /* next device-page allocation fails once */
/* Every copy call of the device's memory waits 50 us more, asleep, as for a
 * DMA completion (driver-owned memory only; see UHMM_DMIRROR_MEMORY). */
#define UHMM_DMIRROR_FLAG_SLOW_COPY  (1ULL << 1)
/*
 * Devices 0 and 1 keep their private memory in a buffer of their own
 * (a driver-owned pool: copies by memcpy, like the kernel's test driver).
 * The environment variable UHMM_DMIRROR_MEMORY=host, read when a device is
 * first opened, selects the zero-copy host-frame pool instead.
 */

/* Pool counters of a device (shared by every mirror opened on it). */
UHMM_API int uhmm_dmirror_devmem_stats(unsigned int dev, struct uhmm_devmem_stats *st);
/* Per-mirror counters: invalidations received, by event. */
UHMM_API int uhmm_dmirror_invalidations(struct uhmm_dmirror *dm, uint64_t counts[8]);

/* snapshot: one byte per page */
enum {
	UHMM_DMIRROR_PROT_ERROR = 0xFF, UHMM_DMIRROR_PROT_NONE = 0x00,
	UHMM_DMIRROR_PROT_READ = 0x01, UHMM_DMIRROR_PROT_WRITE = 0x02,
	UHMM_DMIRROR_PROT_PMD = 0x04, UHMM_DMIRROR_PROT_PUD = 0x08,
	UHMM_DMIRROR_PROT_ZERO = 0x10,
	UHMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL = 0x20, UHMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE = 0x30,
	UHMM_DMIRROR_PROT_DEV_COHERENT_LOCAL = 0x40, UHMM_DMIRROR_PROT_DEV_COHERENT_REMOTE = 0x50,
};

#ifdef __cplusplus
}
#endif
#endif /* UHMM_DMIRROR_H */
