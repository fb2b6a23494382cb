/* SPDX-License-Identifier: MIT */
/*
 * test_farmem_netns.c - far memory over a real network interface: the
 * server runs in its own network namespace, reached over a veth pair, so
 * that TCP (UCX_TLS=tcp, UCX_NET_DEVICES=the veth) crosses an interface
 * with its own queue, MTU and checksum path instead of loopback.  Data
 * exact after 16 MiB out and back (random and sequential), the bytes seen
 * on the interface's counters, RssAnon, and a server killed behind the
 * veth (SIGBUS-free: replicas=2 with a second server on loopback).  Needs
 * root (CAP_NET_ADMIN, `ip netns add`): SKIP with the reason otherwise.
 * The namespace and the veth are removed when the case ends, however it
 * ends (a janitor process waits for the case's exit).
 */
#include "harness.h"
#include "testutil.h"

#ifdef UHMM_FARMEM_NO_UCX
TU_MAIN_NO_UCX()
#else

#include <stdarg.h>
#include <uhmm.h>
#include <uhmm_farmem.h>

#define MiB (1UL << 20)
#define PS  4096UL

static char g_tok[256];
static char g_ns[32], g_va[16], g_vb[16], g_ipa[32], g_ipb[32];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	char full[600];
	snprintf(full, sizeof(full), "%s >/dev/null 2>&1", cmd);
	int st = system(full);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Removes the namespace (and with it the veth pair) once the case exits. */
static void janitor(void)
{
	int p[2];
	if (pipe(p))
		return;
	pid_t pid = fork();
	if (pid == 0) {
		close(p[1]);
		setsid();
		char c;
		while (read(p[0], &c, 1) > 0)
			;
		sh("ip netns del %s", g_ns);
		sh("ip link del %s", g_va);
		_exit(0);
	}
	close(p[0]);  /* p[1] stays open in this process until it exits */
}

/* The namespace, the veth pair and addresses; SKIP with the reason if not allowed. */
static void net_setup(void)
{
	unsigned id = (unsigned)getpid();
	snprintf(g_ns, sizeof(g_ns), "uhmmfm%u", id);
	snprintf(g_va, sizeof(g_va), "fm%ua", id % 1000000);
	snprintf(g_vb, sizeof(g_vb), "fm%ub", id % 1000000);
	/* a /30 of 10.213.0.0/16 per process */
	unsigned q = id % 16384;
	snprintf(g_ipa, sizeof(g_ipa), "10.213.%u.%u", q / 64, (q % 64) * 4 + 1);
	snprintf(g_ipb, sizeof(g_ipb), "10.213.%u.%u", q / 64, (q % 64) * 4 + 2);
	if (geteuid() != 0)
		SKIP("needs root for ip netns / veth (CAP_NET_ADMIN)");
	if (sh("command -v ip"))
		SKIP("the ip command (iproute2) is not installed");
	if (sh("ip netns add %s", g_ns))
		SKIP("ip netns add failed (no CAP_NET_ADMIN or no netns support)");
	janitor();
	if (sh("ip link add %s type veth peer name %s", g_va, g_vb))
		SKIP("ip link add type veth failed (no veth driver)");
	ASSERT_EQ(sh("ip link set %s netns %s", g_vb, g_ns), 0);
	ASSERT_EQ(sh("ip addr add %s/30 dev %s", g_ipa, g_va), 0);
	ASSERT_EQ(sh("ip link set %s up", g_va), 0);
	ASSERT_EQ(sh("ip netns exec %s ip addr add %s/30 dev %s", g_ns, g_ipb, g_vb), 0);
	ASSERT_EQ(sh("ip netns exec %s ip link set %s up", g_ns, g_vb), 0);
	ASSERT_EQ(sh("ip netns exec %s ip link set lo up", g_ns), 0);
	/* the link comes up asynchronously */
	for (int i = 0; i < 100 && sh("ping -c 1 -W 1 %s", g_ipb); i++)
		usleep(50000);
}

