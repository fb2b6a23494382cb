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
 *   NCPU                  CPU threads (0..2)
 *   WITH_DEV0, WITH_DEV1, WITH_MIGRATOR, WITH_TAKER, WITH_UNMAP
 *                         1 or 0: actor present
 *   NPICK                 2: every actor picks either page; 1: all use page 0
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
 *   MAX_RETRY             read_retry failures before a device command gives
 *                         up with -EBUSY (the kernel's range-fault timeout);
 *                         0 = retry for ever
 *   BUG_SKIP_INVALIDATE   mutant: migration to a device notifies nobody
 */

#ifndef CPU_OPS
#define CPU_OPS 2
#endif
#ifndef DEV_OPS
#define DEV_OPS 1
#endif
#ifndef NCPU
#define NCPU 2
#endif
#ifndef WITH_DEV0
#define WITH_DEV0 1
#endif
#ifndef WITH_DEV1
#define WITH_DEV1 1
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
#ifndef MAX_RETRY
#define MAX_RETRY 2
#endif

#define NP 2                    /* pages */
#ifndef NPICK
#define NPICK 2                 /* pages the actors choose from (1: page 0) */
#endif
#if NPICK == 1
#define PICK(p) p = 0
#else
#define PICK(p) if :: p = 0 :: p = 1 fi
#endif
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
bit stale[3];                   /* per reader: set_seq since read_begin */
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

/*
 * Readers of the notifier sequence: 0 = device thread 0, 1 = device thread 1,
 * 2 = the taker (device 1).  stale[r] == (seq != the value r read at
 * read_begin), kept as one bit so that the state space stays finite.
 */
inline set_seq(e)
{
	if
	:: e == 0 -> stale[0] = 1
	:: else -> stale[1] = 1; stale[2] = 1
	fi;
	dhit[e] = 1
}

/* The driver's invalidate callback of device e: its lock, set_seq, drop. */
inline callback(e, p, ev, ow)
{
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
		set_seq(e)
#else
		mir[IX(e, p)] = M_INV; set_seq(e)
#endif
	:: else ->
		mir[IX(e, p)] = M_INV; set_seq(e)
	fi
}

/*
 * Start of an invalidation, B not held: every mirror's callback in turn
 * (interval-tree order), one step each.
 */
inline inval_begin(p, ev, ow)
{
	atomic { nactive++; callback(0, p, ev, ow) };
	atomic { callback(1, p, ev, ow) }
}

/* End of an invalidation: read_begin() stops waiting (inside an atomic). */
inline inval_end()
{
	nactive--;
	if
	:: nactive == 0 -> dhit[0] = 0; dhit[1] = 0
	:: else
	fi
}

/* uhmm_interval_read_begin(): waits out an invalidation in progress. */
inline read_begin(rd, d)
{
	!dhit[d] -> stale[rd] = 0
}

/* ---- data moves (UFFDIO_MOVE / uhmm_page_copy): one place at a time ---- */

inline move_to_frame(p, d)
{
	assert(ALL_INV(p));                     /* I2 at the change point */
	assert(cpu[p] != EMPTY && frm[IX(d, p)] == EMPTY);
	frm[IX(d, p)] = cpu[p];
	cpu[p] = EMPTY
}

inline move_to_cpu(p, d)
{
	assert(ALL_INV(p));                     /* I2 at the change point */
	assert(frm[IX(d, p)] != EMPTY && cpu[p] == EMPTY);
	cpu[p] = frm[IX(d, p)];
	frm[IX(d, p)] = EMPTY
}

/*
 * CPU-fault path for a page on a device: revoke exclusivity (EXCLUSIVE,
 * owner NULL) or migrate back (MIGRATE, owner = the device).
 * to_sys_start: B held, st is DPRIV or EXCL; locks the page, drops B.
 * to_sys_rest:  notifies, moves the data back.
 * to_sys_finish: retakes B, st = SYS, wakes waiters; B stays held.
 */
inline to_sys_start(p)
{
	odv = own[p];
	if
	:: st[p] == EXCL -> ev = EV_EXCL; ow = NODEV
	:: else -> ev = EV_MIGRATE; ow = odv
	fi;
	st[p] = MIG;
	unlockB()
}

inline to_sys_rest(p)
{
	inval_begin(p, ev, ow);
	atomic {
		(ev != EV_MIGRATE || dlk[odv] == NOBODY) ->
		if
		:: ev == EV_MIGRATE ->
			/* the owner's migrate_to_ram drops its own entry */
			mir[IX(odv, p)] = M_INV
		:: else
		fi;
		move_to_cpu(p, odv);
		inval_end();
		odv = 0; ev = 0; ow = 0
	}
}

inline to_sys_finish(p)
{
	lockB();
	st[p] = SYS;
	bcast()
}

/* Exclusive grant to device d, same three parts (start: B held, st SYS). */
inline grant_start(p)
{
	st[p] = MIG;
	unlockB()
}

inline grant_rest(d, p)
{
	inval_begin(p, EV_EXCL, d);
	atomic { move_to_frame(p, d); inval_end() }
}

inline grant_finish(d, p)
{
	lockB();
	st[p] = EXCL;
	own[p] = d;
	bcast()
}

/* ---- CPU threads ---- */

proctype cpu_thread(byte id)
{
	byte n, p, k, v;
	bit done, r;

	do
	:: n < CPU_OPS ->
		PICK(p);
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
			:: else ->                      /* userfault: queue, sleep */
				fq!p, id;
				done = 0
			fi
		};
		if
		:: !done ->
			reply[id]?r;
			if
			:: r -> goto retry              /* the instruction restarts */
			:: else                         /* SIGSEGV: not modelled further */
			fi
		:: else
		fi;
		atomic { n++; p = 0; k = 0; v = 0; done = 0; r = 0 }
	:: else -> break
	od
}

