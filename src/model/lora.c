/* lora.c - adapter sites and their names (lora.h). */
#include "model/lora.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "model/params.h"

float lora_scale(const LoraSpec *s)
{
    if (s->r <= 0) return 0.0f;
    return s->rslora ? s->alpha / sqrtf((float)s->r) : s->alpha / (float)s->r;
}

static const char *const site_short[LORA_SITE_COUNT] = {
    "q",      "k",      "v",        "qkv",    "o",       "gate",  "up",      "fc",       "down",  "exp_fc",
    "exp_w1", "exp_w3", "exp_proj", "exp_w2", "sh_gate", "sh_up", "sh_down", "sh_route", "router"};

const char *lora_site_short(LoraSite s) { return s >= 0 && s < LORA_SITE_COUNT ? site_short[s] : "?"; }

static int site_is_moe(LoraSite s) { return s >= LORA_EXP_FC && s <= LORA_ROUTER; }

int lora_site_is_expert(LoraSite s) { return s >= LORA_EXP_FC && s <= LORA_EXP_W2; }

#define BIT(s) (1u << (s))
#define T4_EXPERTS (BIT(LORA_EXP_W1) | BIT(LORA_EXP_W3) | BIT(LORA_EXP_W2))
#define T5_EXPERTS (BIT(LORA_EXP_FC) | BIT(LORA_EXP_PROJ))

int lora_t4_layout(unsigned sites) { return (sites & T4_EXPERTS) != 0; }

/* transformers 5's fused expert parameters and its router are parameters to PEFT (target_parameters);
 * transformers 4's per-expert w1/w3/w2 are nn.Linear modules (target_modules) */
int lora_site_is_param(LoraSite s) { return s == LORA_EXP_FC || s == LORA_EXP_PROJ || s == LORA_ROUTER; }

int lora_site_in_family(LoraSite s, Family f)
{
    switch (s) {
    case LORA_Q: case LORA_K: case LORA_V: case LORA_GATE: case LORA_UP: return f == FAMILY_LLAMA;
    case LORA_QKV: case LORA_FC: return f == FAMILY_GPT2;
    case LORA_O: case LORA_DOWN: return 1;
    default: return site_is_moe(s) && f == FAMILY_LLAMA; /* mixture-of-experts: the llama family only */
    }
}

int lora_site_in_layer(const ModelConfig *c, int l, LoraSite s)
{
    if (!lora_site_in_family(s, c->family)) return 0;
    if (lora_site_is_mlp(s)) return !cfg_is_moe(c, l);
    if (lora_site_is_param(s) || lora_site_is_expert(s)) return cfg_is_moe(c, l);
    if (site_is_moe(s)) return cfg_is_moe(c, l) && c->moe_shared_d_ff > 0;
    return 1;
}

unsigned lora_sites_present(const ModelConfig *c)
{
    unsigned p = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int s = 0; s < LORA_SITE_COUNT; s++)
            if (lora_site_in_layer(c, l, (LoraSite)s)) p |= 1u << s;
    return p;
}

/* PEFT module names (the last component of the module path) per family; param: a target_parameters
 * name (routed experts), which adapter_config.json lists apart from target_modules. */
typedef struct {
    const char *name;
    Family family;
    unsigned sites;
    int param;
} LoraName;

static const LoraName names[] = {
    {"q_proj", FAMILY_LLAMA, BIT(LORA_Q), 0},
    {"k_proj", FAMILY_LLAMA, BIT(LORA_K), 0},
    {"v_proj", FAMILY_LLAMA, BIT(LORA_V), 0},
    {"o_proj", FAMILY_LLAMA, BIT(LORA_O), 0},
    {"gate_proj", FAMILY_LLAMA, BIT(LORA_GATE) | BIT(LORA_SH_GATE), 0},
    {"up_proj", FAMILY_LLAMA, BIT(LORA_UP) | BIT(LORA_SH_UP), 0},
    {"down_proj", FAMILY_LLAMA, BIT(LORA_DOWN) | BIT(LORA_SH_DOWN), 0},
    {"shared_expert_gate", FAMILY_LLAMA, BIT(LORA_SH_ROUTE), 0},
    {"mlp.experts.gate_up_proj", FAMILY_LLAMA, BIT(LORA_EXP_FC), 1},
    {"mlp.experts.down_proj", FAMILY_LLAMA, BIT(LORA_EXP_PROJ), 1},
    {"experts.gate_up_proj", FAMILY_LLAMA, BIT(LORA_EXP_FC), 1},
    {"experts.down_proj", FAMILY_LLAMA, BIT(LORA_EXP_PROJ), 1},
    {"experts", FAMILY_LLAMA, BIT(LORA_EXP_FC) | BIT(LORA_EXP_PROJ), 1},
    {"w1", FAMILY_LLAMA, BIT(LORA_EXP_W1), 0}, /* transformers 4's per-expert modules */
    {"w3", FAMILY_LLAMA, BIT(LORA_EXP_W3), 0},
    {"w2", FAMILY_LLAMA, BIT(LORA_EXP_W2), 0},
    {"gate", FAMILY_LLAMA, BIT(LORA_ROUTER), 1},
    {"mlp.gate", FAMILY_LLAMA, BIT(LORA_ROUTER), 1},
    {"gate.weight", FAMILY_LLAMA, BIT(LORA_ROUTER), 1},
    {"mlp.gate.weight", FAMILY_LLAMA, BIT(LORA_ROUTER), 1},
    {"router", FAMILY_LLAMA, BIT(LORA_ROUTER), 1},
    {"c_attn", FAMILY_GPT2, BIT(LORA_QKV), 0},
    {"c_proj", FAMILY_GPT2, BIT(LORA_O) | BIT(LORA_DOWN), 0},
    {"c_fc", FAMILY_GPT2, BIT(LORA_FC), 0},
};

