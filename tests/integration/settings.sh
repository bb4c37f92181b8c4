#!/bin/sh
# kbossctl settings on a temporary configuration: values, origins, --json,
# --set/--unset with --user, and --check on a broken file. Prints TAP.
set -u

ctl="${KBOSS_BINDIR:-$(dirname "$0")/../../helpers}/ctl/kbossctl"
tmp=$(mktemp -d /tmp/kboss-settings-XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; }
# check DESCRIPTION COMMAND...: passes when COMMAND succeeds.
check() { d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
# has OUTPUT-FILE LINE: the file holds LINE (blanks squeezed) exactly.
has() { tr -s ' ' < "$1" | grep -qxF -- "$2" || { echo "# no line: $2"; sed 's/^/#   /' "$1"; return 1; }; }

mkdir -p "$tmp/offerings.d" "$tmp/vms.d"
cat > "$tmp/kboss.conf" <<'CONF'
[global]
backup.framework.enabled = true
backup.framework.provider.plugin = kboss

[zone]
backup.chain.size = 4

[cluster]
backup.validation.interval = 12

[account:acme]
backup.validation.interval = 6
CONF
cat > "$tmp/offerings.d/gold.conf" <<'CONF'
[offering]
name = gold
compress = true
CONF
printf '[vm]\naccount = acme\noffering = gold\nbackupValidationBootTimeout = 77\n' > "$tmp/vms.d/web1.conf"
conf="$tmp/kboss.conf"

echo "1..15"

"$ctl" --config "$conf" settings > "$tmp/global.out" 2> "$tmp/err"
check "settings without VM succeeds" test $? -eq 0
check "zone value from [zone] with file:line" \
  has "$tmp/global.out" "backup.chain.size zone 4 $conf:6 [zone]"
check "account key without VM comes from [cluster]" \
  has "$tmp/global.out" "backup.validation.interval account 12 $conf:9 [cluster]"
check "untouched key shows its default" \
  has "$tmp/global.out" "backup.compression.timeout zone 28800 default"

"$ctl" settings web1 --config "$conf" > "$tmp/vm.out" 2> "$tmp/err"
check "account section beats cluster for a VM" \
  has "$tmp/vm.out" "backup.validation.interval account 6 $conf:12 [account:acme]"
check "VM setting overrides the boot timeout, origin names it" \
  has "$tmp/vm.out" "backup.validation.boot.default.timeout account 77 $tmp/vms.d/web1.conf:4 [vm:web1] backupValidationBootTimeout"

"$ctl" --config "$conf" settings web1 --json > "$tmp/vm.json"
if command -v python3 > /dev/null; then
  check "--json is valid JSON with the origin" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
s = {x["key"]: x for x in d["settings"]}
o = s["backup.chain.size"]["origin"]
assert d["vm"] == "web1" and d["offering"] == "gold"
assert s["backup.chain.size"]["value"] == "4" and o["line"] == 6 and o["section"] == "zone", o
assert s["backup.compression.timeout"]["origin"]["section"] == "default"
' "$tmp/vm.json"
else
  check "--json mentions the origin" grep -q '"section":"zone"' "$tmp/vm.json"
fi

"$ctl" --config "$conf" settings web1 --set backupValidationBootTimeout=5 --user 2> "$tmp/err"
check "--user may not set a read-only detail" test $? -eq 1
check "the refusal says why" grep -q "backupValidationBootTimeout: read-only for users (user.vm.readonly.details)" "$tmp/err"

"$ctl" --config "$conf" settings web1 --set backupValidationCommand=/bin/true --user 2> "$tmp/err" &&
  "$ctl" --config "$conf" settings web1 --unset backupValidationBootTimeout 2>> "$tmp/err"
check "a user sets the command, an admin unsets the timeout" test $? -eq 0
"$ctl" --config "$conf" settings web1 > "$tmp/vm2.out"
check "the new VM setting shows with its line" \
  has "$tmp/vm2.out" "backupValidationCommand vm /bin/true $tmp/vms.d/web1.conf:4 [vm:web1]"
check "the unset override falls back to the default" \
  has "$tmp/vm2.out" "backup.validation.boot.default.timeout account 240 default"

"$ctl" --config "$conf" settings --check > /dev/null
check "--check passes on a good configuration" test $? -eq 0
printf '[cluster]\nbackup.chain.size = 0\n' >> "$conf"
"$ctl" --config "$conf" settings --check > /dev/null 2> "$tmp/err"
rc=$?
check "--check exits 1 and names file, line and key" \
  sh -c "test $rc -eq 1 && grep -qF '$conf:14: backup.chain.size: has zone scope: it cannot be set in [cluster]' '$tmp/err'"

"$ctl" --config "${top_srcdir:-$(dirname "$0")/../..}/conf/kboss.conf" settings --check > /dev/null
check "the shipped example configuration is valid" test $? -eq 0

exit $failed
