/* plot.h - line charts, a heatmap and a bar chart, drawn with cairo into PNG and SVG.
 *
 * Each function draws one figure from the same code into an image surface saved as
 * PATH_BASE.png and/or an SVG surface saved as PATH_BASE.svg (formats: PLOT_PNG | PLOT_SVG), each written under a temporary
 * name and renamed (io/fsutil.h). Text uses cairo's toy font API with "DejaVu Sans"
 * (Debian's fonts-dejavu-core); nothing needs a display. Returns 0, or -1 with err_set().
 */
#ifndef ANVIL_REPORT_PLOT_H
#define ANVIL_REPORT_PLOT_H

/* Which files a plot_* call writes (a mask). */
#define PLOT_PNG 1
#define PLOT_SVG 2

/* Size of every figure, in pixels (PNG) and points (SVG). */
#define PLOT_W 720
#define PLOT_H 405

/* Number of distinct series colours (Okabe & Ito's colour-blind-safe palette); series i gets
 * colour i % PLOT_N_COLORS. */
#define PLOT_N_COLORS 7

typedef struct {
    const double *x, *y;
    int n;
    const char *label;  /* legend entry; NULL: none */
    int color;          /* palette index */
    int dashed;         /* dashed line */
    int markers;        /* a dot at every point (sparse series such as validation loss) */
} PlotLine;

typedef struct {
    const char *title, *xlabel, *ylabel;
    const PlotLine *lines;
    int n_lines;
    int x_si;           /* x tick labels with k/M/B suffixes (token counts) */
    int skip_start;     /* y range ignores each series' first 5% of points (a loss's first steps) */
} LinePlot;

int plot_lines(const LinePlot *p, const char *path_base, int formats);

/* Rows x columns of ratios to a reference (1 = reference), coloured blue (<= 1/2) through white
 * (1) to red (>= 2) on a log scale. Rows come in groups of rows_per_group (an MoE layer's
 * experts), labelled "<group_prefix><g>" on the y axis. x[c] is column c's position (a step). */
typedef struct {
    const char *title, *xlabel, *group_prefix, *colorbar_label;
    const double *x;
    int n_cols, n_rows, rows_per_group;
    const float *ratio; /* [n_rows * n_cols], row-major */
} HeatPlot;

int plot_heatmap(const HeatPlot *p, const char *path_base, int formats);

/* One bar per category at mean[i] with a whisker from lo[i] to hi[i]; a dashed reference line
 * at ref (labelled ref_label) when ref > 0. */
typedef struct {
    const char *title, *xlabel, *ylabel, *ref_label;
    int n;
    const double *mean, *lo, *hi;
    double ref;
} BarPlot;

int plot_bars(const BarPlot *p, const char *path_base, int formats);

/* Free cairo's and fontconfig's process-wide font caches (after the last figure; a later plot
 * call loads them again). Keeps leak checkers quiet. */
void plot_release(void);

#endif
