/* SPDX-License-Identifier: MIT */
/*
 * test_farmem_api.c - far memory through the application API (uhmm_farmem.h):
 * ordinary mmap'd memory placed on uhmm-memd servers and faulted back,
 * sequential and random, with RssAnon dropping by what moved; two threads
 * faulting at once; replicas=2 surviving a kill -9 with nothing lost;
 * replicas=1 losing its server (SIGBUS + one log line, in a child); the
 * errors of open/place/fetch; fork (the pages come back first); two
 * clients on one server; close freeing the server's memory.  Every case
 * checks the data and the counters (uhmm_farmem_stats, uhmm_stats_get, the
 * server's SIGUSR1 line) and runs on UCX_TLS=sm,tcp ("sm") and UCX_TLS=tcp
 * ("tcp").  UHMM_TEST_QUICK=1 uses 32 MiB instead of 256 MiB.
 */
#include "harness.h"
#include "testutil.h"

#ifdef UHMM_FARMEM_NO_UCX
TU_MAIN_NO_UCX()
#else

#include <pthread.h>
#include <uhmm.h>
#include <uhmm_farmem.h>

#define MiB (1UL << 20)
#define PS  4096UL

static char g_tok[256];

static size_t big(void)
{
	return (tu_quick() ? 32 : 256) * MiB;
}

static void setup(const char *variant)
{
	tu_set_tls(variant);
	tu_case_token(g_tok, sizeof(g_tok), "farmem-test-token");
	tu_case_uhmm();
}

static struct uhmm_farmem *open_fm(const char *servers, unsigned replicas)
{
	struct uhmm_farmem_opts o = { .token_file = g_tok, .replicas = replicas,
				      .max_pages = 2 * big() / PS };
	struct uhmm_farmem *fm = NULL;
	ASSERT_EQ(uhmm_farmem_open(servers, &o, &fm), 0);
	ASSERT_NOT_NULL(fm);
	return fm;
}

