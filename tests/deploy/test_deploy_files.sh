#!/usr/bin/env bash
# TAP: the deploy files (docker-compose.yml, deploy/Dockerfile, deploy/k8s,
# deploy/nats.conf). With docker compose / kubectl installed they are
# validated by the real tools; without them those tests say SKIP. The rest
# always runs: YAML structure, and every binary named by compose, the
# Dockerfile and the manifests is one this meson build produces.
#   usage: test_deploy_files.sh BUILD_DIR SOURCE_DIR
set -u
build=$1 src=$2
n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
skip() { n=$((n + 1)); echo "ok $n # SKIP $1"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; shift; printf '%s\n' "$@" | sed 's/^/# /'; }
# check DESCRIPTION COMMAND...: ok when the command succeeds; its output as the diagnostic.
check() {
    local what=$1 out; shift
    if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "$out"; fi
}

echo "1..8"

# 1. docker compose config (needs the compose plugin or docker-compose; no engine needed).
if docker compose version >/dev/null 2>&1; then
    check "docker compose config accepts docker-compose.yml" \
        docker compose -f "$src/docker-compose.yml" config -q
elif command -v docker-compose >/dev/null 2>&1; then
    check "docker-compose config accepts docker-compose.yml" \
        docker-compose -f "$src/docker-compose.yml" config -q
else
    skip "neither 'docker compose' nor docker-compose is installed"
fi

# 2. kubectl kustomize builds the manifests.
if command -v kubectl >/dev/null 2>&1; then
    check "kubectl kustomize builds deploy/k8s" kubectl kustomize "$src/deploy/k8s"
else
    skip "kubectl is not installed"
fi

# 3. A real YAML parser, when python3 has one.
if python3 -c 'import yaml' >/dev/null 2>&1; then
    check "every YAML file parses (PyYAML)" python3 - "$src" <<'PY'
import glob, sys, yaml
src = sys.argv[1]
for f in [src + "/docker-compose.yml"] + sorted(glob.glob(src + "/deploy/k8s/*.yaml")):
    try:
        docs = [d for d in yaml.safe_load_all(open(f)) if d is not None]
    except yaml.YAMLError as e:
        sys.exit(f"{f}: {e}")
    if not docs or not all(isinstance(d, dict) for d in docs):
        sys.exit(f"{f}: not a mapping")
PY
else
    skip "python3 has no yaml module"
fi

