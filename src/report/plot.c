/* plot.c - figures for `anvil report`, drawn with cairo (plot.h).
 *
 * Layout of every figure (pixels): title band on top, the plot area inside fixed margins,
 * tick labels and axis titles outside it, the legend inside its top-right corner. Axis ranges
 * are widened to "nice" tick steps (1, 2 or 5 times a power of ten). */
#include "report/plot.h"

#include <cairo/cairo-svg.h>
#include <cairo/cairo.h>
#include <fontconfig/fontconfig.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/fsutil.h"

/* Margins around the plot area (pixels). */
#define M_LEFT 74
#define M_RIGHT 24
#define M_TOP 36
#define M_BOTTOM 52
/* Extra room on the right for a heatmap's colour bar. */
#define COLORBAR_ROOM 70
#define FONT "DejaVu Sans"
#define FONT_SIZE 12.0
#define TITLE_SIZE 14.0
/* Ticks per axis, at most. */
#define MAX_TICKS 7
/* Heatmap columns drawn at most (more steps are averaged into this many). */
#define HEAT_MAX_COLS 240

/* Okabe & Ito (2008), "Color Universal Design": blue, vermillion, bluish green, orange,
 * reddish purple, sky blue, black (yellow left out: too pale on white). */
static const double PALETTE[PLOT_N_COLORS][3] = {
    {0.000, 0.447, 0.698}, {0.835, 0.369, 0.000}, {0.000, 0.620, 0.451}, {0.902, 0.624, 0.000},
    {0.800, 0.475, 0.655}, {0.337, 0.706, 0.914}, {0.000, 0.000, 0.000},
};

typedef struct {
    double x0, x1, y0, y1;       /* data range */
    double px0, px1, py0, py1;   /* plot area in pixels (py0 top) */
} Frame;

static double fx(const Frame *f, double x)
{
    return f->px0 + (x - f->x0) / (f->x1 - f->x0) * (f->px1 - f->px0);
}
static double fy(const Frame *f, double y)
{
    return f->py1 - (y - f->y0) / (f->y1 - f->y0) * (f->py1 - f->py0);
}

/* ---- output: the same drawing into PNG and SVG ---- */

static cairo_status_t write_to_atomic(void *closure, const unsigned char *data, unsigned int len)
{
    return fs_atomic_write(closure, data, len) ? CAIRO_STATUS_WRITE_ERROR : CAIRO_STATUS_SUCCESS;
}

typedef void (*DrawFn)(cairo_t *cr, const void *arg);

static int render_one(const char *path, int svg, DrawFn draw, const void *arg)
{
    FsAtomic *a = fs_atomic_open(path);
    if (!a) return -1;
    cairo_surface_t *s = svg ? cairo_svg_surface_create_for_stream(write_to_atomic, a, PLOT_W, PLOT_H)
                             : cairo_image_surface_create(CAIRO_FORMAT_RGB24, PLOT_W, PLOT_H);
    cairo_t *cr = cairo_create(s);
    draw(cr, arg);
    cairo_status_t st = cairo_status(cr);
    cairo_destroy(cr);
    if (st == CAIRO_STATUS_SUCCESS && !svg) st = cairo_surface_write_to_png_stream(s, write_to_atomic, a);
    cairo_surface_finish(s); /* the SVG surface writes its document here */
    if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_status(s);
    cairo_surface_destroy(s);
    if (st != CAIRO_STATUS_SUCCESS) {
        fs_atomic_abort(a);
        return err_set("%s: cairo: %s", path, cairo_status_to_string(st));
    }
    return fs_atomic_commit(a);
}

static int render(const char *path_base, int formats, DrawFn draw, const void *arg)
{
    char *png = xmalloc(strlen(path_base) + 5), *svg = xmalloc(strlen(path_base) + 5);
    sprintf(png, "%s.png", path_base);
    sprintf(svg, "%s.svg", path_base);
    int rc = formats & PLOT_PNG ? render_one(png, 0, draw, arg) : 0;
    if (!rc && (formats & PLOT_SVG)) rc = render_one(svg, 1, draw, arg);
    free(png);
    free(svg);
    return rc;
}

/* ---- ticks and labels ---- */

/* A "nice" number near x: 1, 2 or 5 times a power of ten (rounded, or the next one up). */
static double nice_num(double x, int round_it)
{
    double e = floor(log10(x)), f = x / pow(10, e), nf;
    if (round_it) nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
    else nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nf * pow(10, e);
}

