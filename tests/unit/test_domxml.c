/* lib/domxml.c: one test per rule of the domain XML allow-list, the
 * checkpoint and backup-job documents, and kb_escape_text(). Outputs are
 * parsed back with libxml2 and queried with XPath, as libvirt would read them. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "catalog.h"
#include "domxml.h"
#include "log.h"
#include "util.h"

static const char *head = "<domain type='kvm'>"
                          "<name>orig</name><uuid>11111111-2222-3333-4444-555555555555</uuid>"
                          "<memory unit='MiB'>512</memory><vcpu>2</vcpu>"
                          "<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>";

static char *built, **notices, *error;
static struct kb_domxml_info info;

static void clear(void)
{
  free(built);
  free(error);
  kb_strv_free(notices);
  built = NULL;
  error = NULL;
  notices = NULL;
}

TestSuite(domxml, .fini = clear);

/* Build from HEAD + MIDDLE + "<devices>" + DEVICES + "</devices></domain>". */
static int build_full(const char *xml, bool network, const struct kb_domxml_disk *disks, size_t n)
{
  struct kb_domxml_opts o = {
    .name = "kboss-val-b1", .description = "kboss validation VM", .disks = disks, .ndisks = n,
    .network = network, .nvram = "/var/lib/kboss/scratch/kboss-val-b1/nvram.fd",
  };
  clear();
  return kb_domxml_build(xml, &o, &built, &info, &notices, &error);
}

static const struct kb_domxml_disk one_disk[] = {
  { "vda", "/scratch/vda.qcow2", "qcow2", NULL },
};

static int build(const char *middle, const char *devices, bool network)
{
  CLEANUP_FREE char *xml = kb_printf("%s%s<devices>"
                                     "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                                     "<source file='/var/lib/libvirt/images/orig.qcow2'/>"
                                     "<target dev='vda' bus='virtio'/></disk>%s</devices></domain>",
                                     head, middle, devices);
  return build_full(xml, network, one_disk, 1);
}

static int count(const char *xml, const char *xpath)
{
  xmlDocPtr doc = xmlReadMemory(xml, (int) strlen(xml), "out.xml", NULL, XML_PARSE_NONET);
  xmlXPathContextPtr ctx;
  xmlXPathObjectPtr o;
  int n;

  cr_assert_not_null(doc, "the built XML parses");
  ctx = xmlXPathNewContext(doc);
  o = xmlXPathEvalExpression((const xmlChar *) xpath, ctx);
  cr_assert_not_null(o, "xpath %s", xpath);
  n = o->type == XPATH_NODESET ? (o->nodesetval ? o->nodesetval->nodeNr : 0) : (int) xmlXPathCastToNumber(o);
  xmlXPathFreeObject(o);
  xmlXPathFreeContext(ctx);
  xmlFreeDoc(doc);
  return n;
}

static char *value(const char *xml, const char *xpath)
{
  xmlDocPtr doc = xmlReadMemory(xml, (int) strlen(xml), "out.xml", NULL, XML_PARSE_NONET);
  xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
  CLEANUP_FREE char *expr = kb_printf("string(%s)", xpath);
  xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *) expr, ctx);
  char *r = strdup(o && o->stringval ? (const char *) o->stringval : "");

  xmlXPathFreeObject(o);
  xmlXPathFreeContext(ctx);
  xmlFreeDoc(doc);
  return r;
}

static bool noticed(const char *what)
{
  for (size_t i = 0; notices && notices[i]; i++)
    if (strstr(notices[i], what))
      return true;
  return false;
}

