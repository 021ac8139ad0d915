#!/usr/bin/env bash
# The demo scenario, run by `deploy/dev demo` after the build:
#   nats-server (JetStream) → sonard → chillybin v1, jafflr (depends on chillybin, with
#   checks), hello (another dependent of chillybin), hello as "ledger" (depends on
#   aquifers only, so it answers `none`) and "menu", a service in any language joined
#   through `sonar agent` with a JSON check table → a toastie through jafflr → the gate for a
#   compatible chillybin v2 candidate (pass, promoted) → the gate for the breaking
#   `nome` candidate (fail, jafflr's check named, aborted) → services, graph, history.
#   sonar-gateway serves the REST API and the live dashboard throughout.
# Everything runs on loopback from a temp dir and is stopped at the end
# (or left running with --keep).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# SONAR_BUILD_DIR picks another build (the test suite runs the demo on its own).
BIN=${SONAR_BUILD_DIR:-$ROOT/build}
KEEP=0
for a in "$@"; do
    case $a in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown option $a (try --keep)" >&2; exit 2 ;;
    esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sonar-demo-XXXXXX")
PIDS=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

cleanup() {
    if [ "$KEEP" = 1 ]; then
        step "left running (--keep): stop with: kill ${PIDS[*]}"
        return
    fi
    step "stopping everything"
    for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    rm -rf "$WORK"
    say "done"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name, command...
    local name=$1; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll a condition with a deadline.
wait_for() {
    local what=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then echo "demo: timed out waiting for $what" >&2; exit 1; fi
        sleep 0.1
    done
}

NATS_PORT=$(free_port)
export NATS_URL=nats://127.0.0.1:$NATS_PORT
SONAR="$BIN/services/cli/sonar"
export SONAR_BIN=$SONAR   # deploy/gate uses the same build
CHILLY_PORT=$(free_port); JAFFLR_PORT=$(free_port); CAND_V2=$(free_port); CAND_NOME=$(free_port)
GW_PORT=$(free_port); GW_URL=http://127.0.0.1:$GW_PORT

step "starting nats-server (JetStream) on $NATS_URL"
start nats-server nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js"
wait_for "nats-server" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT"

step "starting sonard, chillybin v1, jafflr, hello, ledger, menu (through sonar agent), wells and aquifers"
start sonard "$BIN/services/coordinator/sonard" --db "$WORK/sonard.db"
start chillybin "$BIN/services/examples/chillybin/chillybin" --db "$WORK/chillybin.db" --port "$CHILLY_PORT"
start jafflr "$BIN/services/examples/jafflr/jafflr" --port "$JAFFLR_PORT" --chillybin "http://127.0.0.1:$CHILLY_PORT"
start hello "$BIN/services/examples/hello/hello" --depends-on chillybin --heartbeat 2s
start ledger "$BIN/services/examples/hello/hello" --name ledger --depends-on aquifers --heartbeat 2s
start menu "$SONAR" agent --checks "$ROOT/services/examples/menu/checks.json" --heartbeat 2s
start wells "$BIN/services/examples/wells/wells" --db "$WORK/wells.db"
start aquifers "$BIN/services/examples/aquifers/aquifers" --db "$WORK/aquifers.db"
wait_for "seven services in the registry" 15 bash -c \
    "'$SONAR' services --json | python3 -c 'import json,sys; s=json.load(sys.stdin)[\"services\"]; sys.exit(0 if sum(1 for x in s if x[\"live\"])>=7 else 1)'"
"$SONAR" services

step "starting sonar-gateway: REST API and live dashboard at $GW_URL/"
start gateway "$BIN/services/gateway/sonar-gateway" --listen "127.0.0.1:$GW_PORT"
wait_for "the gateway" 10 curl -sf "$GW_URL/health"
say "GET /api/v1/graph → $(curl -s "$GW_URL/api/v1/graph")"

step "statusd checks health and scrapes metrics of every service that names them"
# statusd (like the gateway and sonard) registers "answers_checks": false, so gates never
# wait for it.
STATUSD_PORT=$(free_port)
start statusd "$BIN/services/statusd/statusd" --db "$WORK/statusd.db" --interval 1s \
    --listen "127.0.0.1:$STATUSD_PORT"
wait_for "statusd to see passing targets" 15 bash -c \
    "curl -sf http://127.0.0.1:$STATUSD_PORT/metrics | grep -q '^statusd_targets{status=\"passing\"} [1-9]'"
curl -s "http://127.0.0.1:$STATUSD_PORT/metrics" | grep -E '^statusd_(targets\{|samples_stored)' | sed 's/^/   /'

step "a customer orders a cheese toastie from jafflr (which picks from chillybin)"
say "stock before: $(curl -s "http://127.0.0.1:$CHILLY_PORT/")"
say "GET /toastie?i=cheese → $(curl -s "http://127.0.0.1:$JAFFLR_PORT/toastie?i=cheese")"
say "stock after:  $(curl -s "http://127.0.0.1:$CHILLY_PORT/")"

step "wells and aquifers: an aquifer, then five wells (events through outbox → JetStream → inbox)"
say "\$ sonar request aquifers.create '{\"name\":\"gab\",\"region\":\"Great Artesian Basin\"}'"
"$SONAR" request aquifers.create '{"name":"gab","region":"Great Artesian Basin"}' --compact
# wells learns of gab from events.aquifers.created; until then it refuses wells there (404).
wait_for "wells to learn of aquifer gab" 10 "$SONAR" request wells.create --timeout 2s \
    '{"aquifer":"gab","owner":"first","depth":80}'
say "well 1 created once wells knew of gab"
for i in 2 3 4 5; do
    "$SONAR" request wells.create "{\"aquifer\":\"gab\",\"owner\":\"farm-$i\",\"depth\":$((60 + 20 * i))}" --compact
done
say "a well for an aquifer nobody created is refused:"
"$SONAR" request wells.create '{"aquifer":"atlantis","owner":"x","depth":10}' 2>&1 | sed 's/^/   /'
wait_for "aquifers to count five wells in gab" 15 bash -c \
    "'$SONAR' request aquifers.get '{\"name\":\"gab\"}' --compact | grep -q '\"wells\":5,'"
say "aquifers learned of all five:"
"$SONAR" request aquifers.get '{"name":"gab"}' --compact | sed 's/^/   /'
WELLS_OK=$?

step "candidate wells 1.1.0 on subject prefix wells-candidate: aquifers' checks run against it"
start cand-wells "$BIN/services/examples/wells/wells" --db "$WORK/cand-wells.db" \
    --subject-prefix wells-candidate --name wells-candidate --version 1.1.0
wait_for "the wells candidate to learn of gab" 10 bash -c \
    "'$SONAR' request '\$SRV.STATS.wells-candidate' --compact | grep -q '\"applied\":[1-9]'"
"$ROOT/deploy/gate" wells nats:wells-candidate 1.1.0 --timeout 10s
WELLS_RC=$?
say "gate exit code: $WELLS_RC"

step "the dependency graph (Graphviz DOT)"
"$SONAR" graph

step "candidate chillybin v2 (adds /v2/pick, keeps /pick deprecated) at :$CAND_V2"
start cand-v2 "$BIN/services/examples/chillybin/chillybin" --no-sonar --variant v2 \
    --db "$WORK/cand-v2.db" --port "$CAND_V2"
wait_for "the v2 candidate" 10 curl -sf "http://127.0.0.1:$CAND_V2/health"
"$ROOT/deploy/gate" chillybin "http://127.0.0.1:$CAND_V2" 2.0.0 --timeout 10s
V2_RC=$?
say "gate exit code: $V2_RC"

step "candidate chillybin 3.0.0 renames ?name= to ?nome= (the breaking change) at :$CAND_NOME"
start cand-nome "$BIN/services/examples/chillybin/chillybin" --no-sonar --variant nome \
    --db "$WORK/cand-nome.db" --port "$CAND_NOME"
wait_for "the nome candidate" 10 curl -sf "http://127.0.0.1:$CAND_NOME/health"
"$ROOT/deploy/gate" chillybin "http://127.0.0.1:$CAND_NOME" 3.0.0 --timeout 10s
NOME_RC=$?
say "gate exit code: $NOME_RC"

step "history of chillybin's changes"
"$SONAR" history chillybin

step "summary"
say "five wells reached aquifers: $([ $WELLS_OK = 0 ] && echo yes || echo NO)"
say "wells 1.1.0 candidate: exit $WELLS_RC ($([ $WELLS_RC = 0 ] && echo promoted || echo aborted))"
say "compatible v2 candidate: exit $V2_RC ($([ $V2_RC = 0 ] && echo promoted || echo aborted))"
say "breaking nome candidate: exit $NOME_RC ($([ $NOME_RC = 0 ] && echo promoted || echo aborted))"
say "watch live in another terminal:  NATS_URL=$NATS_URL $SONAR watch"
say "dashboard and API (run with --keep to keep it up):  $GW_URL/"
say "recent reports over HTTP: $(curl -s "$GW_URL/api/v1/reports?limit=5" | python3 -c 'import json,sys; print(", ".join(r["change_id"][:8]+" "+r["verdict"] for r in json.load(sys.stdin)["reports"]))')"
[ $V2_RC = 0 ] && [ $NOME_RC = 1 ] && [ $WELLS_OK = 0 ] && [ $WELLS_RC = 0 ]
