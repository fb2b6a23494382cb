/* SPDX-License-Identifier: MIT */
/*
 * demo.c - uhmm in a few lines: a malloc'd buffer is read and written by the
 * reference device through its mirror, migrated to device memory and faulted
 * back by the CPU, and the mirror is invalidated when the CPU changes the
 * mapping.  Prints what happened.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <uhmm.h>
#include <uhmm_dmirror.h>

#define NPAGES 64

static int die(const char *what, int rc)
{
	fprintf(stderr, "demo: %s: %s\n", what, strerror(-rc));
	return 1;
}

int main(void)
{
	struct uhmm_dmirror *dev;
	int rc = uhmm_dmirror_open(0, &dev);
	if (rc)
		return die("open device 0", rc);
	size_t size = NPAGES * UHMM_PAGE_SIZE;
	unsigned char *buf, *mirror = malloc(size);
	if (posix_memalign((void **)&buf, UHMM_PAGE_SIZE, size) || !mirror)
		return die("allocate", -ENOMEM);
	for (size_t i = 0; i < size; i++)
		buf[i] = (unsigned char)i;

	struct uhmm_dmirror_cmd cmd = { .addr = (uintptr_t)buf, .ptr = (uintptr_t)mirror,
					.npages = NPAGES };
	if ((rc = uhmm_dmirror_read(dev, &cmd)))
		return die("device read", rc);
	printf("device read  %3llu pages of malloc'd memory: %llu device fault(s), data %s\n",
	       (unsigned long long)cmd.cpages, (unsigned long long)cmd.faults,
	       memcmp(buf, mirror, size) ? "WRONG" : "matches the CPU's");

	memset(mirror, 0xab, size);
	if ((rc = uhmm_dmirror_write(dev, &cmd)))
		return die("device write", rc);
	printf("device write %3llu pages: %llu fault(s); the CPU reads 0x%02x\n",
	       (unsigned long long)cmd.cpages, (unsigned long long)cmd.faults, buf[100]);

	if ((rc = uhmm_dmirror_migrate_to_dev(dev, &cmd)))
		return die("migrate to device", rc);
	struct uhmm_stats st0, st1;
	uhmm_stats_get(&st0);
	unsigned sum = 0;
	for (size_t i = 0; i < size; i += UHMM_PAGE_SIZE)
		sum += buf[i];
	uhmm_stats_get(&st1);
	printf("migrated %llu pages to device-private memory; the CPU touched them: "
	       "%llu CPU faults brought them back (sum %u)\n", (unsigned long long)cmd.cpages,
	       (unsigned long long)(st1.cpu_faults_private - st0.cpu_faults_private), sum);

	uint64_t inv0[8], inv1[8];
	uhmm_dmirror_invalidations(dev, inv0);
	mprotect(buf, size, PROT_READ);
	uhmm_dmirror_invalidations(dev, inv1);
	rc = uhmm_dmirror_write(dev, &cmd);
	printf("mprotect(PROT_READ): %llu invalidation(s) before it returned; device write now: %s\n",
	       (unsigned long long)(inv1[UHMM_NOTIFY_PROTECTION_VMA] - inv0[UHMM_NOTIFY_PROTECTION_VMA]),
	       rc == -EPERM ? "-EPERM (as it must)" : strerror(-rc));
	mprotect(buf, size, PROT_READ | PROT_WRITE);

	uhmm_dmirror_close(dev);
	struct uhmm_devmem_stats ds;
	uhmm_dmirror_devmem_stats(0, &ds);
	printf("closed: device pages in use %llu (allocated %llu, freed %llu)\n",
	       (unsigned long long)ds.in_use, (unsigned long long)ds.allocated,
	       (unsigned long long)ds.freed);
	free(buf);
	free(mirror);
	return 0;
}