static uint64_t if_bytes(const char *dev, const char *what)
{
	char path[128];
	snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/%s_bytes", dev, what);
	FILE *f = fopen(path, "r");
	unsigned long long v = 0;
	if (f) {
		if (fscanf(f, "%llu", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v;
}

static void setup_uhmm(void)
{
	tu_case_token(g_tok, sizeof(g_tok), "farmem-netns-token");
	tu_case_uhmm();
}

/* 16 MiB out over the veth and back, by faults (random, then sequential). */
TEST_TIMEOUT(farmem_netns_veth_tcp, 60)
{
	net_setup();
	setenv("UCX_TLS", "tcp", 1);
	setup_uhmm();
	struct tu_server s;
	setenv("UCX_NET_DEVICES", g_vb, 1);  /* the server's end */
	ASSERT_EQ(tu_server_start_in(&s, g_ipb, g_ns, "64M", g_tok, NULL), 0);
	setenv("UCX_NET_DEVICES", g_va, 1);  /* ours */
	struct uhmm_farmem_opts o = { .token_file = g_tok, .max_pages = 8192 };
	struct uhmm_farmem *fm = NULL;
	ASSERT_EQ(uhmm_farmem_open(s.addr, &o, &fm), 0);
	size_t len = 16 * MiB, npages = len / PS;
	uint8_t *p = th_mmap_isolated(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	ASSERT_MAPPED(p);
	tu_fill(p, len, 5);
	uint64_t tx0 = if_bytes(g_va, "tx"), rx0 = if_bytes(g_va, "rx");
	long rss0 = tu_rss_anon_kb();
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	long rss1 = tu_rss_anon_kb();
	if (tu_rss_exact())
		ASSERT_GE(rss0 - rss1, (long)(len / 1024) * 95 / 100);
	uint64_t tx1 = if_bytes(g_va, "tx");
	/* the pages crossed the interface (headers on top) */
	ASSERT_GE(tx1 - tx0, len);
	/* random half by single faults, then the rest in order (read-ahead) */
	for (size_t k = 0, i = 0; k < npages / 2; k++, i = (i + 101) % npages)
		ASSERT_EQ(tu_check_page(p, i * PS, 5), 0);
	for (size_t i = 0; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 5), 0);
	uint64_t rx1 = if_bytes(g_va, "rx");
	ASSERT_GE(rx1 - rx0, len);
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.pages_out, npages);
	ASSERT_EQ(st.pages_in, npages);
	ASSERT_EQ(st.fault_errors, 0);
	ASSERT_GT(st.faults, 0);
	ASSERT_EQ(st.degraded, 0);
	printf("INFO netns: %s over %s, %llu faults p50 %.1f us p99 %.1f us, tx %llu rx %llu bytes\n",
	       s.addr, g_va, (unsigned long long)st.faults, st.fault_p50_ns / 1e3,
	       st.fault_p99_ns / 1e3, (unsigned long long)(tx1 - tx0),
	       (unsigned long long)(rx1 - rx0));
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(tu_server_stop(&s, SIGTERM), 0);
	munmap(p, len);
}

/* replicas=2, one server behind the veth, one on loopback: the veth one is
 * killed mid-run, nothing is lost, stats report degraded. */
TEST_TIMEOUT(farmem_netns_replica_kill_tcp, 60)
{
	net_setup();
	setenv("UCX_TLS", "tcp", 1);
	setup_uhmm();
	struct tu_server far, near;
	setenv("UCX_NET_DEVICES", g_vb, 1);
	ASSERT_EQ(tu_server_start_in(&far, g_ipb, g_ns, "64M", g_tok, NULL), 0);
	setenv("UCX_NET_DEVICES", "lo", 1);
	ASSERT_EQ(tu_server_start(&near, "64M", g_tok, NULL), 0);
	char devs[64];
	snprintf(devs, sizeof(devs), "%s,lo", g_va);
	setenv("UCX_NET_DEVICES", devs, 1);
	char list[160];
	snprintf(list, sizeof(list), "%s,%s", far.addr, near.addr);
	struct uhmm_farmem_opts o = { .token_file = g_tok, .replicas = 2, .max_pages = 8192 };
	struct uhmm_farmem *fm = NULL;
	ASSERT_EQ(uhmm_farmem_open(list, &o, &fm), 0);
	size_t len = 8 * MiB, npages = len / PS;
	uint8_t *p = th_mmap_isolated(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	ASSERT_MAPPED(p);
	tu_fill(p, len, 9);
	ASSERT_EQ(uhmm_farmem_place(fm, p, len), 0);
	for (size_t i = 0; i < npages / 4; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 9), 0);
	tu_server_stop(&far, SIGKILL);
	for (size_t i = npages / 4; i < npages; i++)
		ASSERT_EQ(tu_check_page(p, i * PS, 9), 0);
	struct uhmm_farmem_stats st;
	ASSERT_EQ(uhmm_farmem_stats(fm, &st), 0);
	ASSERT_EQ(st.pages_remote, 0);
	ASSERT_EQ(st.fault_errors, 0);
	ASSERT_EQ(st.server[0].alive, 0);
	ASSERT_EQ(st.server[1].alive, 1);
	ASSERT_EQ(st.degraded, 1);
	ASSERT_EQ(uhmm_farmem_close(fm), 0);
	ASSERT_EQ(tu_server_stop(&near, SIGTERM), 0);
	munmap(p, len);
}

TEST_MAIN()
#endif
