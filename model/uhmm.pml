/*
 * uhmm.pml - Promela model of uhmm's page protocol (page states, the per-block
 * mutex and condition variable, interval-notifier invalidation, device mirrors,
 * CPU faults served by the fault-service thread, migration, device exclusivity
 * and the munmap interposer).  Checked with spin by model/run.sh; described in
 * docs/model.md.
 *
 * Actors: 2 CPU threads, 1 fault-service thread, 2 devices (device lock, mirror
 * table, one device thread each), a migrator (device 0: migrate a page to the
 * device and back), an exclusivity taker (device 1), an unmapper, and a monitor
 * that checks the data-placement invariant in every state.  2 pages, one block.
 *
 * Build-time switches (spin -DNAME=VALUE):
 *   CPU_OPS, DEV_OPS      operations per CPU thread / device thread
 *   WITH_MIGRATOR, WITH_TAKER, WITH_UNMAP   1 or 0: actor present
 *   UNMAP_PAGE            page the unmapper unmaps
 *   SKIP_MODE             owner filter of the driver's invalidate callback for
 *                         MIGRATE/EXCLUSIVE events it caused itself:
 *                         2 = drop its entries for system pages and set the
 *                             sequence, keep entries for its own frames (default)
 *                         1 = return at once (as first briefed: stale entries)
 *                         0 = no filter (drop everything, set the sequence)
 *   LATE_MAP              1 = a migration maps the device frame into the
 *                         mirror after the page is unlocked (as first briefed)
 *   UNMAP_LOCK_FIRST      1 = the unmapper locks the page (MIGRATING) before it
 *                         invalidates (default); 0 = invalidate first (briefed)
 *   BUG_SKIP_INVALIDATE   mutant: migration to a device notifies nobody
 */

#ifndef CPU_OPS
#define CPU_OPS 2
#endif
#ifndef DEV_OPS
#define DEV_OPS 1
#endif
#ifndef WITH_MIGRATOR
#define WITH_MIGRATOR 1
#endif
#ifndef WITH_TAKER
#define WITH_TAKER 1
#endif
#ifndef WITH_UNMAP
#define WITH_UNMAP 1
#endif
#ifndef UNMAP_PAGE
#define UNMAP_PAGE 1
#endif
#ifndef SKIP_MODE
#define SKIP_MODE 2
#endif
#ifndef LATE_MAP
#define LATE_MAP 0
#endif
#ifndef UNMAP_LOCK_FIRST
#define UNMAP_LOCK_FIRST 1
#endif

#define NP 2                    /* pages */
#define ND 2                    /* devices */
#define NOBODY 255              /* lock owner: free */
#define EMPTY 255               /* data slot: holds no data */
#define NODEV 255               /* invalidation owner: NULL */

/* page states (runtime metadata, under B) */
#define SYS 0                   /* CPU-mapped */
#define MIG 1                   /* MIGRATING: the page lock */
#define DPRIV 2                 /* DEVICE_PRIVATE(own[p]) */
#define EXCL 3                  /* EXCLUSIVE(own[p]) */
#define UNMAPPED 4

/* mirror entries */
#define M_INV 0
#define M_RO 1                  /* system page, read */
#define M_RW 2                  /* system page, read/write */
#define M_EXC 3                 /* exclusive frame of this device */
#define M_DEV 4                 /* private frame of this device */

/* invalidation events */
#define EV_UNMAP 0
#define EV_MIGRATE 1
#define EV_EXCL 2

/* access kinds */
#define K_READ 0
#define K_WRITE 1
#define K_ATOMIC 2
#define K_TAKE 3                /* make exclusive, no data access */

#define IX(d, p) ((d) * NP + (p))

byte st[NP];                    /* page state */
byte own[NP];                   /* device of DPRIV/EXCL */
byte cpu[NP];                   /* data in the CPU mapping, or EMPTY */
byte frm[ND * NP] = EMPTY;      /* data in a device frame, or EMPTY */
byte shadow[NP];                /* last value written to the page */
bit gone[NP];                   /* ghost: the unmapper discarded the data */
byte mir[ND * NP];              /* device mirror tables */
byte dlk[ND] = NOBODY;          /* device locks */
byte dseq[ND];                  /* notifier sequence per device mirror */
bit dhit[ND];                   /* mirror hit by an invalidation in progress */
byte nactive;                   /* invalidations in progress */
byte Bown = NOBODY;             /* per-block mutex B (one block: both pages) */
int wq;                         /* B's condition variable: bit per waiter */
chan fq = [2] of { byte, byte };        /* CPU faults: page, thread */
chan reply[2] = [1] of { bit };         /* 1: resolved, retry; 0: SIGSEGV */