static uint8_t *map(size_t len)
{
	uint8_t *p = th_mmap_isolated(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	ASSERT_MAPPED(p);
	return p;
}

/* The server's used pages, from its SIGUSR1 line. */
static long server_used(const struct tu_server *s)
{
	kill(s->pid, SIGUSR1);
	for (int i = 0; i < 100; i++) {
		usleep(20000);
		const char *log = tu_server_log(s);
		const char *last = NULL, *at = log;
		while ((at = strstr(at, "counters: capacity")))
			last = at++;
		if (last) {
			const char *u = strstr(last, "used ");
			static int seen;
			/* wait for a new line each call */
			int n = 0;
			for (const char *q = log; (q = strstr(q, "counters: capacity")); q++)
				n++;
			if (n > seen && u) {
				seen = n;
				return atol(u + 5);
			}
		}
	}
	return -1;
}

/* ---- 256 MiB out and back --------------------------------------------- */

static void roundtrip(const char *variant, bool random_order)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "600M", g_tok, NULL), 0);
	struct uhmm_farmem *fm = open_fm(s.addr, 1);
	size_t len = big(), npages = len / PS;
	uint8_t *p = map(len);
	tu_fill(p, len, 42);
	long rss0 = tu_rss_anon_kb();
	struct uhmm_stats u0, u1;
	uhmm_stats_get(&u0);
	uint64_t t0 = th_now_ns();
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	uint64_t t1 = th_now_ns();
	long rss1 = tu_rss_anon_kb();
	uhmm_stats_get(&u1);
	ASSERT_GE(u1.pages_to_device - u0.pages_to_device, npages);
	/* RssAnon drops by >= 95 % of what moved */
	if (tu_rss_exact())
		ASSERT_GE(rss0 - rss1, (long)(len / 1024) * 95 / 100);
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, npages);
	ASSERT_EQ(st.pages_out, npages);
	ASSERT_GE(st.bytes_out, len);
	ASSERT_EQ(st.server[0].pages_remote, npages);
	ASSERT_EQ(st.degraded, 0);
	ASSERT_EQ(server_used(&s), (long)npages);

	/* read it back by CPU faults */
	uint64_t t2 = th_now_ns();
	if (random_order) {
		uint32_t *ord = malloc(npages * sizeof(*ord));
		for (size_t i = 0; i < npages; i++)
			ord[i] = (uint32_t)i;
		for (size_t i = npages - 1; i > 0; i--) {
			size_t j = (size_t)rand() % (i + 1);
			uint32_t t = ord[i];
			ord[i] = ord[j];
			ord[j] = t;
		}
		/* half by faults, in random order, the rest by fetch */
		for (size_t i = 0; i < npages / 2; i++)
			ASSERT_EQ(tu_check_page(p, (size_t)ord[i] * PS, 42), 0);
		ASSERT_EQ(uhmm_farmem_fetch(fm, p, len), 0);
		for (size_t i = 0; i < npages; i++)
			ASSERT_EQ(tu_check_page(p, i * PS, 42), 0);
		free(ord);
	} else {
		for (size_t i = 0; i < npages; i++)
			ASSERT_EQ(tu_check_page(p, i * PS, 42), 0);
	}
	uint64_t t3 = th_now_ns();
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.pages_in, npages);
	ASSERT_GT(st.faults, 0);
	ASSERT_EQ(st.fault_errors, 0);
	if (!random_order)  /* read-ahead: far fewer faults than pages */
		ASSERT_LT(st.faults, npages / 8);
	ASSERT_GT(st.fault_p50_ns, 0);
	ASSERT_GE(st.fault_p99_ns, st.fault_p50_ns);
	printf("INFO %s %s: place %.2f GB/s, back %.2f GB/s, %llu faults p50 %.1f us p99 %.1f us\n",
	       variant, random_order ? "random" : "seq", len / (double)(t1 - t0),
	       len / (double)(t3 - t2), (unsigned long long)st.faults, st.fault_p50_ns / 1e3,
	       st.fault_p99_ns / 1e3);
	/* everything is back: close frees the server's memory */
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(server_used(&s), 0);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	munmap(p, len);
}

TEST_TIMEOUT(farmem_seq_sm, 120) { roundtrip("sm", false); }
TEST_TIMEOUT(farmem_seq_tcp, 120) { roundtrip("tcp", false); }
TEST_TIMEOUT(farmem_random_sm, 120) { roundtrip("sm", true); }
TEST_TIMEOUT(farmem_random_tcp, 120) { roundtrip("tcp", true); }

/* ---- THP-backed memory: out and back as whole 2 MiB pages ---------------- */

/* AnonHugePages (kB) of the mappings inside [p, p + len), from smaps. */
static long anon_huge_kb(const void *p, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	long kb = 0;
	bool in = false;

	ASSERT_NOT_NULL(f);
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b, v;

		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = a >= (uintptr_t)p && b <= (uintptr_t)p + len;
		else if (in && sscanf(line, "AnonHugePages: %lu kB", &v) == 1)
			kb += (long)v;
	}
	fclose(f);
	return kb;
}

/*
 * A THP-backed range: place moves each THP whole (one compound entry, one
 * huge device page), a sequential read brings a whole huge page back as a
 * THP with one fault once the stream is going, a random access takes one
 * page (splitting that huge page), fetch brings the rest back as THPs.
 */