Test(domxml, kboss_choices_and_checked_values)
{
  CLEANUP_FREE char *name = NULL, *mem = NULL, *machine = NULL, *listen = NULL, *src = NULL;

  cr_assert_eq(build("", "", false), 0, "%s", error ? error : "");
  name = value(built, "/domain/name");
  cr_expect_str_eq(name, "kboss-val-b1");
  cr_expect_eq(count(built, "/domain/uuid"), 0, "no UUID: libvirt makes a new one");
  mem = value(built, "/domain/memory[@unit='KiB']");
  cr_expect_str_eq(mem, "524288");
  cr_expect_eq(info.mem_kib, 524288);
  cr_expect_eq(info.vcpus, 2);
  machine = value(built, "/domain/os/type/@machine");
  cr_expect_str_eq(machine, "pc-q35-7.2");
  listen = value(built, "/domain/devices/graphics[@type='vnc']/@listen");
  cr_expect_str_eq(listen, "127.0.0.1");
  cr_expect_eq(count(built, "/domain/devices/graphics/listen[@address!='127.0.0.1']"), 0);
  cr_expect_eq(count(built, "/domain/devices/channel/target[@name='org.qemu.guest_agent.0']"), 1);
  cr_expect_eq(count(built, "/domain/devices/channel/source"), 0, "libvirt picks the agent socket");
  src = value(built, "/domain/devices/disk/source/@file");
  cr_expect_str_eq(src, "/scratch/vda.qcow2");
  cr_expect_eq(count(built, "//*[contains(@file,'orig.qcow2')]"), 0, "the saved disk path is gone");
  cr_expect_eq(count(built, "/domain/os/boot[@dev='hd']"), 1);
  cr_expect_eq(notices[0], NULL, "nothing dropped from a plain domain");
}

Test(domxml, foreign_namespace_dropped_with_notice)
{
  const char *xml = "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
                    "<name>x</name><memory>524288</memory>"
                    "<os><type>hvm</type></os><devices>"
                    "<disk device='disk'><target dev='vda'/></disk>"
                    "<qemu:rogue/></devices>"
                    "<qemu:commandline><qemu:arg value='-D'/><qemu:arg value='/tmp/pwned'/></qemu:commandline>"
                    "</domain>";

  cr_assert_eq(build_full(xml, false, one_disk, 1), 0, "%s", error ? error : "");
  cr_expect_null(strstr(built, "commandline"));
  cr_expect_null(strstr(built, "/tmp/pwned"));
  cr_expect_null(strstr(built, "rogue"));
  cr_expect(noticed("<qemu:commandline>"), "a notice names <qemu:commandline>");
  cr_expect(noticed("<qemu:rogue>"));
}

Test(domxml, emulator_dropped)
{
  cr_assert_eq(build("", "<emulator>/mnt/export/evil-qemu</emulator>", false), 0);
  cr_expect_eq(count(built, "//emulator"), 0);
  cr_expect(noticed("<emulator>"));
}

Test(domxml, host_paths_in_os_dropped)
{
  const char *xml = "<domain type='kvm'><name>x</name><memory>524288</memory>"
                    "<os><type arch='x86_64' machine='q35'>hvm</type>"
                    "<loader readonly='yes' secure='yes' type='pflash'>/mnt/export/OVMF.fd</loader>"
                    "<nvram>/etc/shadow</nvram><kernel>/etc/shadow</kernel><initrd>/root/x</initrd>"
                    "<cmdline>init=/bin/sh</cmdline><dtb>/x</dtb></os>"
                    "<devices><disk><target dev='vda'/></disk></devices></domain>";

  cr_assert_eq(build_full(xml, false, one_disk, 1), 0, "%s", error ? error : "");
  cr_expect_null(strstr(built, "/etc/shadow"));
  cr_expect_null(strstr(built, "/mnt/export"));
  cr_expect_null(strstr(built, "init=/bin/sh"));
  cr_expect_eq(count(built, "/domain/os/kernel|/domain/os/initrd|/domain/os/cmdline|/domain/os/dtb"), 0);
  cr_expect(noticed("<kernel>") && noticed("<initrd>") && noticed("<loader"));
  /* UEFI stays UEFI, with the host's firmware and kboss's variable store. */
  cr_expect_eq(count(built, "/domain/os[@firmware='efi']"), 1);
  cr_expect_eq(count(built, "/domain/os/loader[@secure='yes' and not(text())]"), 1);
  cr_expect_eq(count(built, "/domain/os/nvram[text()='/var/lib/kboss/scratch/kboss-val-b1/nvram.fd']"), 1);
  cr_expect_eq(count(built, "/domain/features/smm[@state='on']"), 1, "secure boot needs smm");
}

Test(domxml, memory_backing_and_numa_tuning_dropped)
{
  cr_assert_eq(build("<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"
                     "<numatune><memory nodeset='0'/></numatune><cputune><vcpupin vcpu='0' cpuset='1'/></cputune>",
                     "", false), 0);
  cr_expect_eq(count(built, "//memoryBacking|//numatune|//cputune"), 0);
  cr_expect(noticed("<memoryBacking>") && noticed("<numatune>") && noticed("<cputune>"));
}

