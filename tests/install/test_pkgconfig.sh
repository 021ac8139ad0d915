#!/usr/bin/env bash
# Installs libsonar into a temp destdir and builds an outside C service with
# `pkg-config --cflags --libs sonar`, then runs it. Speaks TAP.
set -u
build_root=$1 source_root=$2 sanitize=${3:-none}
extra=()
# A sanitized libsonar needs the sanitizer runtime in the program too.
[ "$sanitize" != none ] && extra=(-fsanitize="$sanitize")
dest=$(mktemp -d "${TMPDIR:-/tmp}/sonar-install-XXXXXX")
trap 'rm -rf "$dest"' EXIT
echo "1..3"
if meson install -C "$build_root" --destdir "$dest" --no-rebuild >"$dest/install.log" 2>&1; then
    echo "ok 1 - meson install into a destdir"
else
    echo "not ok 1 - meson install into a destdir"; sed 's/^/# /' "$dest/install.log"; exit 1
fi
pc=$(find "$dest" -name sonar.pc | head -n 1)
hdr=$(find "$dest" -path '*/include/sonar/sonar.h' | head -n 1)
if [ -n "$pc" ] && [ -n "$hdr" ]; then
    echo "ok 2 - sonar.pc and sonar/sonar.h installed"
else
    echo "not ok 2 - sonar.pc and sonar/sonar.h installed"; exit 1
fi
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$dest
libdir=$(dirname "$(find "$dest" -name 'libsonar.so' | head -n 1)")
cat > "$dest/outside.c" <<'C'
#include <sonar/sonar.h>
#include <stdio.h>
int main(void)
{
    /* Uses the codec and the name rule: links against the installed library. */
    if (!sonar_name_valid("outside") || sonar_name_valid("not.valid"))
        return 1;
    char *json = NULL;
    sonar_leave_msg m = {.service = "outside", .instance = "i1"};
    if (sonar_leave_encode(&m, &json) != SONAR_OK)
        return 1;
    puts(json);
    free(json);
    return 0;
}
C
if cc -std=c11 -Wall -Werror "${extra[@]}" "$dest/outside.c" -o "$dest/outside" $(pkg-config --cflags --libs sonar) \
        >"$dest/cc.log" 2>&1 &&
   out=$(LD_LIBRARY_PATH=$libdir "$dest/outside") && [[ $out == *'"type":"sonar.leave.v1"'* ]]; then
    echo "ok 3 - an outside program builds with pkg-config --cflags --libs sonar and runs"
else
    echo "not ok 3 - an outside program builds with pkg-config --cflags --libs sonar and runs"
    sed 's/^/# /' "$dest/cc.log"
    exit 1
fi