#define ALL_INV(p) (mir[IX(0, p)] == M_INV && mir[IX(1, p)] == M_INV)
#define NPLACES(p) ((cpu[p] != EMPTY) + (frm[IX(0, p)] != EMPTY) + \
		    (frm[IX(1, p)] != EMPTY))
#define PLACED(p) (NPLACES(p) <= 1 && (gone[p] || NPLACES(p) == 1 && \
		   (st[p] != SYS || cpu[p] != EMPTY) && \
		   (st[p] != DPRIV && st[p] != EXCL || frm[IX(own[p], p)] != EMPTY)))

/* ---- per-block mutex and condition variable ---- */

inline lockB()
{
	atomic { Bown == NOBODY -> Bown = _pid }
}

inline unlockB()
{
	assert(Bown == _pid);
	Bown = NOBODY
}

/* pthread_cond_wait: release B and sleep; a broadcast wakes; retake B. */
inline waitB()
{
	atomic { assert(Bown == _pid); wq = wq | (1 << _pid); Bown = NOBODY };
	atomic { (wq & (1 << _pid)) == 0 && Bown == NOBODY -> Bown = _pid }
}

inline bcast()
{
	wq = 0
}

inline wait_mig(p)
{
	do
	:: st[p] == MIG -> waitB()
	:: else -> break
	od
}

/* ---- interval notifiers ---- */

/* The driver's invalidate callback of device e: its lock, set_seq, drop. */
inline callback(e, p, ev, ow)
{
	atomic {
		dlk[e] == NOBODY ->
		if
		:: ev != EV_UNMAP && ow == e ->
#if SKIP_MODE == 1
			skip
#elif SKIP_MODE == 2
			if
			:: mir[IX(e, p)] == M_RO || mir[IX(e, p)] == M_RW ->
				mir[IX(e, p)] = M_INV
			:: else
			fi;
			dseq[e]++; dhit[e] = 1
#else
			mir[IX(e, p)] = M_INV; dseq[e]++; dhit[e] = 1
#endif
		:: else ->
			mir[IX(e, p)] = M_INV; dseq[e]++; dhit[e] = 1
		fi
	}
}

/* Start of an invalidation: every mirror's callback, without B held. */
inline inval_begin(p, ev, ow)
{
	nactive++;
	callback(0, p, ev, ow);
	callback(1, p, ev, ow)
}

/* End of an invalidation: read_begin() stops waiting. */
inline inval_end()
{
	atomic {
		nactive--;
		if
		:: nactive == 0 -> dhit[0] = 0; dhit[1] = 0
		:: else
		fi
	}
}

/* uhmm_interval_read_begin(): waits out an invalidation in progress. */
inline read_begin(d)
{
	atomic { !dhit[d] -> s = dseq[d] }
}

/* ---- data moves (UFFDIO_MOVE / uhmm_page_copy): atomic, one place ---- */

inline move_to_frame(p, d)
{
	d_step {
		assert(ALL_INV(p));             /* I2 at the change point */
		assert(cpu[p] != EMPTY && frm[IX(d, p)] == EMPTY);
		frm[IX(d, p)] = cpu[p];
		cpu[p] = EMPTY
	}
}

inline move_to_cpu(p, d)
{
	d_step {
		assert(ALL_INV(p));             /* I2 at the change point */
		assert(frm[IX(d, p)] != EMPTY && cpu[p] == EMPTY);
		cpu[p] = frm[IX(d, p)];
		frm[IX(d, p)] = EMPTY
	}
}

/*
 * CPU-fault path for a page on a device (B held, st is DPRIV or EXCL):
 * revoke exclusivity or migrate back to the CPU; returns with B held, SYS.
 */
inline to_sys(p)
{
	odv = own[p];
	if
	:: st[p] == EXCL -> ev = EV_EXCL; ow = NODEV
	:: else -> ev = EV_MIGRATE; ow = odv
	fi;
	st[p] = MIG;
	unlockB();
	inval_begin(p, ev, ow);
	if
	:: ev == EV_MIGRATE ->
		/* owner's migrate_to_ram drops its own entry under its lock */
		atomic { dlk[odv] == NOBODY -> mir[IX(odv, p)] = M_INV }
	:: else
	fi;
	move_to_cpu(p, odv);
	inval_end();
	atomic { lockB(); st[p] = SYS; bcast() }
}

