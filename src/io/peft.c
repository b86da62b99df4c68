/* peft.c - PEFT LoRA adapter directories (peft.h). */
#include "io/peft.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/fsutil.h"
#include "io/safetensors.h"

#define CONFIG_FILE "adapter_config.json"
#define WEIGHTS_BASE "adapter_model"
/* What PEFT prefixes every module path with in a causal-LM adapter's state dict. */
#define PEFT_PREFIX "base_model.model."
#define MAX_TARGETS 64

int peft_is_adapter_dir(const char *dir)
{
    char *p = fs_join(dir, CONFIG_FILE);
    int e = fs_exists(p);
    free(p);
    return e;
}

/* A key that must be absent, null, false, empty or equal to `ok_value` (when given). */
static int check_unsupported(json_t *root, const char *path, const char *key, const char *why)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || json_is_false(v)) return 0;
    if ((json_is_object(v) && json_object_size(v) == 0) || (json_is_array(v) && json_array_size(v) == 0)) return 0;
    if (json_is_string(v) && !json_string_value(v)[0]) return 0;
    return err_set("%s: %s: %s", path, key, why);
}

/* Sites from a regex over module paths (PEFT full-matches a string target_modules): every
 * layer must agree, since anvil adapts a site in every layer or in none. */
static int sites_from_regex(const char *re, const ModelConfig *c, unsigned *sites, const char *path)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &ec,
                                     &eo, NULL);
    if (!code) return err_set("%s: target_modules: \"%s\" is not a regular expression", path, re);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
    int rc = 0;
    *sites = 0;
    for (int s = 0; s < LORA_SITE_COUNT && !rc; s++) {
        /* modules only: transformers 5's routed experts and the router are parameters (target_parameters) */
        if (!lora_site_in_family((LoraSite)s, c->family) || lora_site_is_param((LoraSite)s)) continue;
        /* of the layers that have the site (MoE and dense layers differ); transformers 4's per-expert
         * modules (w1/w3/w2) once per expert */
        int hits = 0, layers = 0, ne = lora_site_is_expert((LoraSite)s) ? c->moe_experts : 1;
        for (int l = 0; l < c->n_layer; l++) {
            if (!lora_site_in_layer(c, l, (LoraSite)s)) continue;
            for (int e = 0; e < ne; e++) {
                char mod[160];
                lora_module_path(c, l, (LoraSite)s, e, 1, mod, sizeof(mod));
                hits += pcre2_match(code, (PCRE2_SPTR)mod, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL) >= 0;
                layers++;
            }
        }
        if (hits && hits != layers)
            rc = err_set("%s: target_modules: \"%s\" adapts %s in %d of %d %s; anvil adapts a module in every "
                         "layer or none",
                         path, re, lora_site_short((LoraSite)s), hits, layers, ne > 1 ? "experts" : "layers");
        else if (hits) *sites |= 1u << s;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(code);
    if (!rc && !*sites) rc = err_set("%s: target_modules: \"%s\" matches no linear module of the model", path, re);
    return rc;
}

static int read_targets(json_t *t, const ModelConfig *c, unsigned *sites, const char *path)
{
    if (json_is_string(t)) {
        const char *s = json_string_value(t);
        if (!strcmp(s, "all-linear")) return lora_sites_parse(&s, 1, c->family, sites);
        return sites_from_regex(s, c, sites, path);
    }
    if (!json_is_array(t) || json_array_size(t) == 0 || json_array_size(t) > MAX_TARGETS)
        return err_set("%s: target_modules: expected a list of module names or a string", path);
    const char *names[MAX_TARGETS];
    size_t i;
    json_t *v;
    json_array_foreach(t, i, v)
    {
        if (!json_is_string(v)) return err_set("%s: target_modules[%zu]: expected a string", path, i);
        names[i] = json_string_value(v);
    }
    if (lora_sites_parse(names, (int)json_array_size(t), c->family, sites))
        return err_prefix("%s: target_modules", path);
    return 0;
}

/* Whether name is suffix or ends with "." suffix (PEFT's match of a target name). */
static int ends_with_part(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && !strcmp(name + n - k, suffix) && (n == k || name[n - k - 1] == '.');
}