static void thp(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "200M", g_tok, NULL), 0);
	struct uhmm_farmem *fm = open_fm(s.addr, 1);
	const size_t hb = 2 * MiB, len = 64 * MiB, npages = len / PS, nblocks = len / hb;
	uint8_t *map0 = map(len + hb);
	uint8_t *p = (uint8_t *)(((uintptr_t)map0 + hb - 1) & ~(hb - 1));
	ASSERT_EQ(madvise(p, len, MADV_HUGEPAGE), 0);
	tu_fill(p, len, 7);
	long huge = anon_huge_kb(map0, len + hb);
	if (huge < (long)(len / 1024) / 2)
		SKIP("no THPs for an aligned MADV_HUGEPAGE range (AnonHugePages %ld kB)", huge);

	/* out: every page leaves, no THP is left behind */
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	struct uhmm_farmem_stats st, st0;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, npages);
	ASSERT_EQ(st.pages_out, npages);
	ASSERT_EQ(anon_huge_kb(map0, len + hb), 0);
	ASSERT_EQ(server_used(&s), (long)npages);

	/* a sequential read: whole huge pages come back once the stream goes */
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 7), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.pages_in, npages);
	ASSERT_EQ(st.fault_errors, 0);
	/* the first block grows the window 4 KiB pages at a time, then one fault per block */
	ASSERT_LE(st.faults, 10 + nblocks);
	/* THPs again: most blocks (a block gets 4 KiB pages where no huge
	 * system page was free, or the kernel gave none) */
	long want = (long)(len / 1024) * 3 / 4;
	ASSERT_GE(anon_huge_kb(map0, len + hb), want);

	/* out again; one random access takes one page, not its 2 MiB */
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st0), 0);
	ASSERT_EQ(st0.pages_remote, npages);
	size_t at = 5 * hb + 100 * PS;
	ASSERT_EQ(tu_check_page(p, at, 7), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.faults - st0.faults, 1);
	ASSERT_EQ(st.fault_pages - st0.fault_pages, 1);
	ASSERT_EQ(st.pages_remote, npages - 1);

	/* fetch: the rest back, the untouched blocks THPs again (most, as above) */
	ASSERT_EQ(uhmm_farmem_fetch(fm, p, len), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.pages_in - st0.pages_in, npages);
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 7), 0);
	ASSERT_GE(anon_huge_kb(map0, len + hb), want);
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(server_used(&s), 0);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	munmap(map0, len + hb);
}

TEST_TIMEOUT(farmem_thp_sm, 60) { thp("sm"); }
TEST_TIMEOUT(farmem_thp_tcp, 60) { thp("tcp"); }

/* ---- two application threads faulting at once ------------------------- */

struct tharg {
	uint8_t *p;
	size_t from, to;
	int bad;
};

static void *reader(void *a)
{
	struct tharg *t = a;
	/* strided, so that each access is its own fault */
	for (size_t stride = 0; stride < 16; stride++)
		for (size_t i = t->from + stride; i < t->to; i += 16)
			t->bad += tu_check_page(t->p, i * PS, 7) != 0;
	return NULL;
}

static void threads(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "256M", g_tok, NULL), 0);
	struct uhmm_farmem *fm = open_fm(s.addr, 1);
	size_t len = (tu_quick() ? 8 : 32) * MiB, npages = len / PS;
	uint8_t *p = map(len);
	tu_fill(p, len, 7);
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	struct tharg a = { p, 0, npages / 2, 0 }, b = { p, npages / 2, npages, 0 };
	pthread_t ta, tb;
	ASSERT_EQ(pthread_create(&ta, NULL, reader, &a), 0);
	ASSERT_EQ(pthread_create(&tb, NULL, reader, &b), 0);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	ASSERT_EQ(a.bad + b.bad, 0);
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.pages_in, npages);
	ASSERT_GE(st.faults, npages / 64);
	ASSERT_EQ(st.fault_errors, 0);
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	munmap(p, len);
}
TEST_TIMEOUT(farmem_threads_sm, 60) { threads("sm"); }
TEST_TIMEOUT(farmem_threads_tcp, 60) { threads("tcp"); }

/* ---- replicas=2: a server killed mid-run loses nothing ------------------ */