Test(domxml, host_devices_dropped)
{
  cr_assert_eq(build("", "<hostdev mode='subsystem' type='pci'><source><address bus='0'/></source></hostdev>"
                         "<redirdev bus='usb' type='tcp'><source mode='connect' host='10.0.0.1' service='4000'/></redirdev>"
                         "<smartcard mode='passthrough' type='tcp'/>", false), 0);
  cr_expect_eq(count(built, "//hostdev|//redirdev|//smartcard"), 0);
  cr_expect(noticed("<hostdev type='pci'>") && noticed("<redirdev type='tcp'>") && noticed("<smartcard type='tcp'>"));
}

Test(domxml, nvdimm_and_shared_memory_dropped)
{
  cr_assert_eq(build("", "<memory model='nvdimm'><source><path>/dev/sda</path></source>"
                         "<target><size unit='MiB'>128</size></target></memory>"
                         "<shmem name='x'><server path='/tmp/sock'/></shmem>"
                         "<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>", false), 0);
  cr_expect_null(strstr(built, "/dev/sda"));
  cr_expect_eq(count(built, "/domain/devices/memory|//shmem|//filesystem"), 0);
  cr_expect(noticed("<memory>") && noticed("<shmem>") && noticed("<filesystem type='mount'>"));
}

Test(domxml, rng_only_from_urandom)
{
  cr_assert_eq(build("", "<rng model='virtio'><backend model='egd' type='tcp'>"
                         "<source mode='connect' host='203.0.113.9' service='1234'/></backend></rng>", false), 0);
  cr_expect_eq(count(built, "//rng"), 0);
  cr_expect_null(strstr(built, "203.0.113.9"));
  cr_expect(noticed("<rng> (backend 'egd')"));

  cr_assert_eq(build("", "<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>", false), 0);
  cr_expect_eq(count(built, "//rng"), 0, "a random backend on another file is dropped");

  cr_assert_eq(build("", "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>", false), 0);
  cr_expect_eq(count(built, "/domain/devices/rng[@model='virtio']/backend[@model='random' and text()='/dev/urandom']"),
               1);
}

Test(domxml, character_devices_dropped)
{
  cr_assert_eq(build("", "<serial type='tcp'><source mode='connect' host='203.0.113.9' service='23'/></serial>"
                         "<serial type='file'><source path='/etc/cron.d/x'/></serial>"
                         "<console type='pty'/><parallel type='dev'><source path='/dev/sda'/></parallel>"
                         "<channel type='unix'><source mode='bind' path='/root/sock'/>"
                         "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
                         "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>",
                     false), 0);
  cr_expect_eq(count(built, "//serial|//console|//parallel"), 0);
  cr_expect_eq(count(built, "//channel"), 1, "only kboss's agent channel");
  cr_expect_eq(count(built, "//channel/source"), 0);
  cr_expect_null(strstr(built, "/root/sock"));
  cr_expect(noticed("<serial type='tcp'>") && noticed("<serial type='file'>") && noticed("<parallel type='dev'>"));
  cr_expect(noticed("<channel type='unix'>") && noticed("<channel type='spicevmc'>"));
}

Test(domxml, validation_vms_have_no_network)
{
  cr_assert_eq(build("", "<interface type='network'><mac address='52:54:00:aa:bb:cc'/>"
                         "<source network='default'/><model type='virtio'/></interface>", false), 0);
  cr_expect_eq(count(built, "//interface"), 0);
  cr_expect(noticed("<interface type='network'>") && noticed("no network"));
}

