/* cmd_report.c - `anvil report`: plots and a summary of training runs, and their TensorBoard files.
 *
 *   anvil report RUN_DIR [RUN_DIR ...] [--out DIR]        OUT/report.md + PNG and SVG figures
 *   anvil report --tensorboard RUN_DIR [--out DIR]         metrics.jsonl -> an event file
 *   anvil report --check-tensorboard RUN_DIR [--events DIR]  the event files equal metrics.jsonl
 *
 * docs/reporting.md has the figures, the tags and the checks. Bad input: one line
 * "anvil: <file>: <what>" on stderr, exit status 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/error.h"
#include "report/report.h"
#include "report/tbrun.h"

/* Default output directory of a report. */
#define REPORT_OUT_DEFAULT "report"

static const char *report_usage =
    "usage: anvil report RUN_DIR [RUN_DIR ...] [--out DIR] [--no-svg] [--date TEXT]\n"
    "         Markdown report with PNG and SVG plots of the runs (default --out " REPORT_OUT_DEFAULT ")\n"
    "       anvil report --tensorboard RUN_DIR [--out DIR]\n"
    "         write RUN_DIR/metrics.jsonl as a TensorBoard event file (into RUN_DIR by default)\n"
    "       anvil report --check-tensorboard RUN_DIR [--events DIR]\n"
    "         check that the event files (of RUN_DIR by default) hold exactly metrics.jsonl's values\n";

static int fail(void)
{
    fprintf(stderr, "anvil: %s\n", err_get());
    return 1;
}

/* "anvil report ARGS..." for the page (arguments with spaces quoted). */
static char *command_line(int argc, char **argv)
{
    size_t n = 16;
    for (int i = 0; i < argc; i++) n += strlen(argv[i]) + 3;
    char *s = xmalloc(n);
    strcpy(s, "anvil");
    for (int i = 0; i < argc; i++) {
        strcat(s, strchr(argv[i], ' ') ? " '" : " ");
        strcat(s, argv[i]);
        if (strchr(argv[i], ' ')) strcat(s, "'");
    }
    return s;
}

int cmd_report(int argc, char **argv)
{
    const char *out = NULL, *events = NULL, *date = NULL;
    int mode = 0, no_svg = 0; /* mode 0 report, 1 --tensorboard, 2 --check-tensorboard */
    const char **dirs = xcalloc((size_t)argc, sizeof(char *));
    int nd = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(report_usage, stdout);
            free(dirs);
            return 0;
        }
        if (!strcmp(a, "--tensorboard")) mode = 1;
        else if (!strcmp(a, "--no-svg")) no_svg = 1;
        else if (!strcmp(a, "--check-tensorboard")) mode = 2;
        else if (!strcmp(a, "--out") || !strcmp(a, "--events") || !strcmp(a, "--date")) {
            if (i + 1 >= argc) {
                err_set("report: %s needs a value (try --help)", a);
                free(dirs);
                return fail();
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--events")) events = v;
            else date = v;
        } else if (a[0] == '-' && a[1]) {
            err_set("report: unknown option \"%s\" (try --help)", a);
            free(dirs);
            return fail();
        } else {
            dirs[nd++] = a;
        }
    }
    int rc = 0;
    if (nd == 0) rc = err_set("report: give a run directory (try --help)");
    else if (mode && nd != 1) rc = err_set("report: %s takes one run directory, got %d",
                                          mode == 1 ? "--tensorboard" : "--check-tensorboard", nd);
    else if (events && mode != 2) rc = err_set("report: --events goes with --check-tensorboard");
    if (rc) {
        free(dirs);
        return fail();
    }
    if (mode == 1) {
        char *path;
        size_t n;
        rc = tbrun_convert(dirs[0], out, &path, &n);
        if (!rc) printf("wrote %s (%zu scalars)\n", path, n);
        free(path);
    } else if (mode == 2) {
        size_t n;
        rc = tbrun_check(dirs[0], events, &n);
        if (!rc) printf("%s: %zu values in the event files, each equal to metrics.jsonl's\n", events ? events : dirs[0], n);
    } else {
        char *cmd = command_line(argc, argv);
        ReportOptions o = {out ? out : REPORT_OUT_DEFAULT, cmd, date, no_svg};
        rc = report_write(dirs, nd, &o);
        if (!rc) printf("wrote %s/report.md\n", o.out_dir);
        free(cmd);
    }
    free(dirs);
    return rc ? fail() : 0;
}