static void replicas(const char *variant)
{
	setup(variant);
	struct tu_server s1, s2;
	ASSERT_EQ(tu_server_start(&s1, "128M", g_tok, NULL), 0);
	ASSERT_EQ(tu_server_start(&s2, "128M", g_tok, NULL), 0);
	char list[160];
	snprintf(list, sizeof(list), "%s,%s", s1.addr, s2.addr);
	struct uhmm_farmem *fm = open_fm(list, 2);
	size_t len = (tu_quick() ? 16 : 64) * MiB, npages = len / PS;
	uint8_t *p = map(len);
	tu_fill(p, len, 3);
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.nservers, 2);
	ASSERT_EQ(st.server[0].pages_remote, npages);  /* every page on both */
	ASSERT_EQ(st.server[1].pages_remote, npages);
	ASSERT_EQ(st.bytes_out, 2 * len);
	/* read a quarter, kill one server, read the rest */
	for (size_t i = 0; i < npages / 4; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 3), 0);
	tu_server_stop(&s1, SIGKILL);
	for (size_t i = npages / 4; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 3), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.fault_errors, 0);
	ASSERT_EQ(st.degraded, 1);
	ASSERT_EQ(st.server[0].alive, 0);
	ASSERT_EQ(st.server[1].alive, 1);
	/* new placements go to the survivor only (degraded) */
	ASSERT_EQ(uhmm_farmem_place(fm, p, len / 2), 0);
	for (size_t i = 0; i < npages / 2; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 3), 0);
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(server_used(&s2), 0);
	ASSERT_EQ(tu_server_stop(&s2, SIGTERM), 0);
	munmap(p, len);
}
TEST_TIMEOUT(farmem_replicas_kill_sm, 60) { replicas("sm"); }

/* ---- replicas=2 on 3 servers: repair after a kill, then a second kill ---- */

static void repair(const char *variant)
{
	setup(variant);
	struct tu_server s[3];
	char list[240] = "";
	for (int i = 0; i < 3; i++) {
		ASSERT_EQ(tu_server_start(&s[i], "64M", g_tok, NULL), 0);
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? "," : "",
			 s[i].addr);
	}
	struct uhmm_farmem *fm = open_fm(list, 2);
	size_t len = 12 * MiB, npages = len / PS, nslabs = len / (2 * MiB);
	uint8_t *p = map(len);
	tu_fill(p, len, 17);
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.server[0].pages_remote + st.server[1].pages_remote +
		  st.server[2].pages_remote, 2 * npages);
	ASSERT_EQ(st.degraded, 0);
	ASSERT_EQ(uhmm_farmem_repair(fm), 0);  /* nothing to do */
	uint64_t on0 = st.server[0].slabs;
	ASSERT_GT(on0, 0);
	tu_server_stop(&s[0], SIGKILL);
	/* a fault notices the failure: read one page of a slab held on server 0 */
	for (size_t i = 0; i < npages; i += 512)
		ASSERT_EQ(tu_check_page(p, i * PS, 17), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.server[0].alive, 0);
	ASSERT_EQ(st.degraded, 1);
	ASSERT_GT(st.pages_degraded, 0);
	ASSERT_EQ(st.pages_lost, 0);
	/* repair: every slab that was on server 0 gets a replica on the third */
	ASSERT_EQ(uhmm_farmem_repair(fm), (int)on0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.degraded, 0);
	ASSERT_EQ(st.pages_degraded, 0);
	ASSERT_EQ(st.slabs_repaired, on0);
	ASSERT_EQ(st.server[1].slabs, nslabs);
	ASSERT_EQ(st.server[2].slabs, nslabs);
	ASSERT_EQ(st.server[0].slabs, 0);
	/* a second server dies: nothing is lost either */
	tu_server_stop(&s[1], SIGKILL);
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 17), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.fault_errors, 0);
	ASSERT_EQ(st.degraded, 1);  /* one live server for two replicas */
	ASSERT_EQ(uhmm_farmem_repair(fm), 0);  /* no pages remote: nothing to repair */
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(server_used(&s[2]), 0);
	ASSERT_EQ(tu_server_stop(&s[2], SIGTERM), 0);
	munmap(p, len);
}
TEST_TIMEOUT(farmem_repair_sm, 60) { repair("sm"); }
TEST_TIMEOUT(farmem_repair_tcp, 60) { repair("tcp"); }
TEST_TIMEOUT(farmem_replicas_kill_tcp, 60) { replicas("tcp"); }

