/* SPDX-License-Identifier: MIT */
/*
 * timeline.c - the event timeline (UHMM_TRACE_FILE=out.json): owns the ring
 * of the events uhmm__event sees (faults, migrations, invalidations,
 * exclusive grants and revocations) and writes it at exit in the Chrome
 * trace-event JSON format that Perfetto and chrome://tracing open.
 *
 * Bounded memory: a ring of UHMM_TRACE_EVENTS slots (default 1 << 16,
 * uhmm__zalloc'd once); when it wraps the oldest events are overwritten and
 * counted as dropped.  Recording is lock-free: one atomic slot claim, the
 * fields, then the slot's sequence number (release), which the writer
 * checks.  The file is written with write(2) from uhmm__zalloc'd memory
 * (no stdio, no heap: at exit a heap page may still be on a device).
 */
#include "internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TL_DEFAULT_SLOTS (1u << 16)
#define TL_OUT_BUF (64u << 10)
#define TL_MAX_TIDS 256

struct tl_ev {
	uint64_t seq;           /* claim index + 1 once complete; 0 while written */
	uint64_t ts_ns, dur_ns, addr, len;
	uint32_t type, arg;
	uint32_t tid;
	uint32_t service;       /* recorded on the fault-service thread (1), a fault worker (2) */
};

static struct tl_ev *g_ring;    /* atomic; NULL: not recording */
static struct tl_ev *g_mem;     /* the ring's memory (kept across fork) */
static uint64_t g_slots, g_mem_slots;
static uint64_t g_head;         /* atomic: events claimed */
static pid_t g_tl_pid;
static bool g_forked;           /* a fork child: writes <file>.<pid> */
static char g_file[4096];
static __thread uint32_t tls_tid;
static pthread_once_t g_tl_once = PTHREAD_ONCE_INIT;

/* A fork child records nothing of its parent's and writes its own file. */
static void tl_atfork_child(void)
{
	if (g_ring || g_mem)
		g_forked = true;
	__atomic_store_n(&g_ring, NULL, __ATOMIC_RELAXED);
	tls_tid = 0;
}

static void tl_install_atfork(void)
{
	pthread_atfork(NULL, NULL, tl_atfork_child);
}

bool uhmm__timeline_on(void)
{
	return __atomic_load_n(&g_ring, __ATOMIC_RELAXED) != NULL;
}

/* At runtime creation (publish.c): starts recording if UHMM_TRACE_FILE is set. */
void uhmm__timeline_start(void)
{
	pthread_once(&g_tl_once, tl_install_atfork);
	const char *path = getenv("UHMM_TRACE_FILE");
	if (!path || !*path || g_ring)
		return;
	uint64_t slots = TL_DEFAULT_SLOTS;
	const char *e = getenv("UHMM_TRACE_EVENTS");
	if (e && strtoull(e, NULL, 0) >= 16) {
		slots = strtoull(e, NULL, 0);
		if (slots > (1u << 24))
			slots = 1u << 24;
		while (slots & (slots - 1))
			slots &= slots - 1;  /* a power of two */
	}
	int n = g_forked ? snprintf(g_file, sizeof(g_file), "%s.%d", path, (int)getpid())
			 : snprintf(g_file, sizeof(g_file), "%s", path);
	if (n < 0 || (size_t)n >= sizeof(g_file)) {
		uhmm__log("UHMM_TRACE_FILE: name too long; no timeline");
		return;
	}
	if (g_mem && g_mem_slots != slots) {
		uhmm__free(g_mem, g_mem_slots * sizeof(*g_mem));
		g_mem = NULL;
	}
	if (g_mem) {
		memset(g_mem, 0, slots * sizeof(*g_mem));
	} else {
		g_mem = uhmm__zalloc(slots * sizeof(*g_mem));
		if (!g_mem) {
			uhmm__log("UHMM_TRACE_FILE: no memory for %" PRIu64 " events; no timeline",
				  slots);
			return;
		}
		g_mem_slots = slots;
	}
	g_slots = slots;
	g_tl_pid = getpid();
	__atomic_store_n(&g_head, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&g_ring, g_mem, __ATOMIC_RELEASE);
}

