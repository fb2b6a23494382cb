# uhmm - Heterogeneous Memory Management in userspace.
#   make            static + shared library, examples
#   make test       build and run the tests (SAN=address or SAN=thread for sanitizers)
#   make demo       build and run the demo programs
#   make bench      build and run the benchmarks (writes build/bench.json)
#   make install PREFIX=/usr/local
#   TRACE=1 with any of them: a build with the page-event trace (in build/trace, build/asan/trace, ...)
SHELL    := /bin/bash
CC       ?= cc
PREFIX   ?= /usr/local
SAN      ?=
VERSION  := 0.1.0

ifeq ($(SAN),)
BUILD    := build
SANFLAGS :=
else ifeq ($(SAN),address)
BUILD    := build/asan
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else ifeq ($(SAN),thread)
BUILD    := build/tsan
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
$(error SAN must be empty, address or thread)
endif
# DEBUG=1: invariant checks (uhmm__assert: pt_lock holders, page metadata,
# frame references) in build/debug.
ifeq ($(DEBUG),1)
BUILD    := $(BUILD)/debug
SANFLAGS += -DUHMM_DEBUG
CFLAGS   ?= -O1 -g
endif
# TRACE=1: the library records page events for debugging (src/trace.c).
ifeq ($(TRACE),1)
BUILD    := $(BUILD)/trace
SANFLAGS += -DUHMM_TRACE
endif

WARN     := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wstrict-prototypes -Wmissing-prototypes
CFLAGS   ?= -O2 -g
ALLCFLAGS := -std=gnu11 $(WARN) $(CFLAGS) $(SANFLAGS) -pthread -Iinclude -MMD -MP
LIBCFLAGS := $(ALLCFLAGS) -fPIC -fvisibility=hidden -Isrc
LDLIBS   := -pthread

