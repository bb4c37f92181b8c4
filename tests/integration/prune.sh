#!/usr/bin/env bash
# Retention: kbossctl prune applies an offering's keep_last to a VM with
# two chains (a VM setting overrides it). --dry-run removes nothing and says which backup a kept
# incremental depends on is merged forward into it; the real prune removes the backups no rule
# keeps (their files too: the space used drops), merges the one the kept incremental depends on
# into it (it becomes a full; tests/integration/prune-merge.sh tests the merge in depth), records
# the prune event, and the kept backup restores byte for byte to its point in time. Backups a
# schedule took with keep values of its own (kboss-backup --schedule NAME --keep-last N, what
# the units of kbossctl schedule pass) are ranked among themselves by those.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 25
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm p 256 || bail_out "cannot define the test VM"
kb_offering ret keep_last=1
kb_assign p ret
dom=$(vm_domain p)
root=$(vm_disk p)
data=$(vm_data_disk p)
snap() { cp --sparse=always "$root" "$KBT_TMPDIR/root.$1"; cp --sparse=always "$data" "$KBT_TMPDIR/data.$1"; }
same() { qemu-img compare -q "$root" "$KBT_TMPDIR/root.$1" && qemu-img compare -q "$data" "$KBT_TMPDIR/data.$1"; }
used() { du -sk "$KB_SECONDARY/kboss/vms" | cut -f1; }

# chain A: b1 (full) <- b2; chain B: b3 (full) <- b4. Backup times have
# one-second resolution: a second apart, so that "newest" is defined.
qemu-io -f qcow2 -c "write -P 0x11 0 8M" "$data" >/dev/null
b1=$(kb_backup p); snap 1
qemu-io -f qcow2 -c "write -P 0x22 1M 2M" "$data" >/dev/null
sleep 1.1; b2=$(kb_backup p); snap 2
kb kboss-backup --finish-chain "$dom" >/dev/null
qemu-io -f qcow2 -c "write -P 0x33 4M 2M" "$data" >/dev/null
sleep 1.1; b3=$(kb_backup p); snap 3
qemu-io -f qcow2 -c "write -P 0x44 6M 1M" "$data" >/dev/null
sleep 1.1; b4=$(kb_backup p); snap 4
ok [ -n "$b1" -a -n "$b2" -a -n "$b3" -a -n "$b4" ] "four backups in two chains ($b1 $b2 | $b3 $b4)"
ok [ "$(kb_backup_field "$b3" type)/$(kb_backup_field "$b4" parent)" = "full/$b3" ] "the second chain is $b3 <- $b4"

# ---- dry run ----
out=$(kb kbossctl prune --dry-run "$dom" 2>&1); rc=$?
diag "$out"
ok [ $rc -eq 0 ] "prune --dry-run succeeds"
ok grep -q "keep   $b4 (last)" <<<"$out" "it keeps the newest backup ($b4) by keep_last"
ok grep -q "would merge $b3 into $b4" <<<"$out" "and says $b3, which $b4 depends on, would be merged into it"
ok grep -q "would remove $b1" <<<"$out" "it would remove $b1"
ok grep -q "would remove $b2" <<<"$out" "and $b2"
ok [ "$(kb_listed_backups | wc -l)" -eq 4 ] "a dry run removes nothing"
json=$(kb kbossctl prune --dry-run --json "$dom")
ok [ "$(python3 -c 'import json,sys; print(" ".join(sorted(x["backup"] for x in json.load(sys.stdin) if x["action"] == "remove")))' <<<"$json")" = "$(printf '%s\n' "$b1" "$b2" | sort | tr '\n' ' ' | sed 's/ $//')" ] "--json lists the same backups to remove"

# ---- a VM setting overrides the offering's field ----
kb kbossctl settings "$dom" --set backupRetentionKeepLast=3 >/dev/null
out=$(kb kbossctl prune --dry-run "$dom" 2>&1)
diag "$out"
ok "! grep -q 'would remove' <<<\"\$out\"" "with the VM's backupRetentionKeepLast=3 nothing would be removed"
ok grep -q "keep   $b2 (last)" <<<"$out" "and $b2 is kept as one of the last 3"
kb kbossctl settings "$dom" --unset backupRetentionKeepLast >/dev/null