/* From uhmm__obs_event; ts_ns is when the work started. */
void uhmm__timeline_record(uint32_t type, uint32_t arg, uint64_t addr, uint64_t len,
			   uint64_t ts_ns, uint64_t dur_ns)
{
	struct tl_ev *r = __atomic_load_n(&g_ring, __ATOMIC_ACQUIRE);
	if (!r)
		return;
	uint64_t i = __atomic_fetch_add(&g_head, 1, __ATOMIC_RELAXED);
	struct tl_ev *e = &r[i & (g_slots - 1)];
	if (UHMM_UNLIKELY(!tls_tid))
		tls_tid = (uint32_t)syscall(SYS_gettid);
	__atomic_store_n(&e->seq, 0, __ATOMIC_RELAXED);
	/* release: whoever sees a field of this lap sees seq cleared before it */
	__atomic_store_n(&e->ts_ns, ts_ns, __ATOMIC_RELEASE);
	__atomic_store_n(&e->dur_ns, dur_ns, __ATOMIC_RELEASE);
	__atomic_store_n(&e->addr, addr, __ATOMIC_RELEASE);
	__atomic_store_n(&e->len, len, __ATOMIC_RELEASE);
	__atomic_store_n(&e->type, type, __ATOMIC_RELEASE);
	__atomic_store_n(&e->arg, arg, __ATOMIC_RELEASE);
	__atomic_store_n(&e->tid, tls_tid, __ATOMIC_RELEASE);
	__atomic_store_n(&e->service, uhmm__in_service_thread() ? 1u : uhmm__in_fault_worker() ? 2u : 0u,
			 __ATOMIC_RELEASE);
	__atomic_store_n(&e->seq, i + 1, __ATOMIC_RELEASE);
}

/* ---- writing ------------------------------------------------------------ */

struct out {
	int fd;
	char *buf;
	size_t n;
	bool err;
};

static void out_flush(struct out *o)
{
	size_t off = 0;
	while (off < o->n && !o->err) {
		ssize_t w = write(o->fd, o->buf + off, o->n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			o->err = true;
		else
			off += (size_t)w;
	}
	o->n = 0;
}

static void out_printf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct out *o, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (o->n + (size_t)n > TL_OUT_BUF)
		out_flush(o);
	memcpy(o->buf + o->n, line, (size_t)n);
	o->n += (size_t)n;
}

static const char *const notify_names[8] = {
	"unmap", "clear", "protection_vma", "protection_page", "release", "migrate",
	"exclusive", "event7",
};
static const char *const cause_names[4] = { "none", "private", "exclusive", "missing" };

static void write_event(struct out *o, const struct tl_ev *e, int pid)
{
	static const char *const names[] = {
		[UHMM_EV_CPU_FAULT] = "cpu_fault",
		[UHMM_EV_MIGRATE_TO_DEV] = "migrate_to_dev",
		[UHMM_EV_MIGRATE_TO_SYS] = "migrate_to_sys",
		[UHMM_EV_INVALIDATE] = "invalidate",
		[UHMM_EV_EXCLUSIVE_GRANT] = "exclusive_grant",
		[UHMM_EV_EXCLUSIVE_REVOKE] = "exclusive_revoke",
	};
	static const char *const cats[] = {
		[UHMM_EV_CPU_FAULT] = "fault", [UHMM_EV_MIGRATE_TO_DEV] = "migrate",
		[UHMM_EV_MIGRATE_TO_SYS] = "migrate", [UHMM_EV_INVALIDATE] = "notify",
		[UHMM_EV_EXCLUSIVE_GRANT] = "exclusive", [UHMM_EV_EXCLUSIVE_REVOKE] = "exclusive",
	};
	const char *name = e->type < ARRAY_SIZE(names) && names[e->type] ? names[e->type]
									 : "event";
	const char *cat = e->type < ARRAY_SIZE(cats) && cats[e->type] ? cats[e->type] : "uhmm";
	char extra[64] = "";
	if (e->type == UHMM_EV_CPU_FAULT)
		snprintf(extra, sizeof(extra), ",\"cause\":\"%s\"", cause_names[e->arg & 3]);
	else if (e->type == UHMM_EV_MIGRATE_TO_DEV || e->type == UHMM_EV_MIGRATE_TO_SYS)
		snprintf(extra, sizeof(extra), ",\"migrated\":%u", e->arg);
	else if (e->type == UHMM_EV_INVALIDATE)
		snprintf(extra, sizeof(extra), ",\"event\":\"%s\"", notify_names[e->arg & 7]);
	out_printf(o, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%" PRIu64 ".%03u,"
		   "\"dur\":%" PRIu64 ".%03u,\"pid\":%d,\"tid\":%u,\"args\":{\"addr\":\"0x%" PRIx64
		   "\",\"pages\":%" PRIu64 "%s}}",
		   name, cat, e->ts_ns / 1000, (unsigned)(e->ts_ns % 1000), e->dur_ns / 1000,
		   (unsigned)(e->dur_ns % 1000), pid, e->tid, e->addr, e->len >> PG_SHIFT, extra);
}