Test(domxml, restore_nics_get_new_macs)
{
  cr_assert_eq(build("", "<interface type='network'><mac address='52:54:00:aa:bb:cc'/>"
                         "<source network='default'/><target dev='vnet7'/><model type='e1000'/></interface>"
                         "<interface type='bridge'><source bridge='br0'/><model type='evil'/></interface>"
                         "<interface type='ethernet'><script path='/mnt/export/up.sh'/></interface>"
                         "<interface type='network'><source network='a&amp;b'/></interface>"
                         "<interface type='udp'><source address='203.0.113.9' port='1'/></interface>",
                     true), 0);
  cr_expect_eq(count(built, "//interface"), 2);
  cr_expect_eq(count(built, "//interface/mac|//interface/target|//interface/script"), 0, "libvirt makes new MACs");
  cr_expect_eq(count(built, "//interface[@type='network']/source[@network='default']"), 1);
  cr_expect_eq(count(built, "//interface[@type='network']/model[@type='e1000']"), 1);
  cr_expect_eq(count(built, "//interface[@type='bridge']/model[@type='virtio']"), 1, "unknown model: virtio");
  cr_expect_null(strstr(built, "up.sh"));
  cr_expect(noticed("<interface type='ethernet'>") && noticed("<interface type='udp'>"));
}

Test(domxml, only_kboss_disks)
{
  const char *xml = "<domain type='qemu'><name>x</name><memory>524288</memory><os><type>hvm</type></os><devices>"
                    "<disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda' bus='sata'/>"
                    "<boot order='5'/></disk>"
                    "<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdb' bus='evil'/>"
                    "<boot order='2'/></disk>"
                    "<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdc'/></disk>"
                    "<disk type='file' device='cdrom'><source file='/root/x.iso'/><target dev='hdc'/></disk>"
                    "<disk type='network' device='disk'><source protocol='nbd' name='x'><host name='203.0.113.9'/>"
                    "</source><target dev='vdd'/></disk>"
                    "</devices></domain>";
  const struct kb_domxml_disk disks[] = {
    { "vda", "/scratch/vda.qcow2", "qcow2", NULL },
    { "vdb", "/scratch/vdb.qcow2", "qcow2", NULL },
  };
  CLEANUP_FREE char *b0 = NULL, *b1 = NULL;

  cr_assert_eq(build_full(xml, false, disks, 2), 0, "%s", error ? error : "");
  cr_expect_eq(count(built, "//disk"), 2);
  cr_expect_null(strstr(built, "/dev/sda"));
  cr_expect_null(strstr(built, "/etc/shadow"));
  cr_expect_null(strstr(built, "x.iso"));
  cr_expect_null(strstr(built, "203.0.113.9"));
  cr_expect_eq(count(built, "//disk[@type!='file']"), 0);
  cr_expect_eq(count(built, "//disk/target[@dev='vda' and @bus='sata']"), 1, "an allowed bus is kept");
  cr_expect_eq(count(built, "//disk/target[@dev='vdb' and @bus='virtio']"), 1, "an unknown bus is virtio");
  b0 = value(built, "//disk[target/@dev='vda']/boot/@order");
  b1 = value(built, "//disk[target/@dev='vdb']/boot/@order");
  cr_expect_str_eq(b0, "2", "boot order renumbered in the saved order");
  cr_expect_str_eq(b1, "1");
  cr_expect_eq(count(built, "/domain/os/boot"), 0, "no <os><boot> beside per-disk orders");
  cr_expect(noticed("vdc") && noticed("not in the backup"));
  cr_expect(noticed("<disk type='file'>") && noticed("<disk type='network'>"));
}

Test(domxml, backing_chain_spelled_out)
{
  char *chain[] = { "/st/c/b2/vda.qcow2", "/st/c/b1/vda.qcow2", NULL };
  char *none[] = { NULL };
  const struct kb_domxml_disk disks[] = {
    { "vda", "/scratch/vda.qcow2", "qcow2", chain },
    { "vdb", "/scratch/vdb.qcow2", "qcow2", none },
  };
  const char *xml = "<domain type='kvm'><name>x</name><memory>524288</memory><os><type>hvm</type></os><devices>"
                    "<disk><source file='/a'/><backingStore type='file'><source file='/etc/shadow'/>"
                    "<backingStore/></backingStore><target dev='vda'/></disk></devices></domain>";
  CLEANUP_FREE char *n1 = NULL, *n2 = NULL;

  cr_assert_eq(build_full(xml, false, disks, 2), 0, "%s", error ? error : "");
  cr_expect_null(strstr(built, "/etc/shadow"));
  n1 = value(built, "//disk[target/@dev='vda']/backingStore[@type='file']/source/@file");
  n2 = value(built, "//disk[target/@dev='vda']/backingStore/backingStore[@type='file']/source/@file");
  cr_expect_str_eq(n1, "/st/c/b2/vda.qcow2");
  cr_expect_str_eq(n2, "/st/c/b1/vda.qcow2");
  cr_expect_eq(count(built, "//disk[target/@dev='vda']/backingStore/backingStore/format[@type='qcow2']"), 1);
  cr_expect_eq(count(built, "//disk[target/@dev='vda']/backingStore/backingStore/backingStore[not(*)]"), 1,
               "an empty <backingStore/> ends the chain");
  cr_expect_eq(count(built, "//disk[target/@dev='vdb']/backingStore[not(*)]"), 1,
               "an empty chain: no backing file at all");
}

