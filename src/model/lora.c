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

static const char *const site_short[LORA_SITE_COUNT] = {"q", "k", "v", "qkv", "o", "gate", "up", "fc", "down"};

const char *lora_site_short(LoraSite s) { return s >= 0 && s < LORA_SITE_COUNT ? site_short[s] : "?"; }

int lora_site_in_family(LoraSite s, Family f)
{
    switch (s) {
    case LORA_Q: case LORA_K: case LORA_V: case LORA_GATE: case LORA_UP: return f == FAMILY_LLAMA;
    case LORA_QKV: case LORA_FC: return f == FAMILY_GPT2;
    case LORA_O: case LORA_DOWN: return 1;
    default: return 0;
    }
}

/* PEFT module names (the last component of the module path) per family. */
typedef struct {
    const char *name;
    Family family;
    unsigned sites;
} LoraName;

#define BIT(s) (1u << (s))
static const LoraName names[] = {
    {"q_proj", FAMILY_LLAMA, BIT(LORA_Q)},
    {"k_proj", FAMILY_LLAMA, BIT(LORA_K)},
    {"v_proj", FAMILY_LLAMA, BIT(LORA_V)},
    {"o_proj", FAMILY_LLAMA, BIT(LORA_O)},
    {"gate_proj", FAMILY_LLAMA, BIT(LORA_GATE)},
    {"up_proj", FAMILY_LLAMA, BIT(LORA_UP)},
    {"down_proj", FAMILY_LLAMA, BIT(LORA_DOWN)},
    {"c_attn", FAMILY_GPT2, BIT(LORA_QKV)},
    {"c_proj", FAMILY_GPT2, BIT(LORA_O) | BIT(LORA_DOWN)},
    {"c_fc", FAMILY_GPT2, BIT(LORA_FC)},
};

int lora_sites_parse(const char *const *list, int n, Family f, unsigned *sites)
{
    *sites = 0;
    for (int i = 0; i < n; i++) {
        const char *t = list[i];
        if (!strcmp(t, "all-linear")) {
            for (int s = 0; s < LORA_SITE_COUNT; s++)
                if (lora_site_in_family((LoraSite)s, f)) *sites |= BIT(s);
            continue;
        }
        unsigned hit = 0;
        for (size_t k = 0; k < ARRAY_LEN(names); k++)
            if (names[k].family == f && !strcmp(names[k].name, t)) hit = names[k].sites;
        if (!hit) {
            char known[256];
            lora_sites_names(~0u, f, known, sizeof(known));
            return err_set("\"%s\" is not a linear module of the %s family (known: %s, all-linear)", t,
                           model_family_name(f), known);
        }
        *sites |= hit;
    }
    if (!*sites) return err_set("no target modules");
    return 0;
}

void lora_sites_names(unsigned sites, Family f, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < ARRAY_LEN(names) && o < n; k++)
        if (names[k].family == f && (names[k].sites & sites) == names[k].sites)
            o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? ", " : "", names[k].name);
}

void lora_module_path(const ModelConfig *c, int l, LoraSite s, char *buf, size_t n)
{
    static const char *const llama[LORA_SITE_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                       NULL, "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                       NULL, "mlp.down_proj"};
    static const char *const gpt2[LORA_SITE_COUNT] = {NULL, NULL, NULL, "attn.c_attn", "attn.c_proj", NULL, NULL,
                                                      "mlp.c_fc", "mlp.c_proj"};
    const char *m = c->family == FAMILY_LLAMA ? llama[s] : gpt2[s];
    if (c->family == FAMILY_LLAMA) snprintf(buf, n, "model.layers.%d.%s", l, m ? m : "?");
    else snprintf(buf, n, "transformer.h.%d.%s", l, m ? m : "?");
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
    default: *role = PROLE_PROJ_W, *rows = C; break;
    }
}

int lora_site_is_mlp(LoraSite s) { return s == LORA_GATE || s == LORA_UP || s == LORA_FC || s == LORA_DOWN; }

int lora_sites_moe(const ModelConfig *c, unsigned *sites, int from_all_linear)
{
    if (!cfg_moe_layers(c)) return 0;
    unsigned mlp = 0;
    for (int s = 0; s < LORA_SITE_COUNT; s++)
        if (lora_site_is_mlp((LoraSite)s)) mlp |= 1u << s;
    if (!(*sites & mlp)) return 0;
    if (!from_all_linear)
        return err_set("gate_proj, up_proj and down_proj: adapters on a mixture-of-experts model's MLP (expert "
                       "projections) are not supported yet; target q_proj, k_proj, v_proj, o_proj (docs/moe.md)");
    fprintf(stderr, "anvil: note: lora.targets all-linear on a mixture-of-experts model: adapters on q_proj, k_proj, "
                    "v_proj and o_proj only (expert projections are not supported yet, docs/moe.md)\n");
    *sites &= ~mlp;
    return 0;
}