/* ---- replicas=1: the server is gone, the access gets SIGBUS ------------- */

static void lost(const char *variant)
{
	tu_set_tls(variant);
	tu_case_token(g_tok, sizeof(g_tok), "farmem-test-token");
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "64M", g_tok, NULL), 0);
	char errf[128];
	snprintf(errf, sizeof(errf), "/tmp/uhmm_farmem_child_%d", (int)getpid());
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		int fd = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 2);
		if (uhmm_init())
			_exit(3);
		struct uhmm_farmem_opts o = { .token_file = g_tok, .replicas = 1 };
		struct uhmm_farmem *fm;
		if (uhmm_farmem_open(s.addr, &o, &fm))
			_exit(4);
		size_t len = 4 * MiB;
		uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(p, 0x5a, len);
		if (uhmm_farmem_place(fm, p, len))
			_exit(5);
		kill(s.pid, SIGKILL);
		usleep(200000);
		/* the default action: UCX's backtrace handler (UCX_HANDLE_ERRORS)
		 * and ASan's would report the signal instead of dying of it */
		signal(SIGBUS, SIG_DFL);
		volatile uint8_t v = p[len / 2 + 100];  /* SIGBUS here, never a zero */
		fprintf(stderr, "read %d instead of SIGBUS\n", v);
		_exit(6);
	}
	int st;
	waitpid(pid, &st, 0);
	kill(s.pid, SIGKILL);  /* the child kills it; not if it failed before that */
	waitpid(s.pid, NULL, 0);
	char log[4096] = "";
	FILE *f = fopen(errf, "r");
	if (f) {
		size_t n = fread(log, 1, sizeof(log) - 1, f);
		log[n] = 0;
		fclose(f);
	}
	unlink(errf);
	if (!WIFSIGNALED(st))
		th_fail(__FILE__, __LINE__, "child exited %d: %s", WEXITSTATUS(st), log);
	ASSERT_EQ(WTERMSIG(st), SIGBUS);
	/* one line naming the server and the range */
	const char *l = strstr(log, "uhmm_farmem: SIGBUS at");
	ASSERT_NOT_NULL(l);
	ASSERT_TRUE(strstr(l, s.addr) != NULL);
	ASSERT_TRUE(strstr(l, "pages [0x") != NULL);
	ASSERT_EQ(strstr(l + 1, "uhmm_farmem: SIGBUS at"), NULL);
}
TEST_TIMEOUT(farmem_lost_sigbus_sm, 60) { lost("sm"); }
TEST_TIMEOUT(farmem_lost_sigbus_tcp, 60) { lost("tcp"); }

/* ---- errors ----------------------------------------------------------- */