/* Exclusive grant to device d (B held, st SYS); returns with B held. */
inline grant(d, p)
{
	st[p] = MIG;
	unlockB();
	inval_begin(p, EV_EXCL, d);
	move_to_frame(p, d);
	inval_end();
	atomic { lockB(); st[p] = EXCL; own[p] = d; bcast() }
}

/* ---- CPU threads ---- */

proctype cpu_thread(byte id)
{
	byte n, p, k, v;
	bit done, r;

	do
	:: n < CPU_OPS ->
		if
		:: p = 0
		:: p = 1
		fi;
		if
		:: k = K_READ
		:: k = K_WRITE
		fi;
		v = (id + 1) * 16 + n + 1;
retry:
		atomic {
			if
			:: cpu[p] != EMPTY ->           /* mapped: direct access */
				if
				:: k == K_READ -> assert(cpu[p] == shadow[p])
				:: else -> cpu[p] = v; shadow[p] = v
				fi;
				done = 1
			:: else ->                      /* userfault */
				fq!p, id;
				done = 0
			fi
		};
		if
		:: !done ->
			reply[id]?r;
			if
			:: r -> goto retry
			:: else                         /* SIGSEGV: not modelled further */
			fi
		:: else
		fi;
		n++
	:: else -> break
	od
}

/* ---- fault-service thread ---- */

active proctype fault_service()
{
	byte p, who, odv, ev, ow;
	bit r;

end:	do
	:: fq?p, who ->
		lockB();
		wait_mig(p);
		if
		:: st[p] == UNMAPPED -> r = 0
		:: st[p] == DPRIV || st[p] == EXCL -> to_sys(p); r = 1
		:: st[p] == SYS -> r = 1
		fi;
		unlockB();
		reply[who]!r
	od
}

/* ---- device threads (and the device side of the taker) ---- */

/* Under the device lock: use entry ent for kind k if it allows it. */
inline access(d, p, k, ent)
{
	if
	:: k == K_READ && ent != M_INV || k == K_WRITE && ent >= M_RW ||
	   k >= K_ATOMIC && ent >= M_EXC ->
		if
		:: ent == M_RO || ent == M_RW ->
			assert(cpu[p] != EMPTY);        /* never through a stale entry */
			if
			:: k == K_READ -> assert(cpu[p] == shadow[p])
			:: else -> cpu[p] = v; shadow[p] = v
			fi
		:: else ->
			assert(frm[IX(d, p)] != EMPTY);
			if
			:: k == K_READ -> assert(frm[IX(d, p)] == shadow[p])
			:: k == K_WRITE -> frm[IX(d, p)] = v; shadow[p] = v
			:: k == K_ATOMIC ->
				assert(frm[IX(d, p)] == shadow[p]);
				frm[IX(d, p)] = v; shadow[p] = v
			:: k == K_TAKE -> skip
			fi
		fi;
		done = 1
	:: else -> done = 0
	fi
}

/* uhmm_range_fault() for one page; r = 1: -EFAULT. */
inline range_fault(d, p, k)
{
	lockB();
	wait_mig(p);
	if
	:: st[p] == UNMAPPED -> r = 1
	:: st[p] == DPRIV && own[p] == d -> r = 0; newent = M_DEV
	:: st[p] == DPRIV && own[p] != d || st[p] == EXCL ->
		to_sys(p);
		r = 0; newent = (k == K_READ -> M_RO : M_RW)
	:: st[p] == SYS -> r = 0; newent = (k == K_READ -> M_RO : M_RW)
	fi;
	unlockB()
}

/* uhmm_make_device_exclusive() for one page; r = 1: failed. */
inline make_excl(d, p)
{
	lockB();
	wait_mig(p);
	if
	:: st[p] == UNMAPPED -> r = 1
	:: st[p] == DPRIV && own[p] == d -> r = 0; newent = M_DEV
	:: st[p] == EXCL && own[p] == d -> r = 0; newent = M_EXC
	:: (st[p] == DPRIV || st[p] == EXCL) && own[p] != d ->
		to_sys(p); grant(d, p); r = 0; newent = M_EXC
	:: st[p] == SYS -> grant(d, p); r = 0; newent = M_EXC
	fi;
	unlockB()
}

