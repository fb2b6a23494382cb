/* SPDX-License-Identifier: MIT */
/*
 * test_farmem_xport.c - the far-memory server (uhmm-memd) and the client
 * transport (farmem/xport.c) without uhmm: data round trips over RMA and
 * active messages, the token, refused connections, a server gone at
 * connect or killed mid-run, two clients (isolation), hostile requests that
 * cut one client off while another keeps its data, and the server's own
 * errors, signals and counters.  Every case runs on UCX_TLS=sm,tcp ("sm")
 * and UCX_TLS=tcp ("tcp"), against servers it starts on loopback.
 */
#include "harness.h"
#include "testutil.h"

#ifdef UHMM_FARMEM_NO_UCX
TU_MAIN_NO_UCX()
#else

#include "xport.h"

#define MiB (1UL << 20)

static char g_tok[256];

static void setup(const char *variant)
{
	tu_set_tls(variant);
	tu_case_token(g_tok, sizeof(g_tok), "s3cret-token");
}

static struct fmx_srv *connect_ok(struct fmx *x, const struct tu_server *s, enum fmx_path path)
{
	struct fmx_srv *c = NULL;
	fmx_lock(x);
	int rc = fmx_connect(x, s->addr, (const uint8_t *)"s3cret-token", 12, path, 5000, &c);
	fmx_unlock(x);
	ASSERT_EQ(rc, 0);
	return c;
}

/* alloc, put, get back, compare; stats before and after free */
static void roundtrip(const char *variant, const char *extra, enum fmx_path path)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "256M", g_tok, extra), 0);
	struct fmx *x;
	ASSERT_EQ(fmx_create(&x), 0);
	struct fmx_srv *c = connect_ok(x, &s, path);
	size_t len = (tu_quick() ? 4 : 16) * MiB;
	uint8_t *a = aligned_alloc(4096, len), *b = aligned_alloc(4096, len);
	tu_fill(a, len, 7);
	memset(b, 0, len);
	fmx_lock(x);
	struct fmx_region r;
	ASSERT_EQ(fmx_alloc(c, len / 4096, &r), 0);
	ASSERT_EQ(r.npages, len / 4096);
	/* AUTO measured both read paths on the first allocation (4 KiB reads) */
	struct fm_stats st0;
	ASSERT_EQ(fmx_stats(c, &st0), 0);
	printf("INFO %s: reads by %s\n", variant, fmx_uses_am_reads(c) ? "active message" : "RMA get");
	/* in 256 KiB pieces, as the device does */
	for (size_t o = 0; o < len; o += 256 << 10)
		ASSERT_EQ(fmx_put(c, &r, o, a + o, 256 << 10), 0);
	ASSERT_EQ(fmx_wait(x), 0);
	for (size_t o = 0; o < len; o += 4096)  /* single pages, like faults */
		ASSERT_EQ(fmx_get(c, &r, o, b + o, 4096), 0);
	ASSERT_EQ(fmx_wait(x), 0);
	ASSERT_EQ(memcmp(a, b, len), 0);
	struct fm_stats st;
	ASSERT_EQ(fmx_stats(c, &st), 0);
	ASSERT_EQ(st.used_pages, len / 4096);
	ASSERT_EQ(st.client_pages, len / 4096);
	ASSERT_EQ(st.clients, 1);
	ASSERT_EQ(st.allocs, 1);
	if ((extra && strstr(extra, "no-rma")) || path == FMX_PATH_AM) {
		ASSERT_TRUE(fmx_uses_am_writes(c));
		ASSERT_GE(st.am_writes, len / (256 << 10));
		ASSERT_EQ(st.am_bytes_written, len);
	} else {
		ASSERT_FALSE(fmx_uses_am_writes(c));
		ASSERT_EQ(st.am_writes, 0);
	}
	ASSERT_EQ(st.am_bytes_read - st0.am_bytes_read, fmx_uses_am_reads(c) ? len : 0);
	/* out of range is refused locally */
	ASSERT_EQ(fmx_put(c, &r, len, a, 4096), -EINVAL);
	ASSERT_EQ(fmx_free(c, &r), 0);
	ASSERT_EQ(fmx_stats(c, &st), 0);
	ASSERT_EQ(st.used_pages, 0);
	ASSERT_EQ(st.frees, 1);
	fmx_disconnect(c);
	fmx_unlock(x);
	fmx_destroy(x);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	ASSERT_TRUE(strstr(tu_server_log(&s), "shutdown") != NULL);
	free(a);
	free(b);
}

