# lib_cli.sh - shared helpers for the tests/cli_*.sh scripts (sourced, not run).
# Counts checks in $pass / $fail; a script ends with `cli_summary`, which prints
# "N passed, N failed" and returns nonzero on failure. $tmp is a private temp dir.
ANVIL=${ANVIL:-./anvil}
pass=0
fail=0
tmp=$(mktemp -d /tmp/anvil_cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

ok() { pass=$((pass + 1)); }
bad() {
    fail=$((fail + 1))
    echo "FAIL $*" >&2
}
# check NAME COMMAND...: passes when COMMAND succeeds
check() {
    local name=$1
    shift
    if "$@"; then ok; else bad "$name"; fi
}
differs() { ! cmp -s "$1" "$2"; }

# expect_fail NAME "needle1|needle2..." ARGS... : `anvil ARGS` exits 1 with exactly one
# stderr line, starting "anvil: " and containing every needle.
expect_fail() {
    local name=$1 needles=$2
    shift 2
    "$ANVIL" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$? lines
    lines=$(wc -l <"$tmp/err")
    if [ $rc -ne 1 ]; then bad "$name: exit $rc, want 1 ($(head -c 300 "$tmp/err"))"; return; fi
    if [ "$lines" -ne 1 ]; then bad "$name: $lines stderr lines: $(cat "$tmp/err")"; return; fi
    if ! grep -q '^anvil: ' "$tmp/err"; then bad "$name: no 'anvil: ' prefix: $(cat "$tmp/err")"; return; fi
    local IFS='|'
    for n in $needles; do
        if ! grep -qF -- "$n" "$tmp/err"; then bad "$name: message lacks '$n': $(cat "$tmp/err")"; return; fi
    done
    ok
}

cli_summary() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
