#!/usr/bin/env bash
# Retention over a simulated week: 32 real backups of a stopped test VM,
# taken at chosen times (03:00, 09:00, 15:00, 21:00 UTC, Friday 27 November
# to Friday 4 December 2026) by shifting kboss's clock with
# KBOSS_TEST_CLOCK_SKEW, in chains of three, each after writing distinct
# data. A quick restore from backup #4 is started and left unfinished (its
# kboss-restore killed), so #4 is in a quick-restore lineage. Then the GFS
# policy keep_last=2 keep_daily=3 keep_weekly=2 keep_monthly=2:
# - keeps by its rules and dependencies exactly the set computed here from
#   the recorded times by the rules as docs/configuration.md states them
#   (not by lib/retention.c), which is the set that document's example
#   lists; the dependencies before a chain's oldest kept backup are merged
#   forward into it, so what is left is that set less those, plus #4
#   (in-use) and the full it is built on;
# - --dry-run lists the same and removes nothing;
# - the prune releases space; every kept backup restores byte for byte to
#   what the disks held when it was taken (merged ones included: the test
#   asserts restorability, not file types); the quick restore still
#   finishes (offline) to #4's data.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

requires python3 qemu-img qemu-io
plan 16
start_libvirt || bail_out "libvirtd"
kb_conf_init 3
kb_offering gfs backup_chain_size=3 allow_quick_restore=true keep_last=2 keep_daily=3 keep_weekly=2 keep_monthly=2
make_test_vm g 16 || bail_out "cannot define the test VM"
kb_assign g gfs
dom=$(vm_domain g)
root=$(vm_disk g)
data=$(vm_data_disk g)
N=32
used() { du -sk "$KB_SECONDARY/kboss/vms" | cut -f1; }
cp --sparse=always "$root" "$KBT_TMPDIR/root.ref"   # the root disk is never written

# ---- a week of backups at chosen times ----
start=$(date -u -d 2026-11-27T03:00:00Z +%s)
ids=()
t0=$(date +%s)
for i in $(seq 0 $((N - 1))); do
	when=$((start + (i / 4) * 86400 + (i % 4) * 6 * 3600))
	# distinct data before each backup: 512 KiB of byte i+1 at a place of its own
	qemu-io -f qcow2 -c "write -P $((i + 1)) $(((i % 24) * 512))k 512k" "$data" >/dev/null ||
		bail_out "qemu-io write $i"
	export KBOSS_TEST_CLOCK_SKEW=$((when - $(date +%s)))
	ids[i]=$(kb_backup g) || bail_out "backup #$i failed"
	unset KBOSS_TEST_CLOCK_SKEW
	[ -n "${ids[i]}" ] || bail_out "backup #$i printed no id"
	cp --sparse=always "$data" "$KBT_TMPDIR/data.$i"
	printf '%s %s %s\n' "$i" "$when" "${ids[i]}" >> "$KBT_TMPDIR/chosen"
done
diag "$N backups in $(($(date +%s) - t0)) s"

# What was recorded: index, created (epoch), parent index, type.
for i in $(seq 0 $((N - 1))); do
	id=${ids[i]}
	c=$(date -u -d "$(kb_backup_field "$id" created)" +%s 2>/dev/null || echo -1)
	p=$(kb_backup_field "$id" parent)
	pi=-1
	for j in $(seq 0 $((N - 1))); do [ "${ids[j]}" = "$p" ] && pi=$j; done
	printf '%s %s %s %s %s\n' "$i" "$c" "$pi" "$(kb_backup_field "$id" type)" "$id"
done > "$KBT_TMPDIR/recorded"
ok python3 - "$KBT_TMPDIR/chosen" "$KBT_TMPDIR/recorded" <<'PY' "each backup's created time and id carry its chosen time (KBOSS_TEST_CLOCK_SKEW), 27 Nov to 4 Dec"
import sys, time
chosen = {int(l.split()[0]): int(l.split()[1]) for l in open(sys.argv[1])}
for l in open(sys.argv[2]):
    i, c, p, t, bid = l.split()
    i, c = int(i), int(c)
    assert 0 <= c - chosen[i] < 300, (i, c, chosen[i])
    assert bid.startswith(time.strftime("%Y%m%dT%H", time.gmtime(c))), (bid, c)