/* ---- fault-service thread ---- */

active proctype fault_service()
{
	byte p, who, odv, ev, ow;
	bit r, act;

end:	do
	:: atomic {
		fq?p, who;
		lockB();
		wait_mig(p);
		if
		:: st[p] == UNMAPPED -> r = 0; act = 0
		:: st[p] == SYS -> r = 1; act = 0
		:: else -> r = 1; act = 1; to_sys_start(p)
		fi
	   };
		if
		:: act ->
			to_sys_rest(p);
			atomic { to_sys_finish(p); unlockB() }
		:: else -> unlockB()
		fi;
		atomic { reply[who]!r; p = 0; who = 0; odv = 0; ev = 0; ow = 0; r = 0; act = 0 }
	od
}

/* ---- device threads (and the taker) ---- */

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

/* uhmm_range_fault() for one page; r = 1: -EFAULT; newent: what to map. */
inline range_fault(d, p, k)
{
	atomic {
		lockB();
		wait_mig(p);
		if
		:: st[p] == UNMAPPED -> r = 1; act = 0
		:: st[p] == DPRIV && own[p] == d -> newent = M_DEV; act = 0
		:: st[p] == SYS -> newent = (k == K_READ -> M_RO : M_RW); act = 0
		:: else -> act = 1; to_sys_start(p)     /* the CPU-fault path */
		fi;
		if
		:: !act -> unlockB()
		:: else
		fi
	};
	if
	:: act ->
		to_sys_rest(p);
		atomic {
			to_sys_finish(p);
			newent = (k == K_READ -> M_RO : M_RW);
			unlockB()
		}
	:: else
	fi
}

/* uhmm_make_device_exclusive() for one page; r = 1: failed. */
inline make_excl(d, p)
{
	atomic {
		lockB();
		wait_mig(p);
		if
		:: st[p] == UNMAPPED -> r = 1; act = 0
		:: st[p] == DPRIV && own[p] == d -> newent = M_DEV; act = 0
		:: st[p] == EXCL && own[p] == d -> newent = M_EXC; act = 0
		:: st[p] == SYS -> act = 2; grant_start(p)
		:: else -> act = 1; to_sys_start(p)     /* another device's page */
		fi;
		if
		:: !act -> unlockB()
		:: else
		fi
	};
	if
	:: act == 1 ->
		to_sys_rest(p);
		atomic { to_sys_finish(p); grant_start(p) };
		act = 2
	:: else
	fi;
	if
	:: act == 2 ->
		grant_rest(d, p);
		atomic { grant_finish(d, p); newent = M_EXC; unlockB() }
	:: else
	fi
}

