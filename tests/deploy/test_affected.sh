#!/usr/bin/env bash
# TAP: deploy/affected maps changed files to the services that build from them,
# using this build's meson introspection.   usage: test_affected.sh BUILD_DIR SOURCE_DIR
set -u
build=$1 src=$2
aff="$src/deploy/affected"
n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }

# expect "DESCRIPTION" "EXPECTED (space separated, sorted)" FILES...
expect() {
    local what=$1 want=$2; shift 2
    local got
    got=$("$aff" --build-dir "$build" --files "$@" 2>&1 | tr '\n' ' ' | sed 's/ $//')
    if [ "$got" = "$want" ]; then ok "$what"; else not_ok "$what" "want: $want" "got:  $got"; fi
}
# contains "DESCRIPTION" "NAMES that must be there" "NAMES that must not" FILES...
contains() {
    local what=$1 must=$2 mustnot=$3; shift 3
    local got bad=""
    got=" $("$aff" --build-dir "$build" --files "$@" 2>&1 | tr '\n' ' ') "
    for s in $must; do [[ $got == *" $s "* ]] || bad="$bad missing:$s"; done
    for s in $mustnot; do [[ $got != *" $s "* ]] || bad="$bad unexpected:$s"; done
    if [ -z "$bad" ]; then ok "$what"; else not_ok "$what" "$bad" "got:$got"; fi
}

echo "1..11"
expect "a service's own source touches only it" "wells" services/examples/wells/main.c
expect "a shared example library's header touches the services that include it" \
    "aquifers wells" services/examples/choreo/choreo.h
expect "kitchen (HTTP toolkit) touches chillybin and jafflr" \
    "chillybin jafflr" services/examples/kitchen/kitchen.c
contains "a libsonar source touches every service linking libsonar" \
    "aquifers chillybin hello jafflr sonar sonard wells" "" common/outbox.c
contains "a public libsonar header touches them too" \
    "aquifers sonard wells chillybin" "" common/include/sonar/inbox.h
contains "libsonar's private header (in its include path) touches them too" \
    "sonard hello" "" common/internal.h
expect "docs, tests and scripts touch no service" "" README.md docs/outbox.md \
    tests/integration/test_wells.c deploy/gate
contains "the CLI's own file touches only the CLI" "sonar" "sonard wells hello" \
    services/cli/cmd_request.c
contains "a service's meson.build touches it" "sonard" "wells" services/coordinator/meson.build
contains "the top-level meson.build touches every service" \
    "aquifers chillybin hello jafflr sonar sonard wells" "" meson.build

# Git mode: a throwaway repository whose last commit changed the files named.
if command -v git >/dev/null; then
    repo=$(mktemp -d "${TMPDIR:-/tmp}/affected-XXXXXX")
    trap 'rm -rf "$repo"' EXIT
    (
        cd "$repo" && git init -q && git config user.email t@example.org && git config user.name t
        mkdir -p services/examples/aquifers common && echo a >README.md && git add -A &&
            git commit -qm one &&
            echo b >services/examples/aquifers/checks.c && echo c >README.md && git add -A &&
            git commit -qm two
    ) >/dev/null 2>&1
    got=$("$aff" --build-dir "$build" --repo "$repo" HEAD~1..HEAD 2>&1 | tr '\n' ' ')
    if [ "$got" = "aquifers " ]; then ok "git range HEAD~1..HEAD of a repository"
    else not_ok "git range HEAD~1..HEAD of a repository" "got: $got"; fi
else
    n=$((n + 1)); echo "ok $n # SKIP git is not installed"
fi
exit $failed
