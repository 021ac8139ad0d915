#!/usr/bin/env bash
# compose-demo.sh — the demo scenario against services that are already running
# (the one-shot `demo` job of docker-compose.yml and deploy/k8s): an aquifer and
# five wells reaching aquifers, then the gate for a compatible chillybin v2
# candidate (promoted) and for the breaking `nome` one (aborted, jafflr's check
# named). The candidates run inside this container, reachable by the others at
# http://$DEMO_HOST:9081 and :9082. Exit 0 only when all of that happened.
#
# Environment: NATS_URL (default nats://nats:4222), DEMO_HOST (default: demo,
# the compose service name; the k8s Job sets its pod IP), SONAR_BIN.
set -uo pipefail
export NATS_URL=${NATS_URL:-nats://nats:4222}
SONAR=${SONAR_BIN:-sonar}
HOST=${DEMO_HOST:-demo}
GATE=$(dirname "$0")/gate
WORK=$(mktemp -d)

step() { printf '\n== %s\n' "$*"; }
wait_for() { # DESCRIPTION SECONDS COMMAND...
    local what=$1 deadline=$((SECONDS + $2)); shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "demo: timed out waiting for $what" >&2; exit 1; }
        sleep 0.5
    done
}
live() { "$SONAR" services --json | tr -d ' \n' | grep -q "\"service\":\"$1\",\"live\":true"; }

step "waiting for sonard and the services on $NATS_URL"
for s in chillybin jafflr wells aquifers; do wait_for "$s to join" 120 live "$s"; done
"$SONAR" services

step "an aquifer and five wells"
"$SONAR" request aquifers.create '{"name":"gab","region":"Great Artesian Basin"}' --compact ||
    "$SONAR" request aquifers.get '{"name":"gab"}' --compact   # a rerun: it exists already
before=$("$SONAR" request aquifers.get '{"name":"gab"}' --compact | sed -n 's/.*"wells":\([0-9]*\).*/\1/p')
wait_for "wells to learn of gab" 30 "$SONAR" request wells.create --timeout 2s \
    '{"aquifer":"gab","owner":"farm-1","depth":80}'
for i in 2 3 4 5; do
    "$SONAR" request wells.create "{\"aquifer\":\"gab\",\"owner\":\"farm-$i\",\"depth\":$((60 + 20 * i))}" --compact
done
want=$((before + 5))
wait_for "aquifers to count $want wells" 30 bash -c \
    "'$SONAR' request aquifers.get '{\"name\":\"gab\"}' --compact | grep -q '\"wells\":$want,'"
"$SONAR" request aquifers.get '{"name":"gab"}' --compact

step "candidates chillybin v2 (compatible) and nome (breaking)"
chillybin --no-sonar --variant v2 --db "$WORK/v2.db" --address 0.0.0.0 --port 9081 >"$WORK/v2.log" 2>&1 &
V2=$!
chillybin --no-sonar --variant nome --db "$WORK/nome.db" --address 0.0.0.0 --port 9082 >"$WORK/nome.log" 2>&1 &
NOME=$!
trap 'kill $V2 $NOME 2>/dev/null; wait; rm -rf "$WORK"' EXIT
wait_for "the candidates" 20 bash -c "curl -sf http://127.0.0.1:9081/health && curl -sf http://127.0.0.1:9082/health"
"$GATE" chillybin "http://$HOST:9081" 2.0.0 --timeout 10s; V2_RC=$?
"$GATE" chillybin "http://$HOST:9082" 3.0.0 --timeout 10s; NOME_RC=$?

step "summary"
echo "v2 candidate: exit $V2_RC (want 0); nome candidate: exit $NOME_RC (want 1)"
[ "$V2_RC" = 0 ] && [ "$NOME_RC" = 1 ]