/* The routed-expert sites of target_parameters (PEFT matches "<module>.<parameter>" by suffix): the
 * fused expert parameters of transformers 5 (mlp.experts.gate_up_proj, mlp.experts.down_proj). */
static int read_params(json_t *t, unsigned *sites, const char *path)
{
    *sites = 0;
    if (!t || json_is_null(t) || (json_is_array(t) && !json_array_size(t))) return 0;
    if (!json_is_array(t)) return err_set("%s: target_parameters: expected a list of parameter names", path);
    size_t i;
    json_t *v;
    json_array_foreach(t, i, v)
    {
        const char *n = json_is_string(v) ? json_string_value(v) : NULL;
        if (!n) return err_set("%s: target_parameters[%zu]: expected a string", path, i);
        if (ends_with_part(n, "gate_up_proj")) *sites |= 1u << LORA_EXP_FC;
        else if (ends_with_part(n, "down_proj")) *sites |= 1u << LORA_EXP_PROJ;
        else if (ends_with_part(n, "gate.weight")) *sites |= 1u << LORA_ROUTER;
        else
            return err_set("%s: target_parameters: \"%s\": anvil adapts the experts' gate_up_proj and down_proj "
                           "and the router's gate.weight parameters only", path, n);
    }
    return 0;
}

int peft_read_config(const char *dir, const ModelConfig *c, LoraSpec *spec, char *base, size_t n)
{
    char *path = fs_join(dir, CONFIG_FILE);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    int rc = -1;
    memset(spec, 0, sizeof(*spec));
    if (base && n) base[0] = '\0';
    if (!root) {
        err_set("%s: %s (line %d)", path, je.text, je.line);
        goto out;
    }
    json_t *pt = json_object_get(root, "peft_type"), *r = json_object_get(root, "r"),
           *alpha = json_object_get(root, "lora_alpha"), *drop = json_object_get(root, "lora_dropout");
    if (!json_is_object(root) || !json_is_string(pt) || strcmp(json_string_value(pt), "LORA")) {
        err_set("%s: peft_type: expected \"LORA\"", path);
        goto out;
    }
    if (!json_is_integer(r) || json_integer_value(r) <= 0 || json_integer_value(r) > 65536) {
        err_set("%s: r: expected a positive integer", path);
        goto out;
    }
    spec->r = (int)json_integer_value(r);
    spec->alpha = alpha ? (float)json_number_value(alpha) : 8.0f; /* PEFT's default lora_alpha */
    if (alpha && (!json_is_number(alpha) || !isfinite(spec->alpha))) {
        err_set("%s: lora_alpha: expected a number", path);
        goto out;
    }
    spec->dropout = drop && json_is_number(drop) ? (float)json_number_value(drop) : 0.0f;
    if (!(spec->dropout >= 0 && spec->dropout < 1)) {
        err_set("%s: lora_dropout: expected a number in [0, 1)", path);
        goto out;
    }
    spec->rslora = json_is_true(json_object_get(root, "use_rslora"));
    json_t *bias = json_object_get(root, "bias");
    if (bias && json_is_string(bias) && strcmp(json_string_value(bias), "none")) {
        err_set("%s: bias: \"%s\" trains biases, which anvil's adapters do not (only \"none\")", path,
                json_string_value(bias));
        goto out;
    }
    if (check_unsupported(root, path, "use_dora", "DoRA adapters are not supported") ||
        check_unsupported(root, path, "rank_pattern", "per-module ranks are not supported") ||
        check_unsupported(root, path, "alpha_pattern", "per-module alphas are not supported") ||
        check_unsupported(root, path, "layers_to_transform", "adapters on some layers only are not supported") ||
        check_unsupported(root, path, "modules_to_save", "fully trained modules beside the adapters are not supported") ||
        check_unsupported(root, path, "lora_bias", "adapter biases are not supported") ||
        check_unsupported(root, path, "exclude_modules", "excluded modules are not supported") ||
        check_unsupported(root, path, "trainable_token_indices", "trainable tokens are not supported") ||
        check_unsupported(root, path, "layer_replication", "layer replication is not supported"))
        goto out;
    json_t *tm = json_object_get(root, "target_modules"), *tp = json_object_get(root, "target_parameters");
    unsigned params = 0;
    if (read_params(tp, &params, path)) goto out;
    if (params && spec->dropout > 0) { /* PEFT's ParamWrapper refuses it: x cannot be factored out */
        err_set("%s: lora_dropout: adapters on expert parameters (target_parameters) have no dropout", path);
        goto out;
    }
    if ((!tm || json_is_null(tm) || (json_is_array(tm) && !json_array_size(tm))) && params)
        spec->sites = 0; /* PEFT allows target_parameters alone */
    else if (read_targets(tm, c, &spec->sites, path)) goto out;
    spec->sites |= params;
    int all = json_is_string(tm) && !strcmp(json_string_value(tm), "all-linear");
    if (lora_sites_moe(c, &spec->sites, all)) {
        err_prefix("%s: %s", path, params && !all ? "target_modules/target_parameters" : "target_modules");
        goto out;
    }
    json_t *b = json_object_get(root, "base_model_name_or_path");
    if (base && n && json_is_string(b)) snprintf(base, n, "%s", json_string_value(b));
    rc = 0;
out:
    json_decref(root);
    free(path);
    return rc;
}