/* The process name for the viewer: /proc/self/comm, made JSON-safe. */
static void proc_name(char *buf, size_t len)
{
	snprintf(buf, len, "uhmm");
	int fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	char c[64];
	ssize_t n = read(fd, c, sizeof(c) - 1);
	close(fd);
	if (n <= 0)
		return;
	size_t k = 0;
	for (ssize_t i = 0; i < n && k + 1 < len; i++)
		if (c[i] >= 0x20 && c[i] < 0x7f && c[i] != '"' && c[i] != '\\')
			buf[k++] = c[i];
	buf[k] = 0;
}

/* At exit (publish.c uhmm__publish_exit): write the file. */
void uhmm__timeline_exit(void)
{
	struct tl_ev *r = __atomic_exchange_n(&g_ring, NULL, __ATOMIC_ACQ_REL);
	if (!r || g_tl_pid != getpid())
		return;
	uint64_t head = __atomic_load_n(&g_head, __ATOMIC_ACQUIRE);
	uint64_t first = head > g_slots ? head - g_slots : 0;
	struct out o = { .buf = uhmm__zalloc(TL_OUT_BUF) };
	if (!o.buf) {
		uhmm__log("UHMM_TRACE_FILE: no memory to write %s", g_file);
		return;
	}
	o.fd = open(g_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (o.fd < 0) {
		uhmm__log("UHMM_TRACE_FILE: cannot write %s: %s", g_file, strerror(errno));
		uhmm__free(o.buf, TL_OUT_BUF);
		return;
	}
	int pid = (int)getpid();
	char pname[64];
	proc_name(pname, sizeof(pname));
	out_printf(&o, "{\"traceEvents\":[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,"
		   "\"tid\":%d,\"args\":{\"name\":\"%s (uhmm)\"}}", pid, pid, pname);
	uint32_t service_tid = 0, workers[8] = { 0 };
	unsigned nworkers = 0;
	uint64_t written = 0;
	for (uint64_t k = first; k < head; k++) {
		const struct tl_ev *s = &r[k & (g_slots - 1)];
		if (__atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) != k + 1)
			continue;  /* still being written, or overwritten by a later lap */
		struct tl_ev e = {
			.ts_ns = __atomic_load_n(&s->ts_ns, __ATOMIC_ACQUIRE),
			.dur_ns = __atomic_load_n(&s->dur_ns, __ATOMIC_ACQUIRE),
			.addr = __atomic_load_n(&s->addr, __ATOMIC_ACQUIRE),
			.len = __atomic_load_n(&s->len, __ATOMIC_ACQUIRE),
			.type = __atomic_load_n(&s->type, __ATOMIC_ACQUIRE),
			.arg = __atomic_load_n(&s->arg, __ATOMIC_ACQUIRE),
			.tid = __atomic_load_n(&s->tid, __ATOMIC_ACQUIRE),
			.service = __atomic_load_n(&s->service, __ATOMIC_ACQUIRE),
		};
		if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) != k + 1)
			continue;
		if (e.service == 1)
			service_tid = e.tid;
		if (e.service == 2) {
			unsigned w = 0;
			while (w < nworkers && workers[w] != e.tid)
				w++;
			if (w == nworkers && nworkers < 8)
				workers[nworkers++] = e.tid;
		}
		write_event(&o, &e, pid);
		written++;
	}
	if (service_tid)
		out_printf(&o, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%u,"
			   "\"args\":{\"name\":\"uhmm-fault\"}}", pid, service_tid);
	for (unsigned w = 0; w < nworkers; w++)
		out_printf(&o, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%u,"
			   "\"args\":{\"name\":\"uhmm-fault-worker\"}}", pid, workers[w]);
	out_printf(&o, "\n],\n\"displayTimeUnit\":\"ns\",\n\"otherData\":{\"uhmm_events\":%"
		   PRIu64 ",\"uhmm_written\":%" PRIu64 ",\"uhmm_dropped\":%" PRIu64
		   ",\"uhmm_ring_slots\":%" PRIu64 ",\"clock\":\"CLOCK_MONOTONIC\"}}\n",
		   head, written, head - written, g_slots);
	out_flush(&o);
	if (o.err)
		uhmm__log("UHMM_TRACE_FILE: writing %s: %s", g_file, strerror(errno));
	close(o.fd);
	uhmm__free(o.buf, TL_OUT_BUF);
}
