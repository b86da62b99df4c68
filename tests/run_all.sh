#!/usr/bin/env bash
# Runs every test program in $1/tests and every tests/cli_*.sh script, then
# prints one total line "N passed, N failed". Exit status 1 if anything failed.
set -u
build=${1:-build}
export ANVIL=${ANVIL:-$(pwd)/anvil}
total_pass=0
total_fail=0
total_skip=0
export ANVIL_TEST_BUILD=$build
failed_progs=()
run_one() {
    local name=$1
    shift
    local out
    local t0=$(date +%s.%N)
    out=$("$@" 2> >(cat >&2))
    local rc=$?
    local t1=$(date +%s.%N)
    local line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    local p=0 f=0 s=0
    if [ -n "$line" ]; then
        p=$(echo "$line" | awk '{print $1}')
        f=$(echo "$line" | awk '{print $3}')
        s=$(echo "$line" | sed -n 's/.*failed, \([0-9]*\) skipped.*/\1/p')
        s=${s:-0}
    fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    local why=
    [ "$s" -gt 0 ] && why="  skipped: $(printf '%s\n' "$out" | sed -n 's/.*skipped: //p' | head -n 1 | cut -c1-60)"
    printf '%-28s %5d passed %3d failed  (%.1fs)%s\n' "$name" "$p" "$f" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$why"
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    total_skip=$((total_skip + s))
    [ "$f" -ne 0 ] && failed_progs+=("$name")
}
for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.o|*.d) continue ;; esac
    run_one "$(basename "$t")" "$t"
done
for s in tests/cli_*.sh; do
    [ -f "$s" ] || continue
    run_one "$(basename "$s")" bash "$s"
done
if [ ${#failed_progs[@]} -ne 0 ]; then echo "failing: ${failed_progs[*]}"; fi
if [ "$total_skip" -gt 0 ]; then
    echo "$total_pass passed, $total_fail failed, $total_skip skipped"
else
    echo "$total_pass passed, $total_fail failed"
fi
[ "$total_fail" -eq 0 ]
