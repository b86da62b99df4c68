# lib_dist.sh - what the distributed CLI tests share (cli_dist.sh, cli_tp.sh); source after lib_cli.sh.
# The ranks of a test share the machine's cores; OpenMPI runs as root in CI; its allocations outlive
# MPI_Finalize, so under `make asan` the leak checker is off for mpirun's ranks.
export OMP_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun_() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" mpirun "$@"; }
LOSS_RTOL=1e-5
WEIGHT_TOL=2e-5

losses() { sed 's/.*"loss": \([0-9.]*\).*/\1/' "$1/metrics.jsonl" | tr '\n' ' '; }
# same_losses NAME DIR_A DIR_B: the 6 steps' losses within LOSS_RTOL
same_losses() {
    local a b
    a=$(losses "$2")
    b=$(losses "$3")
    check "$1: losses ($a / $b)" awk -v a="$a" -v b="$b" -v t="$LOSS_RTOL" 'BEGIN {
        n = split(a, x, " "); m = split(b, y, " "); if (n != 6 || m != 6) exit 1
        for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > t * x[i]) exit 1 }
        exit 0 }'
}
# same_weights NAME DIR_A DIR_B: the final weights within WEIGHT_TOL
same_weights() {
    if "$ANVIL" inspect --diff "$2/final" "$3/final" --tol "$WEIGHT_TOL" >"$tmp/diff.out" 2>&1; then ok; else
        bad "$1: weights: $(cat "$tmp/diff.out")"
    fi
}
