# Included by every Makefile.am whose programs link libkboss.a.
KBOSS_CPPFLAGS = -I$(top_srcdir)/lib -DSYSCONFDIR='"$(sysconfdir)"'
KBOSS_CFLAGS = $(WARN_CFLAGS) $(LIBVIRT_CFLAGS) $(LIBXML2_CFLAGS) $(LIBGUESTFS_CFLAGS) \
	$(ZSTD_CFLAGS) $(ZLIB_CFLAGS) $(LIBDEFLATE_CFLAGS) $(XXHASH_CFLAGS) $(INIH_CFLAGS) $(JSONC_CFLAGS) $(LIBSYSTEMD_CFLAGS)

# Each program links only what its code reaches (docs/architecture.md):
# the configuration, the catalog and its locks every program needs;
KBOSS_CORE_LIBS = $(top_builddir)/lib/libkboss.a $(INIH_LIBS) $(XXHASH_LIBS) $(PTHREAD_LIBS)
# libvirt and the XML and JSON it speaks (virt.c, domain XML);
KBOSS_VIRT_LIBS = $(LIBVIRT_LIBS) $(LIBXML2_LIBS) $(JSONC_LIBS)
# kboss's qcow2 reader and writer, the chain validator (qcow2*.c, chain.c);
KBOSS_QCOW2_LIBS = $(ZSTD_LIBS) $(ZLIB_LIBS) $(LIBDEFLATE_LIBS) $(JSONC_LIBS) -lm
# --json listings (jsonout.c).
KBOSS_JSON_LIBS = $(JSONC_LIBS)
# Everything: the tests and tools that reach every module.
KBOSS_LIBS = $(KBOSS_CORE_LIBS) $(KBOSS_VIRT_LIBS) $(KBOSS_QCOW2_LIBS) $(LIBGUESTFS_LIBS)