TEST(farmem_xport_roundtrip_sm) { roundtrip("sm", NULL, FMX_PATH_AUTO); }
/* the server's memory options: data and counters as with the defaults */
TEST(farmem_xport_release_freed_sm) { roundtrip("sm", "--release-freed", FMX_PATH_AUTO); }
TEST(farmem_xport_prefault_sm) { roundtrip("sm", "--prefault", FMX_PATH_AUTO); }
TEST(farmem_xport_roundtrip_tcp) { roundtrip("tcp", NULL, FMX_PATH_AUTO); }
TEST(farmem_xport_roundtrip_rma_sm) { roundtrip("sm", NULL, FMX_PATH_RMA); }
TEST(farmem_xport_roundtrip_rma_tcp) { roundtrip("tcp", NULL, FMX_PATH_RMA); }
TEST(farmem_xport_no_rma_server_sm) { roundtrip("sm", "--no-rma", FMX_PATH_AUTO); }
TEST(farmem_xport_no_rma_server_tcp) { roundtrip("tcp", "--no-rma", FMX_PATH_AUTO); }

/* wrong token, no token: -EACCES, counted as refused by the server */
static void token(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "16M", g_tok, NULL), 0);
	struct fmx *x;
	ASSERT_EQ(fmx_create(&x), 0);
	struct fmx_srv *c = NULL;
	fmx_lock(x);
	ASSERT_EQ(fmx_connect(x, s.addr, (const uint8_t *)"wrong", 5, FMX_PATH_AUTO, 5000, &c),
		  -EACCES);
	ASSERT_EQ(fmx_connect(x, s.addr, NULL, 0, FMX_PATH_AUTO, 5000, &c), -EACCES);
	/* a prefix of the token is not the token */
	ASSERT_EQ(fmx_connect(x, s.addr, (const uint8_t *)"s3cret", 6, FMX_PATH_AUTO, 5000, &c),
		  -EACCES);
	fmx_unlock(x);
	c = connect_ok(x, &s, FMX_PATH_AUTO);
	fmx_lock(x);
	struct fm_stats st;
	ASSERT_EQ(fmx_stats(c, &st), 0);
	ASSERT_EQ(st.refused, 3);
	ASSERT_EQ(st.clients, 1);
	fmx_disconnect(c);
	fmx_unlock(x);
	fmx_destroy(x);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	ASSERT_TRUE(strstr(tu_server_log(&s), "bad token") != NULL);
}
TEST(farmem_xport_token_sm) { token("sm"); }
TEST(farmem_xport_token_tcp) { token("tcp"); }

/* nothing listens; a server gone before the client connects; bad addresses */
static void refused(const char *variant)
{
	setup(variant);
	struct fmx *x;
	ASSERT_EQ(fmx_create(&x), 0);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "16M", g_tok, NULL), 0);
	tu_server_stop(&s, SIGKILL);
	struct fmx_srv *c = NULL;
	fmx_lock(x);
	ASSERT_EQ(fmx_connect(x, s.addr, (const uint8_t *)"s3cret-token", 12, FMX_PATH_AUTO, 5000,
			      &c), -ECONNREFUSED);
	ASSERT_EQ(fmx_connect(x, "127.0.0.1", NULL, 0, FMX_PATH_AUTO, 5000, &c), -EINVAL);
	ASSERT_EQ(fmx_connect(x, "127.0.0.1:0", NULL, 0, FMX_PATH_AUTO, 5000, &c), -EINVAL);
	ASSERT_EQ(fmx_connect(x, "127.0.0.1:99999", NULL, 0, FMX_PATH_AUTO, 5000, &c), -EINVAL);
	ASSERT_EQ(fmx_connect(x, "no-such-host.invalid:5000", NULL, 0, FMX_PATH_AUTO, 5000, &c),
		  -EHOSTUNREACH);
	fmx_unlock(x);
	fmx_destroy(x);
}
TEST(farmem_xport_refused_sm) { refused("sm"); }
TEST(farmem_xport_refused_tcp) { refused("tcp"); }