/* The PEFT state-dict name of adapter tensor i of m ("base_model.model.<module>.lora_A.weight"). The routed
 * experts' adapters are one tensor per layer and product (PEFT's ParamWrapper on a 3-D parameter): the
 * module is mlp.experts; with both products adapted the wrappers nest, gate_up_proj's (the module's first
 * parameter) inside down_proj's, so its name goes through "base_layer". */
static void peft_name(const Model *m, int i, char *buf, size_t n)
{
    const Param *p = &m->pt.p[i];
    char mod[160];
    lora_module_path(&m->cfg, p->layer, (LoraSite)p->site, p->expert, lora_t4_layout(m->lora.sites), mod, sizeof(mod));
    const char *nest = p->site == LORA_EXP_FC && param_find_lora(&m->pt, p->layer, LORA_EXP_PROJ, 0) >= 0
                           ? ".base_layer" : "";
    snprintf(buf, n, PEFT_PREFIX "%s%s.%s.weight", mod, nest, p->role == PROLE_LORA_A ? "lora_A" : "lora_B");
}

/* The expert of a routed experts' adapter that is one part of the file's fused tensor (transformers 5's
 * 3-D parameters); -1 for every other adapter (transformers 4's per-expert modules have their own). */
static int fused_expert(const Param *p) { return lora_site_is_param((LoraSite)p->site) ? p->expert : -1; }

/* PEFT's layout of a routed experts' adapter (peft/tuners/lora/layer.py ParamWrapper, E experts, rank r):
 * lora_A (E r, in), row e r + q = expert e's A row q; lora_B (out, E r), column q E + e = expert e's B
 * column q (B reshaped to (out, r, E)); the delta of expert e is scale B_e A_e, as anvil's per-expert
 * adapters. fused (the file's tensor) <-> the expert's own x (A (r, in) or B (out, r)). */
static void expert_scatter(const Param *p, int E, const float *fused, float *x)
{
    size_t rows = (size_t)p->shape[0], cols = (size_t)p->shape[1], e = (size_t)p->expert;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            x[i * cols + j] = p->role == PROLE_LORA_A ? fused[(e * rows + i) * cols + j]
                                                      : fused[i * cols * E + j * E + e];
}

static void expert_gather(const Param *p, int E, const float *x, float *fused)
{
    size_t rows = (size_t)p->shape[0], cols = (size_t)p->shape[1], e = (size_t)p->expert;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            if (p->role == PROLE_LORA_A) fused[(e * rows + i) * cols + j] = x[i * cols + j];
            else fused[i * cols * E + j * E + e] = x[i * cols + j];
        }
}

/* The shape of adapter tensor p in the file: its own, or the experts' fused one. */
static void file_shape(const Param *p, int E, int64_t *d0, int64_t *d1)
{
    int fused = fused_expert(p) >= 0;
    *d0 = p->role == PROLE_LORA_A && fused ? E * p->shape[0] : p->shape[0];
    *d1 = p->role == PROLE_LORA_B && fused ? E * p->shape[1] : p->shape[1];
}