Test(domxml, memory_checked)
{
  static const char *const bad[] = {
    "<memory unit='MiB'>8</memory>",              /* below 16 MiB */
    "<memory unit='TiB'>17</memory>",             /* above 16 TiB */
    "<memory unit='EiB'>1</memory>",              /* unknown unit */
    "<memory>-5</memory>",
    "<memory>12abc</memory>",
    "<memory unit='b'>99999999999999999999999</memory>",
    "<memory unit='GiB'>18446744073709551615</memory>",   /* overflows */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    CLEANUP_FREE char *xml = kb_printf("<domain type='kvm'><name>x</name>%s<os><type>hvm</type></os>"
                                       "<devices/></domain>", bad[i]);
    cr_expect_eq(build_full(xml, false, one_disk, 1), -EINVAL, "refused: %s", bad[i]);
    cr_expect(error && strstr(error, "memory"), "the error names the memory");
  }
  cr_assert_eq(build_full("<domain type='kvm'><name>x</name><memory unit='GiB'> 2 </memory>"
                          "<currentMemory unit='GiB'>4</currentMemory><os><type>hvm</type></os><devices/></domain>",
                          false, one_disk, 1), 0);
  cr_expect_eq(info.mem_kib, 2ULL * 1024 * 1024, "currentMemory above memory: memory");
}

Test(domxml, vcpus_checked)
{
  static const char *const bad[] = { "0", "4097", "2abc", "", "-1", "99999999999999999999999" };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    CLEANUP_FREE char *xml = kb_printf("<domain type='kvm'><name>x</name><memory>524288</memory>"
                                       "<vcpu cpuset='0-3'>%s</vcpu><os><type>hvm</type></os><devices/></domain>",
                                       bad[i]);
    cr_expect_eq(build_full(xml, false, one_disk, 1), -EINVAL, "refused vcpu '%s'", bad[i]);
  }
  cr_assert_eq(build("<vcpu placement='static' cpuset='0-1'>4</vcpu>", "", false), 0);
  cr_expect_eq(info.vcpus, 2, "the first <vcpu> counts");
  cr_expect_eq(count(built, "//vcpu[@cpuset]"), 0, "no host CPU pinning");
}

Test(domxml, names_of_machine_cpu_arch_checked)
{
  static const char *const bad[] = {
    "<os><type arch='x86_64' machine='pc;rm -rf'>hvm</type></os>",
    "<os><type arch='x86_64' machine='pc\" foo=\"'>hvm</type></os>",
    "<os><type arch='evil'>hvm</type></os>",
    "<os><type>exe</type></os>",
    "<os><type>hvm</type></os><cpu mode='custom'><model>Skylake,+x</model></cpu>",
    "<os><type>hvm</type></os><cpu mode='other'/>",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    CLEANUP_FREE char *xml = kb_printf("<domain type='kvm'><name>x</name><memory>524288</memory>%s"
                                       "<devices/></domain>", bad[i]);
    cr_expect_eq(build_full(xml, false, one_disk, 1), -EINVAL, "refused: %s", bad[i]);
  }
  cr_expect_eq(build_full("<domain type='xen'><name>x</name><memory>524288</memory><os><type>hvm</type></os>"
                          "<devices/></domain>", false, one_disk, 1), -EINVAL, "only kvm and qemu domains");
  cr_assert_eq(build("<cpu mode='custom' match='exact'><model fallback='allow'>Skylake-Client</model>"
                     "<topology sockets='1' cores='2' threads='1'/><feature policy='require' name='x'/></cpu>",
                     "", false), 0);
  cr_expect_eq(count(built, "/domain/cpu[@mode='custom']/model[text()='Skylake-Client']"), 1);
  cr_expect_eq(count(built, "/domain/cpu/topology[@cores='2']"), 1);
  cr_expect(noticed("<feature>"));
}