static void errors(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "64M", g_tok, NULL), 0);
	struct uhmm_farmem *fm = NULL;
	struct uhmm_farmem_opts o = { .token_file = g_tok };
	/* wrong token, no token */
	struct uhmm_farmem_opts bad = { .token = "not-the-token" };
	ASSERT_EQ(uhmm_farmem_open(s.addr, &bad, &fm), -EACCES);
	ASSERT_EQ(uhmm_farmem_open(s.addr, NULL, &fm), -EACCES);
	ASSERT_EQ(fm, NULL);
	/* bad lists and options */
	ASSERT_EQ(uhmm_farmem_open("", &o, &fm), -EINVAL);
	ASSERT_EQ(uhmm_farmem_open("127.0.0.1", &o, &fm), -EINVAL);
	ASSERT_EQ(uhmm_farmem_open(NULL, &o, &fm), -EINVAL);
	ASSERT_EQ(uhmm_farmem_open(s.addr, &o, NULL), -EINVAL);
	struct uhmm_farmem_opts r2 = { .token_file = g_tok, .replicas = 2 };
	ASSERT_EQ(uhmm_farmem_open(s.addr, &r2, &fm), -EINVAL);  /* 2 replicas, 1 server */
	struct uhmm_farmem_opts r3 = { .token_file = g_tok, .replicas = 3 };
	ASSERT_EQ(uhmm_farmem_open(s.addr, &r3, &fm), -EINVAL);
	struct uhmm_farmem_opts nf = { .token_file = "/nonexistent/token" };
	ASSERT_EQ(uhmm_farmem_open(s.addr, &nf, &fm), -ENOENT);
	/* refused: a port nothing listens on (a server we stopped) */
	struct tu_server gone;
	ASSERT_EQ(tu_server_start(&gone, "16M", g_tok, NULL), 0);
	tu_server_stop(&gone, SIGKILL);
	ASSERT_EQ(uhmm_farmem_open(gone.addr, &o, &fm), -ECONNREFUSED);
	/* one good and one gone server: the whole open fails */
	char list[160];
	snprintf(list, sizeof(list), "%s,%s", s.addr, gone.addr);
	ASSERT_EQ(uhmm_farmem_open(list, &o, &fm), -ECONNREFUSED);
	ASSERT_EQ(server_used(&s), 0);

	fm = open_fm(s.addr, 1);
	uint8_t *p = map(1 * MiB);
	memset(p, 1, MiB);
	/* bad ranges */
	ASSERT_EQ(uhmm_farmem_place(fm, p + 1, PS), -EINVAL);
	ASSERT_EQ(uhmm_farmem_place(fm, p, 100), -EINVAL);
	ASSERT_EQ(uhmm_farmem_place(fm, p, 0), -EINVAL);
	ASSERT_EQ(uhmm_farmem_place(fm, NULL, PS), -EINVAL);
	ASSERT_EQ(uhmm_farmem_place(fm, (void *)(~0UL & ~(PS - 1)), 2 * PS), -EINVAL);
	ASSERT_EQ(uhmm_farmem_place(NULL, p, PS), -EINVAL);
	ASSERT_EQ(uhmm_farmem_fetch(fm, p + 8, PS), -EINVAL);
	ASSERT_EQ(uhmm_farmem_stats(fm, NULL), -EINVAL);
	/* a range with nothing mapped */
	uint8_t *hole = map(4 * PS);
	munmap(hole, 4 * PS);
	int rc = uhmm_farmem_place(fm, hole, 4 * PS);
	ASSERT_TRUE(rc == -EFAULT || rc == -EINVAL);
	/* nothing moved by the bad calls */
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_out, 0);
	ASSERT_EQ(st.pages_remote, 0);
	/* placing twice leaves the pages where they are; fetch brings them back */
	ASSERT_EQ(uhmm_farmem_place(fm, p, MiB), 0);
	ASSERT_EQ(uhmm_farmem_place(fm, p, MiB), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_out, MiB / PS);
	ASSERT_EQ(uhmm_farmem_fetch(fm, p, MiB), 0);
	for (size_t i = 0; i < MiB; i++)
		if (p[i] != 1)
			ASSERT_EQ(p[i], 1);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.faults, 0);
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(uhmm_farmem_close(NULL), -EINVAL);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
}
TEST_TIMEOUT(farmem_errors_sm, 60) { errors("sm"); }
TEST_TIMEOUT(farmem_errors_tcp, 60) { errors("tcp"); }

/* ---- prefetch: asynchronous, the pages come back without faults ---------- */

/*
 * A server of 64 MiB started in *s, a client of it in *fm, and len bytes
 * of new memory, every page tagged with seed, placed there.
 */