int lora_sites_parse(const char *const *list, int n, Family f, unsigned *sites)
{
    *sites = 0;
    for (int i = 0; i < n; i++) {
        const char *t = list[i];
        if (!strcmp(t, "all-linear")) { /* nn.Linear modules: not the routed experts' and router's parameters */
            for (int s = 0; s < LORA_SITE_COUNT; s++)
                if (lora_site_in_family((LoraSite)s, f) && !lora_site_is_param((LoraSite)s) &&
                    !lora_site_is_expert((LoraSite)s))
                    *sites |= BIT(s);
            continue;
        }
        unsigned hit = 0;
        for (size_t k = 0; k < ARRAY_LEN(names); k++)
            if (names[k].family == f && !strcmp(names[k].name, t)) hit = names[k].sites;
        if (!hit) {
            char known[512];
            size_t o = 0;
            known[0] = '\0';
            for (size_t k = 0; k < ARRAY_LEN(names) && o < sizeof(known); k++)
                if (names[k].family == f)
                    o += (size_t)snprintf(known + o, sizeof(known) - o, "%s%s", o ? ", " : "", names[k].name);
            return err_set("\"%s\" is not a linear module of the %s family (known: %s, all-linear)", t,
                           model_family_name(f), known);
        }
        *sites |= hit;
    }
    if (!*sites) return err_set("no target modules");
    if ((*sites & T4_EXPERTS) && (*sites & T5_EXPERTS))
        return err_set("the experts in two layouts: w1/w3/w2 (transformers 4's per-expert modules) and "
                       "experts / gate_up_proj / down_proj (transformers 5's fused parameters); name one");
    return 0;
}

void lora_sites_names(unsigned sites, const ModelConfig *c, char *buf, size_t n)
{
    size_t o = 0;
    unsigned present = lora_sites_present(c);
    buf[0] = '\0';
    for (size_t k = 0; k < ARRAY_LEN(names) && o < n; k++) {
        unsigned want = names[k].sites & present;
        if (names[k].family == c->family && !names[k].param && want && (want & sites) == want)
            o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? ", " : "", names[k].name);
    }
    /* transformers 4's router is an nn.Linear module (block_sparse_moe.gate) */
    if (lora_t4_layout(sites) && (sites & BIT(LORA_ROUTER)) && o < n)
        snprintf(buf + o, n - o, "%sgate", o ? ", " : "");
}

void lora_sites_params(unsigned sites, char *buf, size_t n)
{
    static const struct {
        LoraSite s;
        const char *name;
    } p[] = {{LORA_EXP_FC, "mlp.experts.gate_up_proj"}, {LORA_EXP_PROJ, "mlp.experts.down_proj"},
             {LORA_ROUTER, "mlp.gate.weight"}};
    size_t o = 0;
    buf[0] = '\0';
    if (lora_t4_layout(sites)) sites &= ~BIT(LORA_ROUTER); /* a module there (lora_sites_names) */
    for (size_t k = 0; k < ARRAY_LEN(p) && o < n; k++)
        if (sites & BIT(p[k].s)) o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? ", " : "", p[k].name);
}

void lora_module_path(const ModelConfig *c, int l, LoraSite s, int expert, int t4, char *buf, size_t n)
{
    static const char *const llama[LORA_SITE_COUNT] = {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", NULL, "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", NULL, "mlp.down_proj", "mlp.experts", "w1", "w3", "mlp.experts", "w2",
        "mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj",
        "mlp.shared_expert_gate", "mlp.gate"};
    static const char *const gpt2[LORA_SITE_COUNT] = {NULL, NULL, NULL, "attn.c_attn", "attn.c_proj", NULL, NULL,
                                                      "mlp.c_fc", "mlp.c_proj"};
    const char *m = c->family == FAMILY_LLAMA ? llama[s] : gpt2[s];
    if (c->family != FAMILY_LLAMA) snprintf(buf, n, "transformer.h.%d.%s", l, m ? m : "?");
    else if (s == LORA_EXP_W1 || s == LORA_EXP_W3 || s == LORA_EXP_W2)
        snprintf(buf, n, "model.layers.%d.block_sparse_moe.experts.%d.%s", l, expert, m);
    else if (t4 && s == LORA_ROUTER) snprintf(buf, n, "model.layers.%d.block_sparse_moe.gate", l);
    else snprintf(buf, n, "model.layers.%d.%s", l, m ? m : "?");
}

