#!/usr/bin/env bash
# The demo scenario (deploy/demo.sh) run against this build, with assertions
# on what it shows: not just "it ran". Speaks TAP.
set -u
build=$1 src=$2
out=$(mktemp "${TMPDIR:-/tmp}/sonar-demo-test-XXXXXX")
trap 'rm -f "$out"' EXIT
SONAR_BUILD_DIR=$build "$src/deploy/demo.sh" >"$out" 2>&1
rc=$?
n=0 failed=0
check() { # description, command...
    n=$((n + 1))
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then echo "ok $n - $what"; else echo "not ok $n - $what"; failed=1; fi
}
has() { grep -qF -- "$1" "$out"; }
# stock of one ingredient in a chillybin "GET /" line
stock_of() { grep -F "$1" "$out" | head -n 1 | python3 -c 'import json,sys,re; l=sys.stdin.read(); print(json.loads(l[l.index("{"):])["stock"]["cheese"])'; }

echo "1..10"
check "the demo exits 0 (every expected gate outcome happened)" test "$rc" -eq 0
check "compatible chillybin v2 candidate: promoted" has "gate: PROMOTE chillybin 2.0.0"
check "breaking chillybin candidate: aborted" has "gate: ABORT chillybin 3.0.0"
check "the failing check is jafflr's, with the endpoint and the reason" \
    bash -c 'grep -A6 "jafflr: fail" "$1" | grep -qE "pick in stock: GET /pick\?name=.* → 400, expected 200"' _ "$out"
check "menu (through sonar agent) passed both candidates" test "$(grep -c 'menu: pass' "$out")" -ge 2
check "a toastie took one cheese from chillybin's stock" \
    test "$(( $(stock_of 'stock before:') - $(stock_of 'stock after:') ))" -eq 1
check "aquifers learned of all five wells, none twice" \
    grep -qE '"wells":5,"duplicate_events":0' "$out"
check "a well for an unknown aquifer is refused" has 'unknown aquifer "atlantis"'
check "the wells candidate passed aquifers' checks" has "gate: PROMOTE wells 1.1.0"
check "statusd checks the services that name a health endpoint" \
    grep -qE '^ +statusd_targets\{status="passing"\} [1-9]' "$out"
if [ $failed -ne 0 ]; then sed 's/^/# /' "$out"; fi
exit $failed
