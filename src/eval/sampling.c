/* sampling.c - greedy, temperature, top-k and top-p sampling (sampling.h). */
#include "eval/sampling.h"

#include <math.h>
#include <stdlib.h>

#include "core/error.h"

int sampler_check(const SamplerOptions *o)
{
    if (!(o->temperature >= 0) || isinf(o->temperature))
        return err_set("--temperature: expected a number >= 0, got %g", o->temperature);
    if (o->top_k < 0) return err_set("--top-k: expected an integer >= 0, got %d", o->top_k);
    if (!(o->top_p > 0 && o->top_p <= 1))
        return err_set("--top-p: expected a number in (0, 1], got %g", o->top_p);
    return 0;
}

void sampler_init(Sampler *s, const SamplerOptions *o, int V)
{
    s->o = *o;
    s->V = V;
    s->tmp = xmalloc((size_t)V * sizeof(float));
    s->cand = xmalloc((size_t)V * sizeof(SampleCand));
}

void sampler_free(Sampler *s)
{
    free(s->tmp);
    free(s->cand);
    s->tmp = NULL;
    s->cand = NULL;
}

int32_t argmax_f32(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Largest scaled logit first; equal ones by id, so the order is fixed. */
static int cand_cmp(const void *a, const void *b)
{
    const SampleCand *x = a, *y = b;
    if (x->z != y->z) return x->z > y->z ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The k-th largest of x[0..n) (1 <= k <= n): quickselect on the copy tmp, descending. */
static float kth_largest(const float *x, int n, int k, float *tmp)
{
    for (int i = 0; i < n; i++) tmp[i] = x[i];
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = tmp[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) { /* afterwards [lo..j] >= pivot, [i..hi] <= pivot, between == pivot */
            while (tmp[i] > pivot) i++;
            while (tmp[j] < pivot) j--;
            if (i <= j) {
                float t = tmp[i];
                tmp[i++] = tmp[j];
                tmp[j--] = t;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return pivot;
    }
    return tmp[want];
}

int32_t sampler_next(Sampler *s, const float *logits, Rng *rng)
{
    int V = s->V;
    if (s->o.temperature == 0) return argmax_f32(logits, V);
    SampleCand *c = s->cand;
    float inv_t = 1.0f / s->o.temperature;
    /* candidates: every id, or those >= the k-th largest scaled logit (ties kept, as HF's TopK) */
    int n = 0;
    if (s->o.top_k > 0 && s->o.top_k < V) {
        for (int i = 0; i < V; i++) s->tmp[i] = logits[i] * inv_t;
        float thr = kth_largest(s->tmp, V, s->o.top_k, s->tmp);
        for (int i = 0; i < V; i++) {
            float z = logits[i] * inv_t;
            if (z >= thr) c[n++] = (SampleCand){z, i};
        }
    } else {
        for (int i = 0; i < V; i++) c[n++] = (SampleCand){logits[i] * inv_t, i};
    }
    float mx = -INFINITY;
    for (int k = 0; k < n; k++) mx = fmaxf(mx, c[k].z);
    double sum = 0;
    for (int k = 0; k < n; k++) sum += exp((double)c[k].z - mx);
    if (s->o.top_p < 1) {
        qsort(c, (size_t)n, sizeof(SampleCand), cand_cmp);
        double before = 0; /* probability mass (unnormalised) of the better candidates */
        int keep = 0;
        while (keep < n && before < s->o.top_p * sum) before += exp((double)c[keep++].z - mx);
        n = MAX(keep, 1);
        sum = 0;
        for (int k = 0; k < n; k++) sum += exp((double)c[k].z - mx);
    }
    double u = rng_double(rng) * sum, acc = 0;
    for (int k = 0; k < n; k++) {
        acc += exp((double)c[k].z - mx);
        if (u < acc) return c[k].id;
    }
    return c[n - 1].id; /* u fell in the rounding slack at the very end */
}