/* One device command on page p: fault until the mirror allows it. */
inline devop(rd, d, p, k)
{
	do
	:: atomic {
		dlk[d] == NOBODY ->
		ent = mir[IX(d, p)];
		access(d, p, k, ent);
		ent = 0;
		if
		:: !done -> read_begin(rd, d)
		:: else
		fi
	   };
		if
		:: done -> break
		:: else
		fi;
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
			:: stale[rd] -> done = 0        /* read_retry: again */
			:: else ->
				mir[IX(d, p)] = newent;
				access(d, p, k, newent);
				assert(done)
			fi;
			newent = 0
		};
		if
		:: done -> break
#if MAX_RETRY > 0
		:: tries + 1 >= MAX_RETRY -> r = 1; break       /* -EBUSY */
		:: else -> tries++
#else
		:: else
#endif
		fi
	od
}

proctype device_thread(byte d)
{
	byte n, p, k, v, ent, newent, tries, odv, ev, ow, rd = d;
	bit done, r;
	byte act;

	do
	:: n < DEV_OPS ->
		PICK(p);
		if
		:: k = K_READ
		:: k = K_WRITE
		:: k = K_ATOMIC
		fi;
		v = (3 + d) * 16 + n + 1;
		devop(rd, d, p, k);
		atomic { n++; p = 0; k = 0; v = 0; ent = 0; newent = 0; tries = 0;
			 odv = 0; ev = 0; ow = 0; done = 0; r = 0; act = 0 }
	:: else -> break
	od
}

/* uhmm_dmirror_exclusive() of one page on device d */
proctype taker(byte d)
{
	byte p, k = K_TAKE, v, ent, newent, tries, odv, ev, ow, rd = 2;
	bit done, r;
	byte act;

	PICK(p);
	devop(rd, d, p, k)
}

/* ---- migrator: device d migrates a page to itself and back ---- */

proctype migrator(byte d)
{
	byte p, odv, ev, ow;
	bit act;

	PICK(p);
	/* uhmm_dmirror_migrate_to_dev: setup locks the page if it is SYS */
	atomic {
		lockB();
		if
		:: st[p] == SYS -> st[p] = MIG; act = 1
		:: else -> act = 0
		fi;
		unlockB()
	};
	if
	:: act ->
#ifndef BUG_SKIP_INVALIDATE
		inval_begin(p, EV_MIGRATE, d);
		atomic { move_to_frame(p, d); inval_end() };
#else
		atomic { move_to_frame(p, d) };
#endif
#if !LATE_MAP
		/* the driver maps its frame while the page is still locked */
		atomic { dlk[d] == NOBODY -> mir[IX(d, p)] = M_DEV };
#endif
		atomic { lockB(); st[p] = DPRIV; own[p] = d; bcast(); unlockB() };
#if LATE_MAP
		atomic { dlk[d] == NOBODY -> mir[IX(d, p)] = M_DEV };
#endif
	:: else
	fi;
	/* uhmm_dmirror_migrate_to_sys */
	atomic {
		lockB();
		wait_mig(p);
		if
		:: st[p] == DPRIV && own[p] == d -> act = 1; to_sys_start(p)
		:: else -> act = 0; unlockB()
		fi
	};
	if
	:: act ->
		to_sys_rest(p);
		atomic { to_sys_finish(p); unlockB() }
	:: else
	fi
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
	atomic { lockB(); wait_mig(p); os = st[p]; st[p] = MIG; unlockB() };
	inval_begin(p, EV_UNMAP, NODEV);
	atomic {
		/* the real munmap(), then the page is marked gone under B */
		assert(ALL_INV(p));             /* I2 at the change point */
		free_frame(p, os);
		cpu[p] = EMPTY;
		inval_end();
		lockB();
		st[p] = UNMAPPED;
		bcast();
		unlockB()
	}
#else
	inval_begin(p, EV_UNMAP, NODEV);
	atomic {
		lockB();
		wait_mig(p);
		os = st[p];
		free_frame(p, os);
		st[p] = UNMAPPED;
		bcast();
		unlockB()
	};
	atomic {                                /* the real munmap() */
		assert(ALL_INV(p));             /* I2 at the change point */
		cpu[p] = EMPTY;
		inval_end()
	}
#endif
}

/* ---- data placement, checked in every state ---- */

active proctype monitor()
{
end:	atomic { !(PLACED(0) && PLACED(1)) -> assert(false) }
}

init {
	atomic {
#if NCPU > 0
		run cpu_thread(0);
#endif
#if NCPU > 1
		run cpu_thread(1);
#endif
#if WITH_DEV0
		run device_thread(0);
#endif
#if WITH_DEV1
		run device_thread(1);
#endif
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