int peft_read_weights(const char *dir, Model *m) { return peft_read_weights_host(dir, m, NULL); }

int peft_read_weights_host(const char *dir, Model *m, float *host)
{
    StSet set;
    if (st_set_open_dir(&set, dir, WEIGHTS_BASE)) return -1;
    int rc = -1, used = 0, E = m->cfg.moe_experts;
    float *buf = NULL, *own = NULL;
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        if (p->site < 0) continue;
        char name[256], alt[256];
        peft_name(m, i, name, sizeof(name));
        /* the same with the adapter's name, as some tools save it */
        snprintf(alt, sizeof(alt), "%.*s.default.weight", (int)(strlen(name) - strlen(".weight")), name);
        const StFile *f;
        const StTensor *t = st_set_find(&set, name, &f);
        if (!t) t = st_set_find(&set, alt, &f);
        if (!t && p->site == LORA_ROUTER && !lora_t4_layout(m->lora.sites)) { /* transformers 4's router module */
            char mod[160];
            lora_module_path(&m->cfg, p->layer, LORA_ROUTER, -1, 1, mod, sizeof(mod));
            snprintf(alt, sizeof(alt), PEFT_PREFIX "%s.%s.weight", mod, p->role == PROLE_LORA_A ? "lora_A" : "lora_B");
            t = st_set_find(&set, alt, &f);
        }
        if (!t) {
            err_set("%s/%s.safetensors: %s: missing", dir, WEIGHTS_BASE, name);
            goto out;
        }
        int64_t d0, d1;
        file_shape(p, E, &d0, &d1);
        if (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
            err_set("%s: %s: shape (%lld, %lld), expected (%lld, %lld) (r %d%s)", f->path, t->name,
                    (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)d0, (long long)d1,
                    m->lora.r, fused_expert(p) >= 0 ? ", experts x r in PEFT's layout of a 3-D parameter" : "");
            goto out;
        }
        size_t numel = (size_t)d0 * (size_t)d1;
        buf = xrealloc(buf, numel * sizeof(float));
        if (st_to_f32(t, buf)) {
            err_set("%s: %s: dtype %s is not a floating type", f->path, t->name, st_dtype_name(t->dtype));
            goto out;
        }
        for (size_t k = 0; k < numel; k++)
            if (!isfinite(buf[k])) {
                err_set("%s: %s: element %zu is not finite", f->path, t->name, k);
                goto out;
            }
        const float *x = buf;
        if (fused_expert(p) >= 0) { /* expert e's part of the fused tensor */
            own = xrealloc(own, p->numel * sizeof(float));
            expert_scatter(p, E, buf, own);
            x = own;
        }
        if (host) memcpy(host + p->offset, x, p->numel * sizeof(float));
        else params_upload(&m->ps, i, x);
        used += fused_expert(p) <= 0; /* a fused tensor once */
    }
    int total = 0;
    for (int k = 0; k < set.nfiles; k++) total += set.files[k].n;
    if (total != used) {
        err_set("%s/%s.safetensors: %d tensors, of which anvil's adapters use %d (adapters on other modules than "
                "adapter_config.json's target_modules?)",
                dir, WEIGHTS_BASE, total, used);
        goto out;
    }
    rc = 0;
out:
    free(buf);
    free(own);
    st_set_close(&set);
    return rc;
}

static json_t *json_float(float x)
{
    char b[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(b, sizeof(b), "%.*g", p, (double)x);
        if (strtof(b, NULL) == x) break;
    }
    return json_real(strtod(b, NULL));
}

