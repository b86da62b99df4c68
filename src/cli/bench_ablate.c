/* bench_ablate.c - `anvil bench --ablate`: the optimization-impact table.
 *
 * The configuration the command line names is the "full" one; each row turns one switch of it
 * off (or to its other levels) and measures the step again. Every row runs in a fresh child
 * process (`anvil bench` with the row's flags and environment, --json to a temporary file), so
 * that each starts from an empty GPU and its peak memory is its own. The rows are all measured
 * in this one command, on the same data (random tokens from the same seed, or --data), and
 * printed as a Markdown table with their change against the full configuration. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/bench_ablate.h"
#include "core/error.h"
#include "io/fsutil.h"

extern char **environ;

#define MAX_ROWS 12
#define MAX_EXTRA 8

typedef struct {
    char name[96];                /* the row's label */
    const char *env;              /* "VAR=value" or NULL */
    const char *extra[MAX_EXTRA]; /* flags appended after the user's */
    int nextra;
    char batch_arg[16];           /* storage for a --batch value */
    /* measured */
    int ok;
    double tok_s, peak_gib, act_gib, loss0, loss, step_ms;
    char why[640]; /* the child's last error line when it failed */
} Row;

static void add_flag(Row *r, const char *f) { r->extra[r->nextra++] = f; }

/* The user's arguments without --ablate, --json FILE and --profile (the rows add their own). */
static int base_args(int argc, char **argv, const char **out)
{
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ablate") || !strcmp(argv[i], "--profile")) continue;
        if (!strcmp(argv[i], "--json") || !strcmp(argv[i], "--ceiling-size")) {
            i++;
            continue;
        }
        out[n++] = argv[i];
    }
    return n;
}

/* The environment with `set` ("VAR=value") replacing any VAR already there. */
static char **child_env(const char *set)
{
    size_t n = 0;
    while (environ[n]) n++;
    char **e = xcalloc(n + 2, sizeof(char *));
    size_t k = 0, vl = set ? (size_t)(strchr(set, '=') - set) + 1 : 0;
    for (size_t i = 0; i < n; i++)
        if (!set || strncmp(environ[i], set, vl)) e[k++] = environ[i];
    if (set) e[k++] = (char *)set;
    return e;
}

/* The last non-empty line of a file (the child's error), or "". */
static void last_line(const char *path, char *out, size_t cap)
{
    out[0] = 0;
    char *buf;
    size_t n;
    if (fs_read_file(path, &buf, &n)) {
        err_clear();
        return;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    buf[n] = 0;
    char *s = strrchr(buf, '\n');
    snprintf(out, cap, "%s", s ? s + 1 : buf);
    free(buf);
}

static double num(const json_t *j, const char *key)
{
    const json_t *v = json_object_get(j, key);
    return json_is_number(v) ? json_number_value(v) : 0.0;
}

static void run_row(Row *r, const char **base, int nbase, const char *dir, int idx)
{
    char json_path[512], log_path[512];
    snprintf(json_path, sizeof(json_path), "%s/row%d.json", dir, idx);
    snprintf(log_path, sizeof(log_path), "%s/row%d.log", dir, idx);
    const char *av[64];
    int n = 0;
    av[n++] = "anvil";
    av[n++] = "bench";
    for (int i = 0; i < nbase; i++) av[n++] = base[i];
    for (int i = 0; i < r->nextra; i++) av[n++] = r->extra[i];
    av[n++] = "--ceiling-size";
    av[n++] = "0";
    av[n++] = "--json";
    av[n++] = json_path;
    av[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char **env = child_env(r->env);
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, (char *const *)av, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    if (rc) {
        snprintf(r->why, sizeof(r->why), "could not start anvil bench: %s", strerror(rc));
        return;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
        last_line(log_path, r->why, sizeof(r->why));
        if (!r->why[0]) snprintf(r->why, sizeof(r->why), "anvil bench failed (status %d)", st);
        return;
    }
    json_error_t je;
    json_t *j = json_load_file(json_path, 0, &je);
    if (!j) {
        snprintf(r->why, sizeof(r->why), "%.400s: %.160s", json_path, je.text);
        return;
    }
    r->ok = 1;
    r->tok_s = num(j, "tokens_per_s");
    r->peak_gib = num(j, "peak_gib");
    r->loss0 = num(j, "first_loss");
    r->loss = num(j, "final_loss");
    r->step_ms = num(j, "step_ms");
    r->act_gib = num(json_object_get(j, "memory_bytes"), "activations") / (1024.0 * 1024.0 * 1024.0);
    json_decref(j);
}

static void pct(char *out, size_t cap, double x, double ref)
{
    if (ref > 0) snprintf(out, cap, "%+.1f%%", 100.0 * (x - ref) / ref);
    else snprintf(out, cap, "-");
}

static int write_rows_json(const char *path, const AblateSpec *s, const Row *rows, int n)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s, s:b}", "variant", rows[i].name, "ok", rows[i].ok);
        if (rows[i].ok) {
            json_object_set_new(o, "tokens_per_s", json_real(rows[i].tok_s));
            json_object_set_new(o, "step_ms", json_real(rows[i].step_ms));
            json_object_set_new(o, "peak_gib", json_real(rows[i].peak_gib));
            json_object_set_new(o, "activations_gib", json_real(rows[i].act_gib));
            json_object_set_new(o, "first_loss", json_real(rows[i].loss0));
            json_object_set_new(o, "final_loss", json_real(rows[i].loss));
        } else {
            json_object_set_new(o, "error", json_string(rows[i].why));
        }
        json_array_append_new(arr, o);
    }
    json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:i, s:o}", "model", s->model, "device", s->device, "batch", s->B,
                          "seq", s->T, "recompute", s->recompute, "rows", arr);
    char *txt = json_dumps(j, JSON_INDENT(2));
    int rc = !txt || fs_write_atomic(path, txt, strlen(txt));
    if (rc) fprintf(stderr, "anvil: bench: %s: %s\n", path, err_get());
    free(txt);
    json_decref(j);
    return rc;
}