/*
 * Two clients on one server: B cannot use A's handle (it is cut off, A
 * keeps its data); pages A frees read as zeros when B gets them.
 */
static void isolation(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "8M", g_tok, NULL), 0);
	struct fmx *xa, *xb;
	ASSERT_EQ(fmx_create(&xa), 0);
	ASSERT_EQ(fmx_create(&xb), 0);
	struct fmx_srv *a = connect_ok(xa, &s, FMX_PATH_AUTO);
	struct fmx_srv *b = connect_ok(xb, &s, FMX_PATH_AUTO);
	ASSERT_NE(fmx_client_id(a), fmx_client_id(b));
	size_t len = 4 * MiB;
	uint8_t *buf = aligned_alloc(4096, len), *chk = aligned_alloc(4096, len);
	tu_fill(buf, len, 99);
	fmx_lock(xa);
	struct fmx_region ra, ra2;
	ASSERT_EQ(fmx_alloc(a, len / 4096, &ra), 0);
	ASSERT_EQ(fmx_put(a, &ra, 0, buf, len), 0);
	ASSERT_EQ(fmx_wait(xa), 0);
	fmx_unlock(xa);

	fmx_lock(xb);
	struct fm_req rq = { .magic = FM_MAGIC, .version = FM_VERSION, .type = FM_READ,
			     .req_id = 1, .handle = ra.handle, .offset = 0, .len = 4096 };
	struct fm_rep rep;
	int rc = fmx_raw_request(b, &rq, sizeof(rq), NULL, 0, &rep, 3000);
	ASSERT_TRUE(rc == -EPROTO || rc == -EPIPE);
	fmx_unlock(xb);
	/* B is gone for the server; a new B' cannot free A's handle either */
	struct fmx_srv *b2 = connect_ok(xb, &s, FMX_PATH_AUTO);
	fmx_lock(xb);
	rq.type = FM_FREE;
	rq.len = 0;
	rc = fmx_raw_request(b2, &rq, sizeof(rq), NULL, 0, &rep, 3000);
	ASSERT_TRUE(rc == -EPROTO || rc == -EPIPE);
	fmx_unlock(xb);
	struct fmx_srv *b3 = connect_ok(xb, &s, FMX_PATH_AUTO);

	/* A still has all of its data */
	fmx_lock(xa);
	memset(chk, 0, len);
	ASSERT_EQ(fmx_get(a, &ra, 0, chk, len), 0);
	ASSERT_EQ(fmx_wait(xa), 0);
	ASSERT_EQ(memcmp(buf, chk, len), 0);
	struct fm_stats st;
	ASSERT_EQ(fmx_stats(a, &st), 0);
	ASSERT_EQ(st.violations, 2);
	ASSERT_EQ(st.client_pages, len / 4096);
	/* A frees; the 8 MiB server now has room only where A's pages were */
	ASSERT_EQ(fmx_alloc(a, len / 4096, &ra2), 0);
	ASSERT_EQ(fmx_put(a, &ra2, 0, buf, len), 0);
	ASSERT_EQ(fmx_wait(xa), 0);
	ASSERT_EQ(fmx_free(a, &ra), 0);
	fmx_unlock(xa);
	fmx_lock(xb);
	struct fmx_region rb;
	ASSERT_EQ(fmx_alloc(b3, len / 4096, &rb), 0);
	memset(chk, 0xaa, len);
	ASSERT_EQ(fmx_get(b3, &rb, 0, chk, len), 0);
	ASSERT_EQ(fmx_wait(xb), 0);
	for (size_t i = 0; i < len; i++)
		if (chk[i])
			ASSERT_EQ(chk[i], 0);  /* I5: zeros, never A's bytes */
	/* and the server is full now */
	struct fmx_region rc2;
	ASSERT_EQ(fmx_alloc(b3, 1, &rc2), -ENOMEM);
	fmx_disconnect(b3);
	fmx_unlock(xb);
	fmx_lock(xa);
	ASSERT_EQ(fmx_stats(a, &st), 0);
	ASSERT_EQ(st.used_pages, len / 4096);  /* B3's pages were freed on disconnect */
	ASSERT_EQ(st.alloc_failures, 1);
	fmx_disconnect(a);
	fmx_unlock(xa);
	fmx_destroy(xa);
	fmx_destroy(xb);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	free(buf);
	free(chk);
}
TEST(farmem_xport_isolation_sm) { isolation("sm"); }
TEST(farmem_xport_isolation_tcp) { isolation("tcp"); }