PY
ok python3 - "$KBT_TMPDIR/recorded" <<'PY' "the backups form chains of three (#0 full, #1 and #2 on it, #3 full, ...)"
import sys
for l in open(sys.argv[1]):
    i, c, p, t, bid = l.split()
    i, p = int(i), int(p)
    want = ("full", -1) if i % 3 == 0 else ("incremental", i - 1)
    assert (t, p) == want, (i, t, p)
PY

# ---- a quick restore from #4, left unfinished ----
q=4
rbin=
for f in "$KB_BINDIR/kboss-restore" "$KB_BINDIR"/*/kboss-restore; do [ -x "$f" ] && rbin=$f; done
[ -n "$rbin" ] || bail_out "kboss-restore is not built"
"$rbin" --quick --bandwidth 1 "${ids[q]}" > "$KBT_TMPDIR/quick.log" 2>&1 &   # $! is kboss-restore itself
qpid=$!
cleanup_push "kill -9 $qpid 2>/dev/null"
for _ in $(seq 1 300); do
	[ "$(vm_state g)" = running ] && [ "$(kb_backup_field "${ids[q]}" in_use_by)" != "" ] && break
	sleep 0.2
done
kill -9 $qpid 2>/dev/null
wait $qpid 2>/dev/null
virsh -q destroy "$dom" >/dev/null 2>&1
diag "$(cat "$KBT_TMPDIR/quick.log")"
ok [ -n "$(kb_backup_field "${ids[q]}" in_use_by)" ] "a quick restore from #4 (${ids[q]}) was started and killed: #4 is in use"

# ---- the expected set, from the recorded times, by the documented rules ----
expect=$(python3 - "$KBT_TMPDIR/recorded" "$q" <<'PY'
import sys, datetime
rows = [l.split() for l in open(sys.argv[1])]
created = {int(r[0]): int(r[1]) for r in rows}
parent = {int(r[0]): int(r[2]) for r in rows}
q = int(sys.argv[2])
newest_first = sorted(created, key=lambda i: -created[i])
def utc(i):
    return datetime.datetime.fromtimestamp(created[i], datetime.timezone.utc)
rules = set(newest_first[:2])                        # keep_last = 2
for count, period in ((3, lambda d: d.date()),       # keep_daily = 3
                      (2, lambda d: d.isocalendar()[:2]),   # keep_weekly = 2 (ISO weeks)
                      (2, lambda d: (d.year, d.month))):    # keep_monthly = 2
    seen = []
    for i in newest_first:
        b = period(utc(i))
        if b not in seen and len(seen) < count:
            seen.append(b)
            rules.add(i)
def ancestors(i):
    out = set()
    while parent[i] >= 0:
        i = parent[i]
        out.add(i)
    return out
lineage = {q} | ancestors(q)
deps = set().union(*(ancestors(i) for i in rules)) - rules - lineage
# merge forward merges a chain's members older than its oldest kept backup
kept_now = rules | lineage
def chain_full(i):
    while parent[i] >= 0:
        i = parent[i]
    return i
middle = {d for d in deps
          if any(chain_full(k) == chain_full(d) and created[k] < created[d] for k in kept_now)}
fmt = lambda s: " ".join(str(i) for i in sorted(s))
print(fmt(rules | lineage | deps))
print(fmt(rules | lineage | middle))
print(fmt(rules | deps))
PY
)
plain=$(sed -n 1p <<<"$expect")
merged=$(sed -n 2p <<<"$expect")
docset=$(sed -n 3p <<<"$expect")
diag "kept by the policy: $plain; left after merging forward: $merged"
ok [ "$docset" = "9 10 11 15 21 22 23 27 30 31" ] \
	"the rules keep #9 #10 #11 #15 #21 #22 #23 #27 #30 #31, as docs/configuration.md's example says ($docset)"
idx_of() { local id=$1 j; for j in $(seq 0 $((N - 1))); do [ "${ids[j]}" = "$id" ] && echo "$j"; done; }
kept_now() { for id in $(kb_listed_backups); do idx_of "$id"; done | sort -n | tr '\n' ' ' | sed 's/ $//'; }

# ---- dry run ----
before=$(used)
out=$(kb kbossctl prune --dry-run "$dom" 2>&1); rc=$?
diag "$out"
json=$(kb kbossctl prune --dry-run --json "$dom")
dry_keep=$(python3 -c 'import json,sys; print("\n".join(x["backup"] for x in json.load(sys.stdin) if x["action"] == "keep"))' <<<"$json" |
	while read -r id; do idx_of "$id"; done | sort -n | tr '\n' ' ' | sed 's/ $//')
ok [ $rc -eq 0 ] "prune --dry-run succeeds"
ok [ "$dry_keep" = "$merged" ] "--dry-run --json keeps exactly the expected set, the dependencies merged forward ($dry_keep)"
ok '[ "$(kb_listed_backups | wc -l)" -eq $N ] && [ "$(used)" -eq "$before" ]' "the dry run removes nothing"
ok grep -q "keep   ${ids[q]} (in-use)" <<<"$out" "it keeps #4 with reason in-use"
ok '[ "$(grep -c "would merge" <<<"$out")" -eq 4 ] && grep -q "would merge ${ids[9]} into ${ids[11]}" <<<"$out" &&
    grep -q "would merge ${ids[22]} into ${ids[23]}" <<<"$out"' "it says #9 #10 would be merged into #11, #21 #22 into #23"

# ---- the prune ----
out=$(kb kbossctl prune "$dom" 2>&1); rc=$?
diag "$out"
after=$(used)
got=$(kept_now)
ok [ $rc -eq 0 ] "prune succeeds"
ok [ "$got" = "$merged" ] "exactly the expected backups are left: $got"
ok [ "$got" = "$dry_keep" ] "the same set as the dry run said"
ok [ "$after" -lt "$before" ] "the space used drops (${before}k -> ${after}k)"
ok grep -q "keep   ${ids[q]} (in-use)" <<<"$out" "#4 is kept as in-use by the prune"

# ---- the quick restore still finishes, to #4's disks ----
out=$(kb kboss-restore --consolidate "$dom" 2>&1); crc=$?
diag "$out"
diag "consolidate: exit $crc; data disk vs #4: $(qemu-img compare "$data" "$KBT_TMPDIR/data.$q" 2>&1 | head -n1); root: $(qemu-img compare "$root" "$KBT_TMPDIR/root.ref" 2>&1 | head -n1); in_use_by: $(kb_backup_field "${ids[q]}" in_use_by)"
# (the guest booted for a moment on the root disk: only the data disk is as #4 left it)
ok '[ $crc -eq 0 ] && qemu-img compare -q "$data" "$KBT_TMPDIR/data.$q" && [ -z "$(kb_backup_field "${ids[q]}" in_use_by)" ] &&
    [ -z "$(qemu-img info -U --output=json "$data" | grep backing-filename)" ]' \
	"the interrupted quick restore from #4 finishes offline: the data disk equals #4's, without backing file"

# ---- every kept backup restores byte for byte ----
bad=
for i in $got; do
	if ! kb kboss-restore "${ids[i]}" >"$KBT_TMPDIR/restore.log" 2>&1 ||
		! qemu-img compare -q "$data" "$KBT_TMPDIR/data.$i" || ! qemu-img compare -q "$root" "$KBT_TMPDIR/root.ref"; then
		bad="$bad #$i"
		diag "$(cat "$KBT_TMPDIR/restore.log")"
	fi
done
ok [ -z "$bad" ] "every kept backup ($got) restores byte-equal to its reference${bad:+; not:$bad}"
