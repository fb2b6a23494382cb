# mk/farmem.mk - far memory over UCX (farmem/, docs/farmem.md):
#   $(BUILD)/farmem/uhmm-memd        the memory server
#   $(BUILD)/libuhmm_farmem.so(.0)   the far-memory device + application API
#   $(BUILD)/tests/test_farmem*      tests (make test runs them)
#   make farmem-demo                 the 512 MiB demo (make demo runs it too)
#   make fuzz-memd                   libFuzzer over the server's request parser
#   $(BUILD)/bench/bench_farmem      the far-memory figures of make bench (bench/run.sh)
# Needs UCX (libucx-dev).  As root a missing UCX is installed with apt-get;
# otherwise one line says what to install, farmem is not built and its tests
# print "SKIP farmem: UCX not installed".

# A '#' for the probe below: in GNU make 4.3 a \# inside $(shell ...) stays
# \#, the probe then compiles a stray backslash and says yes without UCX.
FARMEM_HASH := \#
FARMEM_UCX := $(shell printf '$(FARMEM_HASH)include <ucp/api/ucp.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && echo yes)
ifneq ($(FARMEM_UCX),yes)
ifeq ($(shell id -u),0)
$(info uhmm farmem: UCX headers missing, installing libucx-dev ucx-utils with apt-get)
FARMEM_APT := $(shell (apt-get install -y libucx-dev ucx-utils || (apt-get update && apt-get install -y libucx-dev ucx-utils)) >/dev/null 2>&1; echo done)
FARMEM_UCX := $(shell printf '$(FARMEM_HASH)include <ucp/api/ucp.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && echo yes)
endif
endif
ifneq ($(FARMEM_UCX),yes)
$(info uhmm farmem: UCX not installed, far memory is not built: apt-get install libucx-dev ucx-utils)
endif

# UCX's default memory hooks patch munmap around uhmm's interposer (see
# uhmm_farmem_open): everything make runs has them off.
export UCX_MEM_EVENTS ?= no

FARMEM_LIB    := $(BUILD)/libuhmm_farmem.so.0
FARMEM_MEMD   := $(BUILD)/farmem/uhmm-memd
FARMEM_DEMO   := $(BUILD)/farmem/farmem_demo
# In $(BENCHES) (bench/*.c); the explicit rules below win over the generic
# bench rule, which links libuhmm only.
FARMEM_BENCH  := $(BUILD)/bench/bench_farmem
FARMEM_OBJS   := $(BUILD)/farmem/obj/farmem.o $(BUILD)/farmem/obj/xport.o $(BUILD)/farmem/obj/proto.o
FARMEM_TESTS  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_farmem*.c))
FARMEM_UCXLIBS := -lucp -lucs
FARMEM_LINK   := -L$(BUILD) -luhmm_farmem -luhmm -Wl,-rpath,$(abspath $(BUILD)) $(FARMEM_UCXLIBS) $(LDLIBS)

# The farmem tests run as EXTRA_TESTS (after the others), not twice.
TESTS := $(filter-out $(FARMEM_TESTS),$(TESTS))
EXTRA_TESTS += $(FARMEM_TESTS)

.PHONY: farmem farmem-demo fuzz-memd install-farmem

ifeq ($(FARMEM_UCX),yes)
EXTRA_PROGS   += $(FARMEM_MEMD) $(FARMEM_LIB)
INSTALL_EXTRA += install-farmem

farmem: $(FARMEM_MEMD) $(FARMEM_LIB)

$(BUILD)/farmem/obj/%.o: farmem/%.c farmem/proto.h farmem/xport.h include/uhmm_farmem.h | $(BUILD)/farmem/obj
	$(CC) $(ALLCFLAGS) -fPIC -fvisibility=hidden -Ifarmem -c -o $@ $<

$(FARMEM_LIB): $(FARMEM_OBJS) $(SHARED)
	$(CC) $(ALLCFLAGS) -shared -Wl,-soname,libuhmm_farmem.so.0 -o $@ $(FARMEM_OBJS) \
		-L$(BUILD) -luhmm -Wl,-rpath,$(abspath $(BUILD)) $(FARMEM_UCXLIBS) $(LDLIBS)
	ln -sf libuhmm_farmem.so.0 $(BUILD)/libuhmm_farmem.so