/* One device command on page p: fault until the mirror allows it. */
inline devop(d, p, k)
{
	do
	:: atomic { dlk[d] == NOBODY -> ent = mir[IX(d, p)]; access(d, p, k, ent) };
		if
		:: done -> break
		:: else
		fi;
		read_begin(d);
		if
		:: k >= K_ATOMIC -> make_excl(d, p)
		:: else -> range_fault(d, p, k)
		fi;
		if
		:: r -> break                           /* -EFAULT */
		:: else
		fi;
		atomic {
			dlk[d] == NOBODY ->
			if
			:: dseq[d] != s -> done = 0     /* read_retry: again */
			:: else ->
				mir[IX(d, p)] = newent;
				access(d, p, k, newent);
				assert(done)
			fi
		};
		if
		:: done -> break
		:: else
		fi
	od
}

proctype device_thread(byte d)
{
	byte n, p, k, v, ent, newent, s, odv, ev, ow;
	bit done, r;

	do
	:: n < DEV_OPS ->
		if
		:: p = 0
		:: p = 1
		fi;
		if
		:: k = K_READ
		:: k = K_WRITE
		:: k = K_ATOMIC
		fi;
		v = (3 + d) * 16 + n + 1;
		devop(d, p, k);
		n++
	:: else -> break
	od
}

/* uhmm_dmirror_exclusive() on device 1 */
proctype taker(byte d)
{
	byte p, k, v, ent, newent, s, odv, ev, ow;
	bit done, r;

	if
	:: p = 0
	:: p = 1
	fi;
	k = K_TAKE;
	devop(d, p, k)
}

/* ---- migrator: device 0 migrates a page to itself and back ---- */

proctype migrator(byte d)
{
	byte p, odv, ev, ow;

	if
	:: p = 0
	:: p = 1
	fi;
	/* migrate_to_dev */
	lockB();
	if
	:: st[p] != SYS -> unlockB()
	:: else ->
		st[p] = MIG;
		unlockB();
#ifndef BUG_SKIP_INVALIDATE
		inval_begin(p, EV_MIGRATE, d);
#endif
		move_to_frame(p, d);
#ifndef BUG_SKIP_INVALIDATE
		inval_end();
#endif
#if !LATE_MAP
		/* the driver maps its frame while the page is still locked */
		atomic { dlk[d] == NOBODY -> mir[IX(d, p)] = M_DEV };
#endif
		atomic { lockB(); st[p] = DPRIV; own[p] = d; bcast(); unlockB() };
#if LATE_MAP
		atomic { dlk[d] == NOBODY -> mir[IX(d, p)] = M_DEV };
#endif
	fi;
	/* migrate_to_sys */
	lockB();
	wait_mig(p);
	if
	:: st[p] == DPRIV && own[p] == d -> to_sys(p)
	:: else
	fi;
	unlockB()
}

/* ---- unmapper: munmap() of one page through the interposer ---- */

inline free_frame(p, os)
{
	gone[p] = 1;
	if
	:: os == DPRIV || os == EXCL -> frm[IX(own[p], p)] = EMPTY
	:: else
	fi
}

proctype unmapper(byte p)
{
	byte os;

#if UNMAP_LOCK_FIRST
	lockB();
	wait_mig(p);
	os = st[p];
	st[p] = MIG;
	unlockB();
	inval_begin(p, EV_UNMAP, NODEV);
	d_step {                                /* the real munmap() */
		assert(ALL_INV(p));             /* I2 at the change point */
		free_frame(p, os);
		cpu[p] = EMPTY
	};
	atomic { lockB(); st[p] = UNMAPPED; bcast(); unlockB() };
	inval_end()
#else
	inval_begin(p, EV_UNMAP, NODEV);
	lockB();
	wait_mig(p);
	d_step { os = st[p]; free_frame(p, os); st[p] = UNMAPPED };
	bcast();
	unlockB();
	d_step {                                /* the real munmap() */
		assert(ALL_INV(p));             /* I2 at the change point */
		cpu[p] = EMPTY
	};
	inval_end()
#endif
}

/* ---- data placement, checked in every state ---- */

active proctype monitor()
{
end:	atomic { !(PLACED(0) && PLACED(1)) -> assert(false) }
}

init {
	atomic {
		run cpu_thread(0);
		run cpu_thread(1);
		run device_thread(0);
		run device_thread(1);
#if WITH_MIGRATOR
		run migrator(0);
#endif
#if WITH_TAKER
		run taker(1);
#endif
#if WITH_UNMAP
		run unmapper(UNMAP_PAGE);
#endif
	}
}