/* Widen [*lo, *hi] to multiples of a nice step; returns the step. */
static double nice_range(double *lo, double *hi)
{
    if (!(*hi > *lo)) {
        double pad = fabs(*lo) > 0 ? fabs(*lo) * 0.1 : 1;
        *lo -= pad;
        *hi += pad;
    }
    double step = nice_num((*hi - *lo) / (MAX_TICKS - 1), 1);
    *lo = floor(*lo / step + 1e-9) * step;
    *hi = ceil(*hi / step - 1e-9) * step;
    return step;
}

static void fmt_tick(double v, double step, int si, char *buf, size_t n)
{
    if (fabs(v) < step * 1e-6) v = 0;
    if (si) {
        static const struct {
            double scale;
            const char *suffix;
        } U[] = {{1e12, "T"}, {1e9, "B"}, {1e6, "M"}, {1e3, "k"}};
        for (size_t i = 0; i < ARRAY_LEN(U); i++)
            if (fabs(v) >= U[i].scale || (v == 0 && step >= U[i].scale)) {
                int dec = step / U[i].scale >= 1 ? 0 : (int)ceil(-log10(step / U[i].scale) - 1e-9);
                snprintf(buf, n, "%.*f%s", dec, v / U[i].scale, v == 0 ? "" : U[i].suffix);
                return;
            }
    }
    if (step < 1e-3 || fabs(v) >= 1e6) {
        snprintf(buf, n, "%.2g", v);
        return;
    }
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, n, "%.*f", dec, v);
}

static void set_font(cairo_t *cr, double size, int bold)
{
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
}

/* Text anchored at (x, y): ax, ay in {0, 0.5, 1} = left/centre/right, top/middle/bottom. */
static void text_at(cairo_t *cr, double x, double y, double ax, double ay, const char *s)
{
    cairo_text_extents_t te;
    cairo_text_extents(cr, s, &te);
    cairo_move_to(cr, x - ax * te.x_advance, y + (1 - ay) * FONT_SIZE * 0.75);
    cairo_show_text(cr, s);
}

static void background(cairo_t *cr, const char *title)
{
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    set_font(cr, TITLE_SIZE, 1);
    text_at(cr, PLOT_W / 2.0, 10, 0.5, 0, title);
}

/* Grid, frame, ticks and axis titles of f. */
static void axes(cairo_t *cr, const Frame *f, double xstep, double ystep, int x_si, const char *xl, const char *yl)
{
    char buf[32];
    set_font(cr, FONT_SIZE, 0);
    cairo_set_line_width(cr, 1);
    for (double y = f->y0; y <= f->y1 + ystep * 1e-6; y += ystep) {
        double py = round(fy(f, y)) + 0.5;
        cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
        cairo_move_to(cr, f->px0, py);
        cairo_line_to(cr, f->px1, py);
        cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
        fmt_tick(y, ystep, 0, buf, sizeof(buf));
        text_at(cr, f->px0 - 6, py - FONT_SIZE * 0.38, 1, 0, buf);
    }
    for (double x = f->x0; xstep > 0 && x <= f->x1 + xstep * 1e-6; x += xstep) {
        double px = round(fx(f, x)) + 0.5;
        cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
        cairo_move_to(cr, px, f->py0);
        cairo_line_to(cr, px, f->py1);
        cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
        fmt_tick(x, xstep, x_si, buf, sizeof(buf));
        text_at(cr, px, f->py1 + 6, 0.5, 0, buf);
    }
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    cairo_rectangle(cr, f->px0 + 0.5, f->py0 + 0.5, f->px1 - f->px0, f->py1 - f->py0);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, (f->px0 + f->px1) / 2, f->py1 + 28, 0.5, 0, xl);
    cairo_save(cr);
    cairo_translate(cr, 18, (f->py0 + f->py1) / 2);
    cairo_rotate(cr, -M_PI / 2);
    text_at(cr, 0, -FONT_SIZE * 0.75, 0.5, 0, yl);
    cairo_restore(cr);
}

static void set_color(cairo_t *cr, int c)
{
    const double *p = PALETTE[((c % PLOT_N_COLORS) + PLOT_N_COLORS) % PLOT_N_COLORS];
    cairo_set_source_rgb(cr, p[0], p[1], p[2]);
}

static void set_dash(cairo_t *cr, int dashed)
{
    static const double D[] = {6, 4};
    cairo_set_dash(cr, D, dashed ? 2 : 0, 0);
}

/* ---- line charts ---- */

