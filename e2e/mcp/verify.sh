#!/usr/bin/env bash
# Runs every SDK client against every fixture server directly (no proxy), on loopback:
#   server-everything streamableHttp, server-everything sse, server_2026.py
# x client.py (Python mcp) and client.mjs (TS sdk), in the protocol modes each supports.
# Checks the negotiated protocol version and the step results, prints one line per pair
# and "N passed, N failed". Starts its servers on free 127.0.0.1 ports and kills them on exit.
#   e2e/mcp/verify.sh          (installs the fixtures first via scripts/mcp-fixtures.sh)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fix=$("$here/../../scripts/mcp-fixtures.sh" | tail -n 1)
py=$fix/venv/bin/python
logs=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "verify: nothing listening on 127.0.0.1:$1" >&2
    return 1
}

p_sh=$(free_port); p_sse=$(free_port); p_26=$(free_port)
node "$here/everything.mjs" streamableHttp --port "$p_sh" >"$logs/everything-sh.log" 2>&1 & pids+=($!)
node "$here/everything.mjs" sse --port "$p_sse" >"$logs/everything-sse.log" 2>&1 & pids+=($!)
"$py" "$here/server_2026.py" --port "$p_26" >"$logs/server_2026.log" 2>&1 & pids+=($!)
wait_port "$p_sh"; wait_port "$p_sse"; wait_port "$p_26"

everything_steps='[
  {"op":"list_tools"},
  {"op":"call_tool","name":"echo","arguments":{"message":"hello"}},
  {"op":"call_tool","name":"get-sum","arguments":{"a":2,"b":3}},
  {"op":"list_prompts"},
  {"op":"get_prompt","name":"args-prompt","arguments":{"city":"Paris"}},
  {"op":"get_prompt","name":"no-such-prompt","arguments":{}},
  {"op":"list_resources"},
  {"op":"read_resource","uri":"demo://resource/static/document/architecture.md"},
  {"op":"ping"}]'
everything_expect='["ok","ok","ok","ok","ok","error","ok","ok","ok"]'
fixture_steps='[
  {"op":"list_tools"},
  {"op":"call_tool","name":"echo","arguments":{"message":"hello"}},
  {"op":"call_tool","name":"add","arguments":{"a":2,"b":3}},
  {"op":"call_tool","name":"run_shell","arguments":{"cmd":"id"}},
  {"op":"call_tool","name":"get_secret","arguments":{}},
  {"op":"list_prompts"},
  {"op":"get_prompt","name":"greeting","arguments":{"name":"Ada"}},
  {"op":"list_resources"},
  {"op":"read_resource","uri":"memo://notes"},
  {"op":"read_resource","uri":"memo://missing"},
  {"op":"ping"}]'
# ping does not exist at 2026-07-28: Method not found.
fixture_expect_2025='["ok","ok","ok","ok","ok","ok","ok","ok","ok","error","ok"]'
fixture_expect_2026='["ok","ok","ok","ok","ok","ok","ok","ok","ok","error","error"]'

passed=0 failed=0
# check NAME EXPECTED_VERSION STEPS EXPECTED_KINDS ECHO_TEXT -- CLIENT ARGS...
check() {
    local name=$1 want_pv=$2 steps=$3 want_kinds=$4 echo_text=$5
    shift 6
    local out err rc=0 pv kinds echo
    out=$(printf '%s' "$steps" | "$@" 2>"$logs/stderr") || rc=$?
    pv=$(sed -n 's/.*protocolVersion=//p' "$logs/stderr" | head -n 1)
    kinds=$(jq -c '[.steps[] | keys[0]]' <<<"$out" 2>/dev/null || echo '?')
    echo=$(jq -r '.steps[1].ok.content[0].text // "?"' <<<"$out" 2>/dev/null || echo '?')
    if [[ $rc == 0 && $pv == "$want_pv" && $kinds == "$want_kinds" && $echo == "$echo_text" ]]; then
        passed=$((passed + 1))
        printf 'ok   %-58s protocolVersion=%s\n' "$name" "$pv"
    else
        failed=$((failed + 1))
        printf 'FAIL %-58s rc=%s protocolVersion=%s kinds=%s echo=%s\n' "$name" "$rc" "$pv" "$kinds" "$echo"
        sed 's/^/     /' "$logs/stderr"
    fi
}

u_sh=http://127.0.0.1:$p_sh/mcp u_sse=http://127.0.0.1:$p_sse/sse u_26=http://127.0.0.1:$p_26/mcp
E=("$everything_steps" "$everything_expect" "Echo: hello")
check "py(auto)   -> everything streamableHttp" 2025-11-25 "${E[@]}" -- "$py" "$here/client.py" --url "$u_sh" --transport streamable
check "py(legacy) -> everything streamableHttp" 2025-11-25 "${E[@]}" -- "$py" "$here/client.py" --url "$u_sh" --transport streamable --mode legacy
check "ts         -> everything streamableHttp" 2025-11-25 "${E[@]}" -- node "$here/client.mjs" --url "$u_sh" --transport streamable
check "py(auto)   -> everything sse" 2025-11-25 "${E[@]}" -- "$py" "$here/client.py" --url "$u_sse" --transport sse
check "py(legacy) -> everything sse" 2025-11-25 "${E[@]}" -- "$py" "$here/client.py" --url "$u_sse" --transport sse --mode legacy
check "ts         -> everything sse" 2025-11-25 "${E[@]}" -- node "$here/client.mjs" --url "$u_sse" --transport sse
check "py(2026-07-28) -> server_2026" 2026-07-28 "$fixture_steps" "$fixture_expect_2026" hello -- "$py" "$here/client.py" --url "$u_26" --transport streamable --mode 2026-07-28
check "py(auto)   -> server_2026" 2026-07-28 "$fixture_steps" "$fixture_expect_2026" hello -- "$py" "$here/client.py" --url "$u_26" --transport streamable
check "py(legacy) -> server_2026" 2025-11-25 "$fixture_steps" "$fixture_expect_2025" hello -- "$py" "$here/client.py" --url "$u_26" --transport streamable --mode legacy
check "ts         -> server_2026" 2025-11-25 "$fixture_steps" "$fixture_expect_2025" hello -- node "$here/client.mjs" --url "$u_26" --transport streamable

echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