/* Hostile requests, each from a fresh client, while a good client works. */
static void hostile(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "64M", g_tok, "--no-rma"), 0);
	struct fmx *xg, *xh;
	ASSERT_EQ(fmx_create(&xg), 0);
	ASSERT_EQ(fmx_create(&xh), 0);
	struct fmx_srv *g = connect_ok(xg, &s, FMX_PATH_AUTO);
	size_t len = 2 * MiB;
	uint8_t *buf = aligned_alloc(4096, len), *chk = aligned_alloc(4096, len);
	tu_fill(buf, len, 5);
	fmx_lock(xg);
	struct fmx_region rg;
	ASSERT_EQ(fmx_alloc(g, len / 4096, &rg), 0);
	ASSERT_EQ(fmx_put(g, &rg, 0, buf, len), 0);
	ASSERT_EQ(fmx_wait(xg), 0);
	fmx_unlock(xg);

	struct fm_req base = { .magic = FM_MAGIC, .version = FM_VERSION };
	int cases = 0;
	for (int k = 0; k < 9; k++) {
		struct fmx_srv *h = connect_ok(xh, &s, FMX_PATH_AUTO);
		fmx_lock(xh);
		struct fmx_region rh;
		ASSERT_EQ(fmx_alloc(h, 16, &rh), 0);
		struct fm_req rq = base;
		rq.req_id = 100 + (uint64_t)k;
		size_t hl = sizeof(rq), dl = 0;
		const void *data = NULL;
		switch (k) {
		case 0: hl = sizeof(rq) - 8; rq.type = FM_STATS; break;        /* short header */
		case 1: rq.type = FM_STATS; rq.magic = 0x1234; break;          /* bad magic */
		case 2: rq.type = 99; break;                                   /* unknown type */
		case 3: rq.type = FM_READ; rq.handle = rh.handle;              /* past the end */
			rq.offset = 16 * 4096; rq.len = 4096; break;
		case 4: rq.type = FM_READ; rq.handle = rh.handle;              /* overflow */
			rq.offset = 4096; rq.len = UINT64_MAX - 100; break;
		case 5: rq.type = FM_WRITE; rq.handle = rh.handle;             /* len != payload */
			rq.offset = 0; rq.len = 8192; data = buf; dl = 4096; break;
		case 6: rq.type = FM_ALLOC; rq.handle = 0; break;              /* zero pages */
		case 7: rq.type = FM_ALLOC; rq.handle = 1ULL << 40; break;     /* huge */
		case 8: rq.type = FM_HELLO; rq.offset = FM_BOM; break;         /* second HELLO */
		}
		struct fm_rep rep;
		int rc = fmx_raw_request(h, &rq, hl, data, dl, &rep, 3000);
		ASSERT_TRUE(rc == -EPROTO || rc == -EPIPE);
		/* cut off: the next request fails */
		struct fm_stats st;
		ASSERT_NE(fmx_stats(h, &st), 0);
		fmx_disconnect(h);
		fmx_unlock(xh);
		cases++;
	}
	/* the good client has everything and the server counted each cut-off */
	fmx_lock(xg);
	memset(chk, 0, len);
	ASSERT_EQ(fmx_get(g, &rg, 0, chk, len), 0);
	ASSERT_EQ(fmx_wait(xg), 0);
	ASSERT_EQ(memcmp(buf, chk, len), 0);
	struct fm_stats st;
	ASSERT_EQ(fmx_stats(g, &st), 0);
	ASSERT_EQ(st.violations, cases);
	ASSERT_EQ(st.used_pages, len / 4096);  /* the hostile clients' pages are freed */
	ASSERT_EQ(st.clients, 1);
	fmx_disconnect(g);
	fmx_unlock(xg);
	fmx_destroy(xg);
	fmx_destroy(xh);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	free(buf);
	free(chk);
}
TEST(farmem_xport_hostile_sm) { hostile("sm"); }
TEST(farmem_xport_hostile_tcp) { hostile("tcp"); }

