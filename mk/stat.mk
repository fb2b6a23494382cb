# mk/stat.mk - uhmm-stat, the live counters viewer (tools/uhmm-stat.c), and
# what its test needs.  The tool reads /dev/shm/uhmm.<pid> and links nothing
# of libuhmm (include/uhmm.h gives it struct uhmm_stats only).
# tests/test_stat.c is an ordinary TEST() program (built by the tests/test_%
# pattern, run by make test); it runs the tool, hence the extra prerequisite.
STAT_TOOL := $(BUILD)/tools/uhmm-stat
EXTRA_PROGS += $(STAT_TOOL)

$(STAT_TOOL): tools/uhmm-stat.c include/uhmm.h
	@mkdir -p $(@D)
	$(CC) $(ALLCFLAGS) -o $@ $<

$(BUILD)/tests/test_stat: $(STAT_TOOL)

.PHONY: install-stat
install-stat: $(STAT_TOOL)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(STAT_TOOL) $(DESTDIR)$(PREFIX)/bin/uhmm-stat
INSTALL_EXTRA += install-stat

-include $(STAT_TOOL).d