static void draw_lines(cairo_t *cr, const void *arg)
{
    const LinePlot *p = arg;
    background(cr, p->title);
    Frame f = {INFINITY, -INFINITY, INFINITY, -INFINITY, M_LEFT, PLOT_W - M_RIGHT, M_TOP, PLOT_H - M_BOTTOM};
    for (int i = 0; i < p->n_lines; i++) {
        const PlotLine *l = &p->lines[i];
        int skip = p->skip_start && l->n >= 20 ? l->n / 20 : 0;
        for (int k = 0; k < l->n; k++) {
            if (!isfinite(l->x[k]) || !isfinite(l->y[k])) continue;
            f.x0 = MIN(f.x0, l->x[k]);
            f.x1 = MAX(f.x1, l->x[k]);
            if (k < skip) continue;
            f.y0 = MIN(f.y0, l->y[k]);
            f.y1 = MAX(f.y1, l->y[k]);
        }
    }
    if (!isfinite(f.x0)) f.x0 = 0, f.x1 = 1, f.y0 = 0, f.y1 = 1;
    double xstep = nice_range(&f.x0, &f.x1), ystep = nice_range(&f.y0, &f.y1);
    axes(cr, &f, xstep, ystep, p->x_si, p->xlabel, p->ylabel);
    cairo_save(cr);
    cairo_rectangle(cr, f.px0, f.py0, f.px1 - f.px0, f.py1 - f.py0);
    cairo_clip(cr);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    for (int i = 0; i < p->n_lines; i++) {
        const PlotLine *l = &p->lines[i];
        set_color(cr, l->color);
        set_dash(cr, l->dashed);
        cairo_set_line_width(cr, 1.6);
        int pen = 0;
        for (int k = 0; k < l->n; k++) {
            if (!isfinite(l->x[k]) || !isfinite(l->y[k])) {
                pen = 0;
                continue;
            }
            if (pen) cairo_line_to(cr, fx(&f, l->x[k]), fy(&f, l->y[k]));
            else cairo_move_to(cr, fx(&f, l->x[k]), fy(&f, l->y[k]));
            pen = 1;
        }
        cairo_stroke(cr);
        set_dash(cr, 0);
        for (int k = 0; l->markers && k < l->n; k++) {
            if (!isfinite(l->x[k]) || !isfinite(l->y[k])) continue;
            cairo_arc(cr, fx(&f, l->x[k]), fy(&f, l->y[k]), 3.2, 0, 2 * M_PI);
            cairo_fill(cr);
        }
    }
    cairo_restore(cr);
    /* legend: top right, inside the plot area */
    set_font(cr, FONT_SIZE, 0);
    double w = 0;
    int n = 0;
    for (int i = 0; i < p->n_lines; i++) {
        if (!p->lines[i].label) continue;
        cairo_text_extents_t te;
        cairo_text_extents(cr, p->lines[i].label, &te);
        w = MAX(w, te.x_advance);
        n++;
    }
    if (!n) return;
    const double row = 18, sw = 26;
    double bx = f.px1 - w - sw - 22, by = f.py0 + 8;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, bx, by, w + sw + 16, n * row + 8);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.7, 0.7, 0.7);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    int k = 0;
    for (int i = 0; i < p->n_lines; i++) {
        const PlotLine *l = &p->lines[i];
        if (!l->label) continue;
        double y = by + 4 + row * k + row / 2;
        set_color(cr, l->color);
        set_dash(cr, l->dashed);
        cairo_set_line_width(cr, 1.6);
        cairo_move_to(cr, bx + 6, y);
        cairo_line_to(cr, bx + 6 + sw - 6, y);
        cairo_stroke(cr);
        set_dash(cr, 0);
        if (l->markers) {
            cairo_arc(cr, bx + 6 + (sw - 6) / 2, y, 3.2, 0, 2 * M_PI);
            cairo_fill(cr);
        }
        cairo_set_source_rgb(cr, 0, 0, 0);
        text_at(cr, bx + sw + 6, y - FONT_SIZE * 0.38, 0, 0, l->label);
        k++;
    }
}

int plot_lines(const LinePlot *p, const char *path_base, int formats)
{
    return render(path_base, formats, draw_lines, p);
}

/* ---- heatmap ---- */

/* log2(ratio) in [-1, 1] -> blue, white, red */
static void diverging(double r, double rgb[3])
{
    static const double LO[3] = {0.129, 0.400, 0.675}, HI[3] = {0.698, 0.094, 0.169};
    double t = isfinite(r) && r > 0 ? log2(r) : -1;
    t = t < -1 ? -1 : t > 1 ? 1 : t;
    const double *end = t < 0 ? LO : HI;
    double a = fabs(t);
    for (int i = 0; i < 3; i++) rgb[i] = (1 - a) * 1.0 + a * end[i];
}