int bench_ablate(int argc, char **argv, const AblateSpec *s)
{
    int gpu = !strcmp(s->device, "cuda"), cuda = !strncmp(s->device, "cuda", 4);
    Row rows[MAX_ROWS];
    int n = 0;
    memset(rows, 0, sizeof(rows));
    snprintf(rows[n++].name, sizeof(rows[0].name), "full (%s, recompute %d)", s->device, s->recompute);
    if (cuda) {
        const char *att = getenv("ANVIL_ATTENTION");
        if (!att || strcmp(att, "anvil")) {
            snprintf(rows[n].name, sizeof(rows[0].name), "attention: anvil's kernels, not cuDNN");
            rows[n++].env = "ANVIL_ATTENTION=anvil";
        }
    }
    if (gpu) {
        snprintf(rows[n].name, sizeof(rows[0].name), "fp32 (cuda-fp32), not bf16");
        add_flag(&rows[n], "--device");
        add_flag(&rows[n++], "cuda-fp32");
    }
    static const char *levels[] = {"0", "1", "2"};
    for (int r = 0; r <= 2; r++) {
        if (r == s->recompute) continue;
        snprintf(rows[n].name, sizeof(rows[0].name), "recompute %d%s", r,
                 r == 1 ? " (attention and MLP inner)" : r == 2 ? " (whole blocks)" : " (keep everything)");
        add_flag(&rows[n], "--recompute");
        add_flag(&rows[n++], levels[r]);
    }
    if (!s->head_unfused) {
        snprintf(rows[n].name, sizeof(rows[0].name), "LM head: whole logits + softmax, not the fused loss");
        add_flag(&rows[n], "--head");
        add_flag(&rows[n++], "unfused");
    }
    if (cuda) {
        const char *gt = getenv("ANVIL_GEMM_TUNE");
        if (!gt || strcmp(gt, "off")) {
            snprintf(rows[n].name, sizeof(rows[0].name), "GEMM tuning off (cuBLASLt's first choice)");
            rows[n++].env = "ANVIL_GEMM_TUNE=off";
        }
    }
    if (s->accum == 1) {
        Row *r = &rows[n++];
        if (s->B % 8 == 0) {
            snprintf(r->name, sizeof(r->name), "accumulation 8 (micro-batch %d, same tokens per step)", s->B / 8);
            snprintf(r->batch_arg, sizeof(r->batch_arg), "%d", s->B / 8);
            add_flag(r, "--batch");
            add_flag(r, r->batch_arg);
        } else {
            snprintf(r->name, sizeof(r->name), "accumulation 8 (micro-batch %d, 8x the tokens per step)", s->B);
        }
        add_flag(r, "--accum");
        add_flag(r, "8");
    }

    char dir[] = "/tmp/anvil_ablate.XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "anvil: bench: a temporary directory: %s\n", strerror(errno));
        return 1;
    }
    const char **base = xcalloc((size_t)argc + 1, sizeof(char *));
    int nbase = base_args(argc, argv, base);
    printf("ablation of %s on %s, batch %d x %d: %d configurations, each in its own process\n", s->model, s->device,
           s->B, s->T, n);
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        run_row(&rows[i], base, nbase, dir, i);
        printf("  %-62s %s\n", rows[i].name, rows[i].ok ? "measured" : rows[i].why);
        fflush(stdout);
    }
    free(base);
    fs_rm_rf(dir);

    const Row *f = &rows[0];
    printf("\n| configuration | tokens/s | vs full | peak GiB | vs full | activations MiB | step-0 loss | final loss |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < n; i++) {
        const Row *r = &rows[i];
        if (!r->ok) {
            printf("| %s | failed: %s | | | | | | |\n", r->name, r->why);
            continue;
        }
        char dt[16] = "", dm[16] = "";
        if (i && f->ok) pct(dt, sizeof(dt), r->tok_s, f->tok_s), pct(dm, sizeof(dm), r->peak_gib, f->peak_gib);
        printf("| %s | %.0f | %s | %.2f | %s | %.1f | %.4f | %.4f |\n", r->name, r->tok_s, dt, r->peak_gib, dm,
               r->act_gib * 1024.0, r->loss0, r->loss);
    }
    printf("\npeak: %s. step-0 loss: the first forward, same weights and tokens in every row: it differs only by "
           "rounding (a larger change would be a bug). final loss: after the timed steps on random tokens; a few "
           "steps at bench's learning rate amplify rounding differences, so it is not a check (two identical runs can "
           "differ in the first decimal).\n",
           cuda ? "high-water of the GPU allocations" : "the process's max RSS");
    printf("ZeRO stages are not rows here: bench is one process; compare dist.zero 0/1/2 with `anvil launch "
           "--nproc N anvil train ...` (docs/distributed.md).\n");
    int rc = s->json ? write_rows_json(s->json, s, rows, n) : 0;
    if (!f->ok) rc = 1;
    return rc;
}