Test(domxml, names_escaped)
{
  struct kb_domxml_opts o = { .name = "a&b<c>'\"", .description = "</description><qemu:commandline/>",
                              .disks = one_disk, .ndisks = 1 };
  CLEANUP_FREE char *xml = kb_printf("%s<devices/></domain>", head);
  CLEANUP_FREE char *name = NULL, *desc = NULL;

  clear();
  cr_assert_eq(kb_domxml_build(xml, &o, &built, &info, &notices, &error), 0);
  name = value(built, "/domain/name");
  desc = value(built, "/domain/description");
  cr_expect_str_eq(name, "a&b<c>'\"");
  cr_expect_str_eq(desc, "</description><qemu:commandline/>");
  cr_expect_eq(count(built, "//*[local-name()='commandline']"), 0);
}

Test(domxml, no_entity_expansion)
{
  const char *xml = "<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/passwd'>"
                    "<!ENTITY m 'Skylake'>]>"
                    "<domain type='kvm'><name>x</name><memory>524288</memory><os><type>hvm</type></os>"
                    "<cpu mode='custom'><model>&m;</model></cpu><description>&x;</description>"
                    "<devices/></domain>";

  /* A document with a DOCTYPE (entities) is refused. */
  cr_expect_eq(build_full(xml, false, one_disk, 1), -EINVAL);
  cr_expect(!built || !strstr(built, "root:"));
}

Test(domxml, features_and_unknown_elements)
{
  cr_assert_eq(build("<features><acpi/><apic eoi='on'/><smm state='on'/><kvm><hidden state='on'/></kvm></features>"
                     "<sysinfo type='smbios'/><metadata><x:y xmlns:x='urn:x'/></metadata>"
                     "<clock offset='localtime'><timer name='rtc' tickpolicy='catchup'/></clock>", "<watchdog model='i6300esb'/>"
                     "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>"
                     "<audio id='1' type='none'/><audio id='2' type='file' path='/etc/cron.d/x'/>",
                     false), 0);
  cr_expect_eq(count(built, "/domain/features/acpi"), 1);
  cr_expect_eq(count(built, "/domain/features/apic[@eoi]"), 0);
  cr_expect_eq(count(built, "/domain/features/smm[@state='on']"), 1);
  cr_expect_eq(count(built, "//kvm|//sysinfo|//metadata|//watchdog|//tpm|//timer"), 0);
  cr_expect_eq(count(built, "/domain/clock[@offset='localtime']"), 1);
  cr_expect(noticed("<kvm>") && noticed("<sysinfo type='smbios'>") && noticed("<metadata>"));
  cr_expect(noticed("<watchdog>") && noticed("<tpm>") && noticed("timers"));
  cr_expect(noticed("<audio type='file'>") && !noticed("<audio type='none'>"), "libvirt's default audio is no news");
  cr_expect_null(strstr(built, "cron.d"));
}

Test(domxml, notices_bounded)
{
  char *dev = calloc(1, 64 * 1024);
  size_t n = 0;
  cr_assert_not_null(dev);
  for (int i = 0; i < 1000; i++)
    strcat(dev, "<hostdev/>");
  cr_assert_eq(build("", dev, false), 0);
  free(dev);
  while (notices[n])
    n++;
  cr_expect_leq(n, KB_DOMXML_MAX_NOTICES + 1);
  cr_expect(noticed("more elements dropped"));
}

Test(domxml, not_a_domain)
{
  cr_expect_eq(build_full("<domainx/>", false, one_disk, 1), -EINVAL);
  cr_expect_eq(build_full("not xml <", false, one_disk, 1), -EINVAL);
  cr_expect_eq(build_full("<domain type='kvm'><memory>524288</memory><devices/></domain>", false, one_disk, 1),
               -EINVAL, "no <os>");
}