static void draw_heatmap(cairo_t *cr, const void *arg)
{
    const HeatPlot *p = arg;
    background(cr, p->title);
    Frame f = {p->x[0], p->x[p->n_cols - 1], 0, p->n_rows, M_LEFT, PLOT_W - M_RIGHT - COLORBAR_ROOM, M_TOP,
               PLOT_H - M_BOTTOM};
    if (!(f.x1 > f.x0)) f.x1 = f.x0 + 1;
    /* columns: average groups of steps down to HEAT_MAX_COLS */
    int cols = MIN(p->n_cols, HEAT_MAX_COLS);
    cairo_surface_t *img = cairo_image_surface_create(CAIRO_FORMAT_RGB24, cols, p->n_rows);
    unsigned char *px = cairo_image_surface_get_data(img);
    int stride = cairo_image_surface_get_stride(img);
    cairo_surface_flush(img);
    for (int c = 0; c < cols; c++) {
        int a = (int)((long)c * p->n_cols / cols), b = (int)((long)(c + 1) * p->n_cols / cols);
        for (int r = 0; r < p->n_rows; r++) {
            double s = 0;
            for (int k = a; k < b; k++) s += p->ratio[(size_t)r * p->n_cols + k];
            double rgb[3];
            diverging(s / (b - a), rgb);
            /* the top row of the image is the last row of the data (row 0 at the bottom) */
            uint32_t *q = (uint32_t *)(px + (size_t)(p->n_rows - 1 - r) * stride) + c;
            *q = (uint32_t)(rgb[0] * 255 + 0.5) << 16 | (uint32_t)(rgb[1] * 255 + 0.5) << 8 | (uint32_t)(rgb[2] * 255 + 0.5);
        }
    }
    cairo_surface_mark_dirty(img);
    cairo_save(cr);
    cairo_translate(cr, f.px0, f.py0);
    cairo_scale(cr, (f.px1 - f.px0) / cols, (f.py1 - f.py0) / p->n_rows);
    cairo_set_source_surface(cr, img, 0, 0);
    cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
    cairo_paint(cr);
    cairo_restore(cr);
    cairo_surface_destroy(img);
    /* x axis: steps; y axis: one label per group (thinned to ~12) */
    double xlo = f.x0, xhi = f.x1, xstep = nice_range(&xlo, &xhi);
    char buf[64];
    set_font(cr, FONT_SIZE, 0);
    cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
    for (double x = xlo; x <= xhi + xstep * 1e-6; x += xstep) {
        if (x < f.x0 - 1e-9 || x > f.x1 + 1e-9) continue;
        double pxx = round(fx(&f, x)) + 0.5;
        cairo_move_to(cr, pxx, f.py1);
        cairo_line_to(cr, pxx, f.py1 + 4);
        cairo_stroke(cr);
        fmt_tick(x, xstep, 1, buf, sizeof(buf));
        text_at(cr, pxx, f.py1 + 6, 0.5, 0, buf);
    }
    int groups = p->n_rows / MAX(1, p->rows_per_group), every = MAX(1, (groups + 11) / 12);
    for (int g = 0; g < groups; g++) {
        double yc = fy(&f, (g + 0.5) * p->rows_per_group);
        if (g % every == 0) {
            snprintf(buf, sizeof(buf), "%s%d", p->group_prefix, g);
            text_at(cr, f.px0 - 6, yc - FONT_SIZE * 0.38, 1, 0, buf);
        }
        if (g > 0 && p->rows_per_group > 1 && groups <= 64) {
            cairo_set_source_rgba(cr, 0.2, 0.2, 0.2, 0.5);
            cairo_set_line_width(cr, 0.8);
            cairo_move_to(cr, f.px0, round(fy(&f, g * p->rows_per_group)) + 0.5);
            cairo_line_to(cr, f.px1, round(fy(&f, g * p->rows_per_group)) + 0.5);
            cairo_stroke(cr);
            cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
        }
    }
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, f.px0 + 0.5, f.py0 + 0.5, f.px1 - f.px0, f.py1 - f.py0);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, (f.px0 + f.px1) / 2, f.py1 + 28, 0.5, 0, p->xlabel);
    /* colour bar: ratio 1/2 .. 2 on a log scale */
    double cx = f.px1 + 16, cw = 14, ch = f.py1 - f.py0;
    cairo_pattern_t *g = cairo_pattern_create_linear(0, f.py1, 0, f.py0);
    for (int i = 0; i <= 8; i++) {
        double rgb[3];
        diverging(pow(2, -1 + i / 4.0), rgb);
        cairo_pattern_add_color_stop_rgb(g, i / 8.0, rgb[0], rgb[1], rgb[2]);
    }
    cairo_rectangle(cr, cx, f.py0, cw, ch);
    cairo_set_source(cr, g);
    cairo_fill(cr);
    cairo_pattern_destroy(g);
    cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
    static const struct {
        double r;
        const char *label;
    } CT[] = {{0.5, "0.5x"}, {1, "1x"}, {2, "2x"}};
    for (size_t i = 0; i < ARRAY_LEN(CT); i++) {
        double y = f.py1 - (log2(CT[i].r) + 1) / 2 * ch;
        text_at(cr, cx + cw + 4, y - FONT_SIZE * 0.38, 0, 0, CT[i].label);
    }
    cairo_save(cr);
    cairo_translate(cr, PLOT_W - 8, (f.py0 + f.py1) / 2);
    cairo_rotate(cr, -M_PI / 2);
    text_at(cr, 0, -FONT_SIZE * 0.75, 0.5, 0, p->colorbar_label);
    cairo_restore(cr);
}