# 4-9: always, with python3's standard library only.
exes=$(meson introspect --targets "$build" | python3 -c '
import json, os, sys
build = os.path.realpath(sys.argv[1])
for t in json.load(sys.stdin):
    if t["type"] == "executable" and "/services/" in t["defined_in"]:
        print(t["name"], os.path.relpath(os.path.realpath(t["filename"][0]), build))
' "$build")

check "YAML structure: no tabs, even indentation, keys and list items only" python3 - "$src" <<'PY'
import glob, re, sys
src = sys.argv[1]
key = re.compile(r'^( *)(- )*("[^"]*"|[A-Za-z0-9_.<>/-]+): ?(.*)$')
item = re.compile(r'^( *)- ?(.*)$')
bad = []
for f in [src + "/docker-compose.yml"] + sorted(glob.glob(src + "/deploy/k8s/*.yaml")):
    block = None   # indentation of an open block scalar
    depth = 0      # open [ of a flow sequence
    for no, line in enumerate(open(f), 1):
        text = line.rstrip("\n")
        stripped = text.strip()
        indent = len(text) - len(text.lstrip(" "))
        if block is not None:
            if not stripped or indent > block:
                continue
            block = None
        if depth > 0:
            depth += text.count("[") - text.count("]")
            continue
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        if "\t" in text:
            bad.append(f"{f}:{no}: tab")
        elif indent % 2:
            bad.append(f"{f}:{no}: odd indentation")
        elif not key.match(text) and not item.match(text):
            bad.append(f"{f}:{no}: neither 'key: value' nor '- item': {stripped}")
        m = key.match(text)
        value = m.group(4) if m else (item.match(text).group(2) if item.match(text) else "")
        if value.startswith(("|", ">")):
            block = indent
        depth = max(0, value.count("[") - value.count("]"))
if bad:
    sys.exit("\n".join(bad))
PY

# The commands compose and the manifests run: first word of each command.
commands=$(python3 - "$src" <<'PY'
import glob, re, sys
src = sys.argv[1]
compose = open(src + "/docker-compose.yml").read()
services = compose.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
for block in re.split(r'\n(?=  [a-z0-9-]+:\n)', services):
    name = re.match(r'\s*([a-z0-9-]+):', block)
    cmd = re.search(r'^    command: \["([^"]+)"', block, re.M)
    if name and cmd and "<<: *sonar" in block:  # our image (nats runs its own)
        print("compose", name.group(1), cmd.group(1))
for f in sorted(glob.glob(src + "/deploy/k8s/*.yaml")):
    for first in re.findall(r'^ +command:\n +- (\S+)', open(f).read(), re.M):
        print("k8s", f.rsplit("/", 1)[1], first)
PY
)
check "compose and the manifests run only binaries meson builds (or deploy/ scripts)" bash -c '
    exes=$1 src=$2 commands=$3 bad=0
    [ -n "$exes" ] || { echo "meson introspect listed no service executable"; exit 1; }
    [ "$(grep -c "^compose" <<<"$commands")" -ge 6 ] || { echo "too few compose commands: $commands"; exit 1; }
    while read -r where file cmd; do
        if grep -q "^$cmd " <<<"$exes" || [ -x "$src/deploy/$cmd" ]; then continue; fi
        echo "$where $file runs $cmd: not a meson executable nor a script in deploy/"; bad=1
    done <<<"$commands"
    exit $bad' _ "$exes" "$src" "$commands"

check "every service executable meson builds is in the image, and every file the Dockerfile copies exists" bash -c '
    exes=$1 src=$2 bad=0
    copied=$(sed -n "s|^COPY --from=build /build/\([^ ]*\) .*|\1|p" "$src/deploy/Dockerfile")
    for path in $copied; do
        grep -q " $path\$" <<<"$exes" || { echo "Dockerfile copies /build/$path: not a meson executable"; bad=1; }
    done
    while read -r name path; do
        grep -qx "$path" <<<"$copied" || { echo "the image lacks $name ($path)"; bad=1; }
    done <<<"$exes"
    for f in $(sed -n "s|^COPY \(deploy/[^ ]*\( deploy/[^ ]*\)*\) [^ ]*$|\1|p" "$src/deploy/Dockerfile"); do
        [ -f "$src/$f" ] || { echo "Dockerfile copies $f: missing"; bad=1; }
    done
    exit $bad' _ "$exes" "$src"

check "every service in docker-compose.yml is one of nats, sonard, statusd, gateway, chillybin, jafflr, wells, aquifers, demo" bash -c '
    got=$(sed -n "/^services:/,/^[a-z]/s/^  \([a-z0-9-]*\):$/\1/p" "$1/docker-compose.yml" | sort | tr "\n" " ")
    [ "$got" = "aquifers chillybin demo gateway jafflr nats sonard statusd wells " ] || { echo "services: $got"; exit 1; }' _ "$src"

check "kustomization resources exist and nats.conf in the ConfigMap is deploy/nats.conf" bash -c '
    src=$1 bad=0
    for r in $(sed -n "/^resources:/,/^[a-z]/s/^  - \(.*\)$/\1/p" "$src/deploy/k8s/kustomization.yaml"); do
        [ -f "$src/deploy/k8s/$r" ] || { echo "missing resource $r"; bad=1; }
    done
    inline=$(sed -n "/^  nats.conf: |$/,/^---$/p" "$src/deploy/k8s/nats.yaml" | sed "1d;\$d" | sed "s/^    //")
    [ "$inline" = "$(cat "$src/deploy/nats.conf")" ] || { echo "deploy/k8s/nats.yaml differs from deploy/nats.conf"; bad=1; }
    grep -q "\./deploy/nats.conf:/etc/nats/nats.conf" "$src/docker-compose.yml" || { echo "compose does not mount deploy/nats.conf"; bad=1; }
    grep -q "^jetstream" "$src/deploy/nats.conf" || { echo "nats.conf does not enable JetStream"; bad=1; }
    exit $bad' _ "$src"

exit $failed