static int write_config(const char *dir, const Model *m, const char *base_path)
{
    json_t *j = json_object();
    json_t *targets = json_array();
    char names[256];
    lora_sites_names(m->lora.sites, &m->cfg, names, sizeof(names));
    for (char *s = strtok(names, ", "); s; s = strtok(NULL, ", ")) json_array_append_new(targets, json_string(s));
    json_t *params = json_array(); /* the routed experts' 3-D parameters (PEFT's target_parameters) */
    lora_sites_params(m->lora.sites & lora_sites_present(&m->cfg), names, sizeof(names));
    for (char *s = strtok(names, ", "); s; s = strtok(NULL, ", ")) json_array_append_new(params, json_string(s));
    json_object_set_new(j, "peft_type", json_string("LORA"));
    json_object_set_new(j, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(j, "base_model_name_or_path", base_path ? json_string(base_path) : json_null());
    json_object_set_new(j, "r", json_integer(m->lora.r));
    json_object_set_new(j, "lora_alpha", json_float(m->lora.alpha));
    json_object_set_new(j, "lora_dropout", json_float(m->lora.dropout));
    json_object_set_new(j, "use_rslora", json_boolean(m->lora.rslora));
    json_object_set_new(j, "target_modules", targets);
    if (json_array_size(params)) json_object_set_new(j, "target_parameters", params);
    else json_decref(params);
    json_object_set_new(j, "bias", json_string("none"));
    /* GPT-2's Conv1D stores weights (in, out): PEFT then merges with the transpose */
    json_object_set_new(j, "fan_in_fan_out", json_boolean(m->cfg.family == FAMILY_GPT2));
    json_object_set_new(j, "inference_mode", json_true());
    json_object_set_new(j, "init_lora_weights", json_true());
    json_object_set_new(j, "use_dora", json_false());
    json_object_set_new(j, "modules_to_save", json_null());
    json_object_set_new(j, "layers_to_transform", json_null());
    json_object_set_new(j, "rank_pattern", json_object());
    json_object_set_new(j, "alpha_pattern", json_object());
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    char *path = fs_join(dir, CONFIG_FILE);
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len] = '\n';
    text[len + 1] = '\0';
    int rc = fs_write_atomic(path, text, len + 1);
    free(path);
    free(text);
    return rc;
}

int peft_write(const char *dir, const Model *m, const char *base_path, int dtype)
{
    return peft_write_host(dir, m, NULL, base_path, dtype);
}

int peft_write_host(const char *dir, const Model *m, const float *host, const char *base_path, int dtype)
{
    int n = 0, E = m->cfg.moe_experts;
    for (int i = 0; i < m->pt.n; i++) n += m->pt.p[i].site >= 0 && fused_expert(&m->pt.p[i]) <= 0;
    if (!n) return err_set("%s: the model has no adapters to write", dir);
    StWriteTensor *t = xcalloc((size_t)n, sizeof(StWriteTensor));
    char **names = xcalloc((size_t)n, sizeof(char *));
    float **data = xcalloc((size_t)n, sizeof(float *));
    float *own = NULL;
    int k = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const Param *p = &m->pt.p[i];
        if (p->site < 0) continue;
        int64_t d0, d1;
        file_shape(p, E, &d0, &d1);
        if (fused_expert(p) > 0) { /* into the fused tensor begun at expert 0 (a site's pairs are in expert order) */
            int j = k - 2 + (p->role == PROLE_LORA_B);
            own = xrealloc(own, p->numel * sizeof(float));
            if (host) memcpy(own, host + p->offset, p->numel * sizeof(float));
            else params_download(&m->ps, i, own);
            expert_gather(p, E, own, data[j]);
            continue;
        }
        names[k] = xmalloc(256);
        peft_name(m, i, names[k], 256);
        data[k] = xmalloc((size_t)d0 * (size_t)d1 * sizeof(float));
        if (fused_expert(p) == 0) {
            own = xrealloc(own, p->numel * sizeof(float));
            if (host) memcpy(own, host + p->offset, p->numel * sizeof(float));
            else params_download(&m->ps, i, own);
            expert_gather(p, E, own, data[k]);
        } else if (host) {
            memcpy(data[k], host + p->offset, p->numel * sizeof(float));
        } else {
            params_download(&m->ps, i, data[k]);
        }
        t[k] = (StWriteTensor){.name = names[k], .dtype = dtype == DTYPE_BF16 ? ST_BF16 : ST_F32, .ndim = 2,
                               .shape = {d0, d1}, .data = data[k], .src_f32 = 1};
        k++;
    }
    free(own);
    StMeta meta[] = {{"format", "pt"}};
    int rc = st_write_dir(dir, WEIGHTS_BASE, t, n, meta, 1, 0);
    if (!rc) rc = write_config(dir, m, base_path);
    for (int i = 0; i < n; i++) free(names[i]), free(data[i]);
    free(names), free(data), free(t);
    return rc;
}