int lora_site_in(const ModelConfig *c, LoraSite s)
{
    switch (s) {
    case LORA_O: return cfg_q_dim(c);
    case LORA_DOWN: return c->d_ff;
    case LORA_EXP_PROJ: case LORA_EXP_W2: return c->moe_d_ff;
    case LORA_SH_DOWN: return c->moe_shared_d_ff;
    default: return c->d_model;
    }
}

void lora_site_rows(const ModelConfig *c, LoraSite s, int *role, int *row0, int *rows)
{
    int q = cfg_q_dim(c), kv = cfg_kv_dim(c), ff = c->d_ff, C = c->d_model;
    *row0 = 0;
    switch (s) {
    case LORA_Q: *role = PROLE_QKV_W, *rows = q; break;
    case LORA_K: *role = PROLE_QKV_W, *row0 = q, *rows = kv; break;
    case LORA_V: *role = PROLE_QKV_W, *row0 = q + kv, *rows = kv; break;
    case LORA_QKV: *role = PROLE_QKV_W, *rows = cfg_qkv_dim(c); break;
    case LORA_O: *role = PROLE_O_W, *rows = C; break;
    case LORA_GATE: *role = PROLE_FC_W, *rows = ff; break;
    case LORA_UP: *role = PROLE_FC_W, *row0 = ff, *rows = ff; break;
    case LORA_FC: *role = PROLE_FC_W, *rows = cfg_fc_dim(c); break;
    case LORA_EXP_FC: *role = PROLE_EXP_FC_W, *rows = 2 * c->moe_d_ff; break;
    case LORA_EXP_W1: *role = PROLE_EXP_FC_W, *rows = c->moe_d_ff; break;
    case LORA_EXP_W3: *role = PROLE_EXP_FC_W, *row0 = c->moe_d_ff, *rows = c->moe_d_ff; break;
    case LORA_EXP_PROJ: case LORA_EXP_W2: *role = PROLE_EXP_PROJ_W, *rows = C; break;
    case LORA_SH_GATE: *role = PROLE_SH_FC_W, *rows = c->moe_shared_d_ff; break;
    case LORA_SH_UP: *role = PROLE_SH_FC_W, *row0 = c->moe_shared_d_ff, *rows = c->moe_shared_d_ff; break;
    case LORA_SH_DOWN: *role = PROLE_SH_PROJ_W, *rows = C; break;
    case LORA_SH_ROUTE: *role = PROLE_SH_GATE_W, *rows = 1; break;
    case LORA_ROUTER: *role = PROLE_ROUTER_W, *rows = c->moe_experts; break;
    default: *role = PROLE_PROJ_W, *rows = C; break;
    }
}

int lora_site_is_mlp(LoraSite s) { return s == LORA_GATE || s == LORA_UP || s == LORA_FC || s == LORA_DOWN; }

int lora_sites_moe(const ModelConfig *c, unsigned *sites, int from_all_linear)
{
    unsigned present = lora_sites_present(c);
    unsigned missing = *sites & ~present & (from_all_linear ? 0u : ~0u);
    if (missing & T5_EXPERTS)
        return err_set("experts (mlp.experts.gate_up_proj, mlp.experts.down_proj): the model has no routed experts");
    if (missing & T4_EXPERTS)
        return err_set("w1/w3/w2 (block_sparse_moe.experts.N): the model has no routed experts");
    if ((*sites & T4_EXPERTS) && (c->moe_shared_d_ff > 0 || strstr(c->hf_arch, "Qwen")))
        return err_set("w1/w3/w2 are Mixtral's per-expert modules (transformers 4); this model's experts are "
                       "adapted as experts.gate_up_proj / experts.down_proj (docs/moe.md)");
    if (missing & BIT(LORA_SH_ROUTE)) return err_set("shared_expert_gate: the model has no shared expert");
    if (missing & BIT(LORA_ROUTER)) return err_set("gate (the router): the model has no mixture-of-experts layer");
    for (size_t k = 0; k < ARRAY_LEN(names); k++) /* each module name must adapt something here */
        if (names[k].family == c->family && !names[k].param && (missing & names[k].sites) == names[k].sites)
            return err_set("%s: the model has no such module (%s)", names[k].name,
                           cfg_moe_layers(c) ? "mixture-of-experts layers: docs/moe.md" : "no experts");
    *sites &= present;
    if (!*sites) return err_set("no target module in the model");
    if (from_all_linear && (present & T5_EXPERTS))
        fprintf(stderr, "anvil: note: lora.targets all-linear adapts the model's nn.Linear modules, not the routed "
                        "experts and the router (parameters to PEFT): add experts and gate to lora.targets for "
                        "them (docs/moe.md)\n");
    return 0;
}