/* kill -9 mid-run: the transfer fails with -EIO, the server reads dead, no hang */
static void killed(const char *variant)
{
	setup(variant);
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "64M", g_tok, NULL), 0);
	struct fmx *x;
	ASSERT_EQ(fmx_create(&x), 0);
	struct fmx_srv *c = connect_ok(x, &s, FMX_PATH_AUTO);
	size_t len = 4 * MiB;
	uint8_t *buf = aligned_alloc(4096, len);
	tu_fill(buf, len, 1);
	fmx_lock(x);
	struct fmx_region r;
	ASSERT_EQ(fmx_alloc(c, len / 4096, &r), 0);
	ASSERT_EQ(fmx_put(c, &r, 0, buf, len), 0);
	ASSERT_EQ(fmx_wait(x), 0);
	fmx_unlock(x);
	tu_server_stop(&s, SIGKILL);
	uint64_t t0 = th_now_ns();
	fmx_lock(x);
	int rc = 0;
	for (int i = 0; i < 50 && rc == 0; i++) {
		rc = fmx_get(c, &r, 0, buf, len);
		if (rc == 0)
			rc = fmx_wait(x);
		if (rc == 0)
			usleep(20000);
	}
	ASSERT_TRUE(rc == -EIO || rc == -EPIPE);
	ASSERT_FALSE(fmx_alive(c));
	ASSERT_GT(strlen(fmx_dead_reason(c)), 0);
	ASSERT_NE(fmx_stats(c, &(struct fm_stats){ 0 }), 0);
	ASSERT_EQ(fmx_free(c, &r), 0);  /* the server's memory went with it */
	fmx_disconnect(c);
	fmx_unlock(x);
	fmx_destroy(x);
	ASSERT_LT(th_now_ns() - t0, 15000000000ULL);
	free(buf);
}
TEST(farmem_xport_server_killed_sm) { killed("sm"); }
TEST(farmem_xport_server_killed_tcp) { killed("tcp"); }

