# mk/docs.mk - man pages and the ABI of the shared library.
#   make check-man     every exported function has a page; every page formats
#                      without a warning (tools/check-man.sh)
#   make check-abi     the exported symbols and their versions are those of
#                      abi/libuhmm.abi (tools/check-abi.sh)
#   make install-man   man/man3/*.3 and man/man7/*.7 under $(PREFIX)/share/man
# The version script src/libuhmm.map gives every exported function its
# version (UHMM_0.1, UHMM_0.2, ...); new functions go into the newest node.

MANDIR    ?= $(PREFIX)/share/man
MAN3PAGES := $(wildcard man/man3/*.3)
MAN7PAGES := $(wildcard man/man7/*.7)

SHLIB_LDFLAGS += -Wl,--version-script=$(CURDIR)/src/libuhmm.map
$(SHARED): src/libuhmm.map

.PHONY: check-man check-abi install-man

check-man: $(SHARED)
	@bash tools/check-man.sh $(BUILD)

check-abi: $(SHARED)
	@bash tools/check-abi.sh $(BUILD)

install-man:
	install -d $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man7
	install -m 644 $(MAN3PAGES) $(DESTDIR)$(MANDIR)/man3/
	install -m 644 $(MAN7PAGES) $(DESTDIR)$(MANDIR)/man7/

CHECKS        += check-man check-abi
INSTALL_EXTRA += install-man