static uint8_t *start_placed(struct tu_server *s, struct uhmm_farmem **fm, size_t len,
			     uint64_t seed)
{
	ASSERT_EQ(tu_server_start(s, "64M", g_tok, NULL), 0);
	*fm = open_fm(s->addr, 1);
	uint8_t *p = map(len);
	tu_fill(p, len, seed);
	ASSERT_EQ(uhmm_farmem_place(*fm, p, len), 0);
	return p;
}

static void prefetch(const char *variant)
{
	setup(variant);
	struct tu_server s;
	struct uhmm_farmem *fm;
	size_t len = 8 * MiB, npages = len / PS;
	uint8_t *p = start_placed(&s, &fm, len, 31);
	ASSERT_EQ(uhmm_farmem_prefetch(fm, p + 1, PS), -EINVAL);
	/* two ranges queued; returns before they are back (usually) */
	ASSERT_EQ(uhmm_farmem_prefetch(fm, p, len / 2), 0);
	ASSERT_EQ(uhmm_farmem_prefetch(fm, p + len / 2, len / 2), 0);
	struct uhmm_farmem_stats st;
	for (int i = 0; i < 1000; i++) {
		ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
		if (st.pages_remote == 0 && st.prefetch_pending == 0)
			break;
		usleep(10000);
	}
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.prefetch_pending, 0);
	ASSERT_EQ(st.pages_in, npages);
	ASSERT_EQ(st.faults, 0);  /* nothing was touched: no CPU fault */
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 31), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.faults, 0);
	/* queued work at close is dropped, close brings everything back */
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	ASSERT_EQ(uhmm_farmem_prefetch(fm, p, len), 0);
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 31), 0);
	ASSERT_EQ(server_used(&s), 0);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	munmap(p, len);
}
TEST_TIMEOUT(farmem_prefetch_sm, 60) { prefetch("sm"); }
TEST_TIMEOUT(farmem_prefetch_tcp, 60) { prefetch("tcp"); }

/* ---- fork: every far page comes back first, the child has the data ----- */

static void forked(const char *variant)
{
	setup(variant);
	struct tu_server s;
	struct uhmm_farmem *fm;
	size_t len = 8 * MiB, npages = len / PS;
	uint8_t *p = start_placed(&s, &fm, len, 41);
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, npages);
	ASSERT_EQ(server_used(&s), (long)npages);
	/* uhmm's atfork handler brings every device page back before the
	 * fork (design.md section 6): the child reads its own copies, with no
	 * uhmm and no server behind them */
	pid_t pid = fork();
	ASSERT_GE(pid, 0);
	if (pid == 0) {
		size_t bad = 0;
		for (size_t i = 0; i < npages; i++)
			bad += tu_check_page(p, i * PS, 41) != 0;
		_exit(bad ? 1 : 0);
	}
	int ws = 0;
	ASSERT_EQ(waitpid(pid, &ws, 0), pid);
	ASSERT_TRUE(WIFEXITED(ws));
	ASSERT_EQ(WEXITSTATUS(ws), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.pages_in, npages);
	ASSERT_EQ(st.fault_errors, 0);
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 41), 0);
	/* the parent's pool goes on working: out and back by faults again */
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, npages);
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 41), 0);
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.pages_in, 2 * npages);
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(server_used(&s), 0);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	munmap(p, len);
}
TEST_TIMEOUT(farmem_fork_sm, 60) { forked("sm"); }
TEST_TIMEOUT(farmem_fork_tcp, 60) { forked("tcp"); }

/* ---- two clients on one server ----------------------------------------- */