# ---- the prune ----
before=$(used)
out=$(kb kbossctl prune "$dom" 2>&1); rc=$?
diag "$out"
after=$(used)
ok [ $rc -eq 0 ] "prune succeeds"
ok [ "$(kb_listed_backups | tr '\n' ' ')" = "$b4 " ] "exactly $b4 is left"
ok [ "$(kb_backup_field "$b4" type)/$(kb_backup_field "$b4" parent)" = "full/" ] "$b4 is a full now (merged forward)"
# (chain B's folder is named after its first backup, $b3: not counted)
left=$(find "$KB_SECONDARY" | sed "s|/chains/$b3|/chains/CHAIN|" | grep -e "$b1" -e "$b2" -e "$b3")
diag "left of $b1, $b2 and $b3: ${left:-nothing}"
ok [ -z "$left" ] "nothing of $b1, $b2 and $b3 is left, saved checkpoint XML included"
ok [ "$after" -lt "$before" ] "the space used drops (${before}k -> ${after}k)"
ok grep -q "pruned 3 backup(s), merged forward into 1" <<<"$out" "the prune event is logged"

# ---- every kept backup restores byte for byte ----
ok kb kboss-restore "$b4" "restore of the merged full $b4 succeeds"
ok same 4 "restore of $b4 gives backup point 4 byte for byte"

# ---- a schedule's own policy ----
s=()
for k in 1 2 3; do
	qemu-io -f qcow2 -c "write -P 0x5$k $((k * 2))M 1M" "$data" >/dev/null
	sleep 1.1; s[k]=$(kb_backup p --isolated --schedule often --keep-last 2); snap s$k
done
ok [ "$(kb_backup_field "${s[3]}" schedule)/$(kb_backup_field "${s[3]}" schedule_keep_last)" = "often/2" ] \
	"kboss-backup --schedule often --keep-last 2 records the schedule and its keep_last in the backup"
out=$(kb kbossctl prune "$dom" 2>&1)
diag "$out"
ok grep -q "remove ${s[1]} (no rule keeps it) \[schedule often\]" <<<"$out" \
	"the oldest of the schedule's three backups goes by the schedule's keep_last = 2"
ok [ "$(kb_listed_backups | sort | tr '\n' ' ')" = "$(printf '%s\n' "$b4" "${s[2]}" "${s[3]}" | sort | tr '\n' ' ')" ] \
	"$b4, taken by hand, stays by the offering's keep_last = 1 though newer backups exist: they are the schedule's"
n=$(kb_listed_backups | wc -l)
kb kboss-backup --schedule "../x" "$dom" >/dev/null 2>&1; r1=$?
kb kboss-backup --keep-last 3 "$dom" >/dev/null 2>&1; r2=$?
ok [ "$r1/$r2/$(kb_listed_backups | wc -l)" = "2/2/$n" ] \
	"kboss-backup refuses a bad schedule name and --keep-* without --schedule (exit 2), backing nothing up"
ok 'kb kbossctl prune --dry-run --json "$dom" | python3 -c "
import json, sys
d = {x[\"backup\"]: x for x in json.load(sys.stdin)}
s3, b4 = d[sys.argv[1]], d[sys.argv[2]]
assert (s3[\"schedule\"], s3[\"policy\"], s3[\"action\"], s3[\"reasons\"]) == (\"often\", \"schedule\", \"keep\", \"last\"), s3
assert (b4[\"schedule\"], b4[\"policy\"], b4[\"action\"]) == (None, \"vm\", \"keep\"), b4
" "${s[3]}" "$b4"' "prune --json names each backup's schedule and the policy that ranked it"

# ---- kbossctl status counts a VM's most frequent schedule, named ones too ----
U=$KBT_TMPDIR/units
kb kbossctl schedule "$dom" --calendar daily --unit-dir "$U" >/dev/null
kb kbossctl schedule "$dom" --name often --calendar hourly --keep-last 2 --unit-dir "$U" >/dev/null
ok 'kb kbossctl status --json --unit-dir "$U" | python3 -c "
import json, sys
v = [x for x in json.load(sys.stdin)[\"vms\"] if x[\"name\"] == sys.argv[1]]
assert v and v[0][\"schedule\"] == \"hourly\", v
" "$dom"' "kbossctl status takes the VM's most frequent schedule, its named hourly one, for overdue"