Test(domxml, checkpoint_and_backup_job_xml)
{
  char *targets[] = { "vda", "vdb" };
  bool bm[] = { true, false };
  struct kb_backupxml_disk disks[] = {
    { "vda", "/st/b2/vda.qcow2", true },
    { "vdb", "/st/b2/a&b'<c>.qcow2", false },
    { "vdc", NULL, false },
  };
  CLEANUP_FREE char *xml = NULL, *job = NULL, *f = NULL;

  cr_assert_eq(kb_checkpoint_xml("b2", targets, bm, 2, &xml), 0);
  cr_expect_eq(count(xml, "/domaincheckpoint[name='b2']/disks/disk[@name='vda' and @checkpoint='bitmap']"), 1);
  cr_expect_eq(count(xml, "/domaincheckpoint/disks/disk[@name='vdb' and @checkpoint='no']"), 1);

  cr_assert_eq(kb_backup_job_xml("b1", disks, 3, &job), 0);
  cr_expect_eq(count(job, "/domainbackup[@mode='push']/incremental[text()='b1']"), 1);
  cr_expect_eq(count(job, "//disk[@name='vda' and @backupmode='incremental' and @incremental='b1']"), 1);
  cr_expect_eq(count(job, "//disk[@name='vdb' and @backupmode='full']/driver[@type='qcow2']"), 1);
  cr_expect_eq(count(job, "//disk[@name='vdc' and @backup='no']"), 1);
  f = value(job, "//disk[@name='vdb']/target/@file");
  cr_expect_str_eq(f, "/st/b2/a&b'<c>.qcow2", "a file name with XML specials stays one attribute");
}

Test(domxml, checkpoint_redefine_from_checked_values)
{
  const char *saved = "<domaincheckpoint><name>b2</name><parent><name>b1</name></parent>"
                      "<creationTime>1700000000</creationTime><description>evil</description>"
                      "<disks><disk name='vda' checkpoint='bitmap' bitmap='b2'/><disk name='vdb' checkpoint='no'/>"
                      "</disks><domain type='kvm'><devices><emulator>/mnt/export/q</emulator></devices></domain>"
                      "</domaincheckpoint>";
  CLEANUP_FREE char *xml = NULL;

  cr_assert_eq(kb_checkpoint_redefine_xml(saved, "b2", &xml), 0);
  cr_expect_eq(count(xml, "//parent|//domain|//emulator"), 0, "no parent, no domain");
  cr_expect_eq(count(xml, "/domaincheckpoint[name='b2' and creationTime='1700000000']"), 1);
  cr_expect_eq(count(xml, "//disk[@name='vda' and @checkpoint='bitmap' and @bitmap='b2']"), 1);
  cr_expect_null(strstr(xml, "evil"));
  free(xml);
  xml = NULL;
  cr_expect_eq(kb_checkpoint_redefine_xml(saved, "b3", &xml), -EINVAL, "a checkpoint of another name");
  cr_expect_eq(kb_checkpoint_redefine_xml("<domaincheckpoint><name>b2</name><disks><disk name='../x' "
                                          "checkpoint='bitmap'/></disks></domaincheckpoint>", "b2", &xml), -EINVAL);
  cr_expect_eq(kb_checkpoint_redefine_xml("<domaincheckpoint><name>b2</name><creationTime>1e9</creationTime>"
                                          "<disks/></domaincheckpoint>", "b2", &xml), -EINVAL);
}

Test(escape, control_bytes_and_bad_utf8)
{
  static const struct { const char *in, *out; bool nl; } cases[] = {
    { "plain text", "plain text", false },
    { "\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m", false },
    { "a\nb\tc", "a\\x0ab\\x09c", false },
    { "a\nb\tc", "a\nb\tc", true },
    { "del\x7f", "del\\x7f", false },
    { "csi\xc2\x9b" "2J", "csi\\xc2\\x9b2J", false },          /* C1 control U+009B */
    { "caf\xc3\xa9 \xe2\x82\xac", "caf\xc3\xa9 \xe2\x82\xac", false },  /* é and € stay */
    { "bad\xff\xc3", "bad\\xff\\xc3", false },
    { "over\xc0\xaf", "over\\xc0\\xaf", false },              /* overlong '/' */
    { "rtl\xe2\x80\xae" "gpj.exe", "rtl\\xe2\\x80\\xaegpj.exe", false },   /* U+202E */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    CLEANUP_FREE char *e = kb_escape_text(cases[i].in, cases[i].nl);
    cr_assert_not_null(e);
    cr_expect_str_eq(e, cases[i].out, "case %zu", i);
  }
}