static void two_clients(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "64M", g_tok, NULL), 0);
	struct uhmm_farmem *a = open_fm(s.addr, 1), *b = open_fm(s.addr, 1);
	size_t len = 8 * MiB, npages = len / PS;
	uint8_t *pa = map(len), *pb = map(len);
	tu_fill(pa, len, 11);
	tu_fill(pb, len, 22);
	ASSERT_EQ(uhmm_farmem_place(a, pa, len), 0);
	ASSERT_EQ(uhmm_farmem_place(b, pb, len), 0);
	ASSERT_EQ(server_used(&s), 2 * (long)npages);
	struct uhmm_farmem_stats sa, sb;
	ASSERT_EQ(uhmm_farmem_stats(a, &sa), 0);
	ASSERT_EQ(uhmm_farmem_stats(b, &sb), 0);
	ASSERT_EQ(sa.pages_remote, npages);
	ASSERT_EQ(sb.pages_remote, npages);
	for (size_t i = 0; i < npages; i++) {
		ASSERT_EQ(tu_check_page(pa, i * PS, 11), 0);
		ASSERT_EQ(tu_check_page(pb, i * PS, 22), 0);
	}
	ASSERT_EQ(uhmm_farmem_close(a), 0);
	ASSERT_EQ(uhmm_farmem_stats(b, &sb), 0);  /* frees b's empty slabs */
	ASSERT_EQ(sb.pages_remote, 0);
	ASSERT_EQ(server_used(&s), 0);  /* b's pages came back by faults: freed too */
	ASSERT_EQ(uhmm_farmem_close(b), 0);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
}
TEST_TIMEOUT(farmem_two_clients_sm, 60) { two_clients("sm"); }
TEST_TIMEOUT(farmem_two_clients_tcp, 60) { two_clients("tcp"); }

/*
 * UCX's default memory hooks patch munmap as libucs loads and route it
 * around uhmm's interposer: open must refuse (-ENOTSUP, one line saying
 * what to set) rather than run with devices never told of unmaps.  The
 * hook mode is read as the process starts, so the check runs this program
 * again without UCX_MEM_EVENTS (make exports =no for the tests).
 */
TEST_TIMEOUT(farmem_hooks_checked, 60)
{
	if (getenv("UHMM_FARMEM_HOOK_CHILD")) {
		struct tu_server s;
		setup("sm");
		if (tu_server_start(&s, "16M", g_tok, NULL))
			_exit(90);
		struct uhmm_farmem_opts o = { .token_file = g_tok };
		struct uhmm_farmem *fm = NULL;
		int rc = uhmm_farmem_open(s.addr, &o, &fm);
		printf("child open: %d\n", rc);
		fflush(stdout);
		if (fm)
			uhmm_farmem_close(fm);
		tu_server_stop(&s, SIGTERM);
		_exit(rc == 0 ? 0 : rc == -ENOTSUP ? 95 : 91);
	}
	char self[512], cmd[1400], outf[64], out[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	ASSERT_GT(n, 0);
	self[n] = 0;
	snprintf(outf, sizeof(outf), "/tmp/uhmm_farmem_hooks_%d", (int)getpid());
	int first = 0;
#ifdef __SANITIZE_THREAD__
	/* UCX's default hooks crash under ThreadSanitizer: only the hooks-off run */
	first = 1;
#endif
	for (int pass = first; pass < 2; pass++) {
		/* pass 0: UCX's default hooks; pass 1: hooks off */
		snprintf(cmd, sizeof(cmd), "%s UHMM_FARMEM_HOOK_CHILD=1 timeout 40 %s "
			 "farmem_hooks_checked > %s 2>&1 < /dev/null",
			 pass ? "env UCX_MEM_EVENTS=no" :
				"env -u UCX_MEM_MMAP_HOOK_MODE -u UCX_MEM_EVENTS",
			 self, outf);
		ASSERT_TRUE(system(cmd) != -1);
		FILE *f = fopen(outf, "r");
		ASSERT_NOT_NULL(f);
		size_t got = fread(out, 1, sizeof(out) - 1, f);
		out[got] = 0;
		fclose(f);
		unlink(outf);
		if (pass == 0) {
			ASSERT_TRUE(strstr(out, "child open: -95") != NULL);
			ASSERT_TRUE(strstr(out, "UCX_MEM_EVENTS=no") != NULL);
		} else {
			ASSERT_TRUE(strstr(out, "child open: 0") != NULL);
		}
	}
}

TEST_MAIN()
#endif
