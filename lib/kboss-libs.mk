# Included by every Makefile.am whose programs link libkboss.a.
KBOSS_CPPFLAGS = -I$(top_srcdir)/lib -DSYSCONFDIR='"$(sysconfdir)"'
KBOSS_CFLAGS = $(WARN_CFLAGS) $(LIBVIRT_CFLAGS) $(LIBXML2_CFLAGS) $(LIBGUESTFS_CFLAGS) \
	$(ZSTD_CFLAGS) $(ZLIB_CFLAGS) $(XXHASH_CFLAGS) $(INIH_CFLAGS) $(JSONC_CFLAGS)
KBOSS_LIBS = $(top_builddir)/lib/libkboss.a $(LIBVIRT_LIBS) $(LIBXML2_LIBS) $(LIBGUESTFS_LIBS) \
	$(ZSTD_LIBS) $(ZLIB_LIBS) $(XXHASH_LIBS) $(INIH_LIBS) $(JSONC_LIBS) $(PTHREAD_LIBS) -lm