# src/: the library; dmirror/: the reference device, built into libuhmm but
# written only against the installed headers (it includes no src/ header).
SRCS     := $(filter-out $(SRCS_EXCLUDE),$(wildcard src/*.c) $(wildcard dmirror/*.c))
LIBOBJS  := $(patsubst %.c,$(BUILD)/obj/%.o,$(notdir $(SRCS)))
STATIC   := $(BUILD)/libuhmm.a
SHARED   := $(BUILD)/libuhmm.so.0
TESTS    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))
BENCHES  := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
# Programs link the shared library, as an application would, so that the
# munmap/mremap/mprotect/madvise interposers are exercised the real way.
PROGLINK := -L$(BUILD) -luhmm -Wl,-rpath,$(abspath $(BUILD)) $(LDLIBS)

# Parts of the build with their own job (far memory, tools, man pages) live in
# mk/*.mk.  A fragment may add programs to EXTRA_TESTS (run by make test after
# TESTS), CHECKS (targets run by make check), EXTRA_PROGS (built by make) and
# INSTALL_EXTRA (targets run by make install).
EXTRA_TESTS   :=
CHECKS        :=
EXTRA_PROGS   :=
INSTALL_EXTRA :=
SHLIB_LDFLAGS :=
include $(filter-out $(MK_EXCLUDE),$(sort $(wildcard mk/*.mk)))

.PHONY: all lib test demo bench bench-plot install clean examples check-deps stress fuzz model check check-layers

all: lib examples $(EXTRA_PROGS)

lib: $(STATIC) $(SHARED)

$(BUILD)/obj/%.o: src/%.c | $(BUILD)/obj
	$(CC) $(LIBCFLAGS) -c -o $@ $<

$(BUILD)/obj/%.o: dmirror/%.c | $(BUILD)/obj
	$(CC) $(ALLCFLAGS) -fPIC -fvisibility=hidden -c -o $@ $<

$(STATIC): $(LIBOBJS)
	rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIBOBJS)
	$(CC) $(ALLCFLAGS) -shared -Wl,-soname,libuhmm.so.0 $(SHLIB_LDFLAGS) -o $@ $(LIBOBJS) $(LDLIBS)
	ln -sf libuhmm.so.0 $(BUILD)/libuhmm.so

$(BUILD)/tests/%: tests/%.c tests/harness.h tests/dmtest.h $(SHARED) | $(BUILD)/tests
	$(CC) $(ALLCFLAGS) -Itests -o $@ $< $(PROGLINK)

$(BUILD)/examples/%: examples/%.c $(SHARED) | $(BUILD)/examples
	$(CC) $(ALLCFLAGS) -o $@ $< $(PROGLINK)

$(BUILD)/bench/%: bench/%.c bench/bench.h $(SHARED) | $(BUILD)/bench
	$(CC) $(ALLCFLAGS) -Ibench -Isrc -o $@ $< $(PROGLINK) -lm

$(BUILD)/obj $(BUILD)/tests $(BUILD)/examples $(BUILD)/bench:
	mkdir -p $@

examples: $(EXAMPLES)

check-deps:
	@sh tools/check-deps.sh

# TSan: the fork tests start threads in a child of a threaded process, which
# uhmm supports (the child makes its own runtime).
# Sanitizer builds run the long loops with fewer iterations (UHMM_TEST_QUICK).
# Reports are symbolized after the fact by tests/run.sh (symbolize=0): the
# in-process symbolizer calls munmap inside a report, which re-enters uhmm.
TESTENV := $(if $(filter thread,$(SAN)),TSAN_OPTIONS="die_after_fork=0 symbolize=0 $(TSAN_OPTIONS)",) \
	   $(if $(filter address,$(SAN)),ASAN_OPTIONS="symbolize=0 $(ASAN_OPTIONS)" \
	   UBSAN_OPTIONS="symbolize=0 print_stacktrace=1 $(UBSAN_OPTIONS)",) \
	   $(if $(SAN),UHMM_TEST_QUICK=1,)

# The reference device's private memory is its own (a driver-owned pool) by
# default; the private-memory tests run again on the host-frame pool.
HOST_VARIANT := $(addprefix UHMM_DMIRROR_MEMORY=host@$(BUILD)/tests/,test_migrate test_kernel test_exclusive test_selfserve \
		test_mirror test_inject test_badinput test_stress)
test: check-deps lib $(TESTS) $(EXTRA_TESTS)
	@$(TESTENV) bash tests/run.sh $(TESTS) $(HOST_VARIANT) $(EXTRA_TESTS)

# Static checks of the tree and the built library (layers, man pages, ABI).
check: lib check-layers $(CHECKS)

# The file-level call graph against the layer table (docs/layers.txt).
check-layers: $(LIBOBJS)
	@bash tools/check-layers.sh $(BUILD)/obj docs/layers.txt

demo: check-deps lib $(EXAMPLES)
	$(BUILD)/examples/demo
	@if [ -x $(BUILD)/examples/svm_atomics ]; then $(BUILD)/examples/svm_atomics; fi
	$(BUILD)/examples/remote_driver

bench: check-deps lib $(BENCHES)
	@bash bench/run.sh $(BUILD)

bench-plot:
	@bash bench/plot.sh build docs

# The concurrency stress test (tests/test_stress.c): make test runs it for
# 20 s, make stress for 10 minutes (STRESS_SECONDS, UHMM_STRESS_SEED).
STRESS_SECONDS ?= 600
stress: check-deps lib $(BUILD)/tests/test_stress
	UHMM_STRESS_SECONDS=$(STRESS_SECONDS) UHMM_TEST_EXTRA_SECONDS=$(STRESS_SECONDS) $(BUILD)/tests/test_stress

# libFuzzer (clang) over random sequences of public calls, bounded in time.
FUZZ_SECONDS ?= 60
fuzz: lib
	@command -v clang >/dev/null || { echo "make fuzz needs clang: apt-get install clang"; exit 1; }
	mkdir -p build/fuzz/corpus
	clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
		-o build/fuzz/fuzz_uhmm fuzz/fuzz_uhmm.c $(SRCS) -pthread
	set -o pipefail; build/fuzz/fuzz_uhmm -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 \
		build/fuzz/corpus 2>&1 | tail -n 20

# The Promela model of the page protocol, checked with spin.
model:
	@bash model/run.sh

install: lib $(INSTALL_EXTRA)
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/uhmm.h $(DESTDIR)$(PREFIX)/include/uhmm.h
	install -m 644 include/uhmm_dmirror.h $(DESTDIR)$(PREFIX)/include/uhmm_dmirror.h
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/libuhmm.a
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/libuhmm.so.0
	ln -sf libuhmm.so.0 $(DESTDIR)$(PREFIX)/lib/libuhmm.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' uhmm.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/uhmm.pc

clean:
	rm -rf build

-include $(LIBOBJS:.o=.d) $(TESTS:=.d) $(EXAMPLES:=.d)