$(FARMEM_MEMD): farmem/memd.c farmem/proto.c farmem/proto.h | $(BUILD)/farmem/obj
	$(CC) $(ALLCFLAGS) -Ifarmem -o $@ farmem/memd.c farmem/proto.c $(FARMEM_UCXLIBS) $(LDLIBS)

$(FARMEM_DEMO): farmem/farmem_demo.c $(FARMEM_LIB) $(FARMEM_MEMD)
	$(CC) $(ALLCFLAGS) -o $@ $< $(FARMEM_LINK)

# The transport test links the transport itself (no uhmm needed); the others
# link the library as an application would.
$(BUILD)/tests/test_farmem_xport: tests/test_farmem_xport.c farmem/testutil.h tests/harness.h \
		farmem/xport.c farmem/proto.c farmem/xport.h farmem/proto.h $(FARMEM_MEMD) | $(BUILD)/tests
	$(CC) $(ALLCFLAGS) -Itests -Ifarmem -o $@ $< farmem/xport.c farmem/proto.c $(FARMEM_UCXLIBS) $(LDLIBS)

$(BUILD)/tests/test_farmem%: tests/test_farmem%.c farmem/testutil.h tests/harness.h \
		$(FARMEM_LIB) $(FARMEM_MEMD) | $(BUILD)/tests
	$(CC) $(ALLCFLAGS) -Itests -Ifarmem -o $@ $< $(FARMEM_LINK)

# The bench links the transport too: its floors are UCX transfers.
$(FARMEM_BENCH): bench/bench_farmem.c bench/bench.h farmem/testutil.h farmem/xport.c \
		farmem/proto.c farmem/xport.h farmem/proto.h $(FARMEM_LIB) $(FARMEM_MEMD) | $(BUILD)/bench
	$(CC) $(ALLCFLAGS) -Ibench -Ifarmem -o $@ $< farmem/xport.c farmem/proto.c $(FARMEM_LINK) -lm

farmem-demo: $(FARMEM_DEMO)
	$(FARMEM_DEMO)

demo: farmem-demo

install-farmem: $(FARMEM_LIB) $(FARMEM_MEMD)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(FARMEM_MEMD) $(DESTDIR)$(PREFIX)/bin/uhmm-memd
	install -m 644 include/uhmm_farmem.h $(DESTDIR)$(PREFIX)/include/uhmm_farmem.h
	install -m 755 $(FARMEM_LIB) $(DESTDIR)$(PREFIX)/lib/libuhmm_farmem.so.0
	ln -sf libuhmm_farmem.so.0 $(DESTDIR)$(PREFIX)/lib/libuhmm_farmem.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' farmem/uhmm_farmem.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/uhmm_farmem.pc
else
# Without UCX the tests build as stubs that print SKIP lines.
$(BUILD)/tests/test_farmem%: tests/test_farmem%.c farmem/testutil.h tests/harness.h $(SHARED) | $(BUILD)/tests
	$(CC) $(ALLCFLAGS) -DUHMM_FARMEM_NO_UCX -Itests -Ifarmem -o $@ $< $(PROGLINK)

# ... and the bench as a stub that reports its metrics as not measured.
$(FARMEM_BENCH): bench/bench_farmem.c bench/bench.h | $(BUILD)/bench
	$(CC) $(ALLCFLAGS) -DUHMM_FARMEM_NO_UCX -Ibench -o $@ $< -lm

farmem farmem-demo install-farmem:
	@echo "uhmm farmem: UCX not installed (apt-get install libucx-dev ucx-utils): skipped"
endif

$(BUILD)/farmem/obj:
	mkdir -p $@

# libFuzzer over the request parser and the server's state (farmem/proto.c).
fuzz-memd:
	@command -v clang >/dev/null || { echo "make fuzz-memd needs clang: apt-get install clang"; exit 1; }
	mkdir -p build/fuzz/corpus_memd
	clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Ifarmem \
		-o build/fuzz/fuzz_memd fuzz/fuzz_memd.c farmem/proto.c
	set -o pipefail; build/fuzz/fuzz_memd -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
		build/fuzz/corpus_memd 2>&1 | tail -n 5

fuzz: fuzz-memd

-include $(FARMEM_OBJS:.o=.d)