/* the server's own errors: port in use, size too big, bad arguments, token file */
#define run_memd(a1, a2, a3, a4, a5, a6, err, errlen, ...) \
	run_memd7(a1, a2, a3, a4, a5, a6, err, errlen, ##__VA_ARGS__, NULL)
/* uhmm-memd with up to 7 arguments; its exit status, stderr in err. */
static int run_memd7(const char *a1, const char *a2, const char *a3, const char *a4,
		     const char *a5, const char *a6, char *err, size_t errlen, const char *a7, ...)
{
	char ef[128];
	snprintf(ef, sizeof(ef), "/tmp/uhmm_memd_e_%d_%d", (int)getpid(), rand());
	pid_t p = fork();
	if (p == 0) {
		int fd = open(ef, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 2);
		int nul = open("/dev/null", O_WRONLY);
		dup2(nul, 1);
		execl(tu_memd_path(), "uhmm-memd", a1, a2, a3, a4, a5, a6, a7, (char *)NULL);
		_exit(127);
	}
	int st;
	waitpid(p, &st, 0);
	FILE *f = fopen(ef, "r");
	size_t n = f ? fread(err, 1, errlen - 1, f) : 0;
	err[n] = 0;
	if (f)
		fclose(f);
	unlink(ef);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* MemAvailable and MemTotal of this machine in KiB. */
static void meminfo_kib(long *avail, long *total)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	*avail = *total = -1;
	while (f && fgets(line, sizeof(line), f)) {
		sscanf(line, "MemAvailable: %ld", avail);
		sscanf(line, "MemTotal: %ld", total);
	}
	if (f)
		fclose(f);
}

/*
 * --prefault commits the region at start: the server's RSS covers --size
 * before any client writes; without it, the region is only reserved.  More
 * than the machine has available is refused with one line (committing it
 * would call the OOM killer, not fail).
 */
TEST(farmem_memd_prefault)
{
	setup("tcp");
	long avail, total;
	meminfo_kib(&avail, &total);
	if (avail > 0 && total - avail > 256 * 1024) {
		char size[32], err[1024];
		snprintf(size, sizeof(size), "%ldK", avail + (total - avail) / 2);
		ASSERT_EQ(run_memd("--listen", "127.0.0.1:0", "--size", size, "--token-file", g_tok,
				   err, sizeof(err), "--prefault"), 1);
		ASSERT_TRUE(strstr(err, "available") != NULL);
		ASSERT_EQ(strchr(err, '\n'), err + strlen(err) - 1);  /* one line */
	} else {
		printf("INFO no room between MemAvailable and MemTotal: the refusal is not tried\n");
	}
	struct tu_server s, r;
	ASSERT_EQ(tu_server_start(&s, "48M", g_tok, "--prefault"), 0);
	ASSERT_EQ(tu_server_start(&r, "48M", g_tok, NULL), 0);
	long with = tu_status_kb(s.pid, "VmRSS"), without = tu_status_kb(r.pid, "VmRSS");
	printf("INFO VmRSS with --prefault %ld KiB, without %ld KiB\n", with, without);
	ASSERT_GE(with, 48 * 1024);
	ASSERT_LT(without, 48 * 1024);
	ASSERT_GE(with - without, 40 * 1024);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	ASSERT_EQ(tu_server_stop(&r, SIGTERM), 0);
}

TEST(farmem_memd_errors)
{
	setup("tcp");
	struct tu_server s;
	ASSERT_EQ(tu_server_start(&s, "16M", g_tok, NULL), 0);
	char err[1024];
	ASSERT_EQ(run_memd("--listen", s.addr, "--size", "16M", "--token-file", g_tok, err,
			   sizeof(err)), 1);
	ASSERT_TRUE(strstr(err, "port in use") != NULL);
	ASSERT_EQ(strchr(err, '\n'), err + strlen(err) - 1);  /* one line */
	ASSERT_EQ(run_memd("--listen", "127.0.0.1:0", "--size", "64T", "--token-file", g_tok, err,
			   sizeof(err)), 1);
	ASSERT_TRUE(strstr(err, "too big") != NULL);

	ASSERT_EQ(run_memd("--listen", "127.0.0.1:0", "--size", "12X", "--token-file", g_tok, err,
			   sizeof(err)), 2);
	ASSERT_TRUE(strstr(err, "bad --size") != NULL);
	ASSERT_EQ(run_memd("--listen", "nocolon", "--size", "1M", "--token-file", g_tok, err,
			   sizeof(err)), 2);
	ASSERT_TRUE(strstr(err, "bad --listen") != NULL);
	ASSERT_EQ(run_memd("--listen", "127.0.0.1:0", "--size", "1M", "--token-file",
			   "/nonexistent/tok", err, sizeof(err)), 1);
	ASSERT_TRUE(strstr(err, "token") != NULL);
	/* SIGUSR1: one line of counters; SIGTERM: clean exit */
	kill(s.pid, SIGUSR1);
	usleep(300000);
	ASSERT_TRUE(strstr(tu_server_log(&s), "counters: capacity 4096 pages") != NULL);
	int st = tu_server_stop(&s, SIGTERM);
	ASSERT_TRUE(WIFEXITED(st));
	ASSERT_EQ(WEXITSTATUS(st), 0);
	ASSERT_TRUE(strstr(tu_server_log(&s), "shutdown: capacity") != NULL);
}

TEST_MAIN()
#endif