int plot_heatmap(const HeatPlot *p, const char *path_base, int formats)
{
    if (p->n_cols < 1 || p->n_rows < 1) return err_set("%s: heatmap without data", path_base);
    return render(path_base, formats, draw_heatmap, p);
}

/* ---- bars ---- */

static void draw_bars(cairo_t *cr, const void *arg)
{
    const BarPlot *p = arg;
    background(cr, p->title);
    Frame f = {-0.5, p->n - 0.5, 0, 0, M_LEFT, PLOT_W - M_RIGHT, M_TOP, PLOT_H - M_BOTTOM};
    for (int i = 0; i < p->n; i++) f.y1 = MAX(f.y1, MAX(p->hi[i], p->mean[i]));
    f.y1 = MAX(f.y1, p->ref) * 1.1;
    double ystep = nice_range(&f.y0, &f.y1);
    axes(cr, &f, 0, ystep, 0, p->xlabel, p->ylabel);
    char buf[32];
    int every = MAX(1, (p->n + 15) / 16);
    double bw = (f.px1 - f.px0) / p->n * 0.7;
    for (int i = 0; i < p->n; i++) {
        double xc = fx(&f, i);
        set_color(cr, 0);
        cairo_rectangle(cr, xc - bw / 2, fy(&f, p->mean[i]), bw, fy(&f, 0) - fy(&f, p->mean[i]));
        cairo_fill(cr);
        cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
        cairo_set_line_width(cr, 1.2);
        cairo_move_to(cr, xc, fy(&f, p->lo[i]));
        cairo_line_to(cr, xc, fy(&f, p->hi[i]));
        cairo_move_to(cr, xc - bw / 5, fy(&f, p->lo[i]));
        cairo_line_to(cr, xc + bw / 5, fy(&f, p->lo[i]));
        cairo_move_to(cr, xc - bw / 5, fy(&f, p->hi[i]));
        cairo_line_to(cr, xc + bw / 5, fy(&f, p->hi[i]));
        cairo_stroke(cr);
        if (i % every == 0) {
            snprintf(buf, sizeof(buf), "%d", i);
            set_font(cr, FONT_SIZE, 0);
            text_at(cr, xc, f.py1 + 6, 0.5, 0, buf);
        }
    }
    if (p->ref > 0) {
        set_color(cr, 1);
        set_dash(cr, 1);
        cairo_set_line_width(cr, 1.4);
        cairo_move_to(cr, f.px0, fy(&f, p->ref));
        cairo_line_to(cr, f.px1, fy(&f, p->ref));
        cairo_stroke(cr);
        set_dash(cr, 0);
        if (p->ref_label) text_at(cr, f.px1 - 6, fy(&f, p->ref) - FONT_SIZE - 4, 1, 0, p->ref_label);
    }
}

int plot_bars(const BarPlot *p, const char *path_base, int formats)
{
    if (p->n < 1) return err_set("%s: bar chart without data", path_base);
    return render(path_base, formats, draw_bars, p);
}

void plot_release(void)
{
    cairo_debug_reset_static_data();
    FcFini();
}
