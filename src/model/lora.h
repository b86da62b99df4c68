/* lora.h - low-rank adapters (LoRA, Hu et al. 2021) as PEFT defines them.
 *
 * An adapter on a linear layer adds   out += scale * B (A dropout(x)),  A (r, in), B (out, r),
 * scale = alpha / r (or alpha / sqrt(r) with rsLoRA). The sites are the Hugging Face modules a
 * user names in lora.targets:
 *   llama family: q_proj k_proj v_proj (rows of our fused qkv.w), o_proj, gate_proj up_proj (rows of
 *                 our fused fc.w [gate | up]), down_proj;
 *   gpt2:         c_attn (all of qkv.w), c_proj (both attn.c_proj and mlp.c_proj, as PEFT matches
 *                 module names by suffix), c_fc;
 *   all-linear:   every linear layer of the blocks (PEFT's "all-linear" leaves out the output head).
 * On a mixture-of-experts model (llama family, docs/moe.md) also, following transformers 5's module tree:
 *   experts.gate_up_proj, experts.down_proj (or mlp.experts.*; "experts" for both): the routed experts'
 *                 fused 3-D parameters (E, 2F, C) and (E, C, F), which PEFT adapts through
 *                 target_parameters: one adapter per expert, on all of our exp.e.fc.w [gate | up] and
 *                 exp.e.proj.w;
 *   gate_proj, up_proj, down_proj: the dense layers' MLP and the shared expert's (mlp.shared_expert.*),
 *                 as PEFT matches module names by suffix; shared_expert_gate: the shared expert's gate (1, C);
 *   w1, w3, w2:   the same experts in transformers 4's module tree (block_sparse_moe.experts.N.w1 / w3 /
 *                 w2, nn.Linear modules: Mixtral adapters made before transformers 5): an adapter per
 *                 expert on the gate rows, the up rows (separate A's, as gate_proj/up_proj on our fused
 *                 fc.w) and on exp.e.proj.w; in the file under transformers 4's names, and the router's
 *                 under block_sparse_moe.gate (lora_t4_layout). Not combinable with the fused layout.
 *   gate (or mlp.gate, gate.weight, mlp.gate.weight, router): the router (E, C), which PEFT adapts
 *                 through target_parameters ("mlp.gate.weight": transformers 5's router is not an
 *                 nn.Linear), an ordinary adapter on its logits;
 *   all-linear:   the nn.Linear modules only (attention, dense MLPs, shared expert and its gate), not the
 *                 routed experts and the router (parameters, not modules: name them).
 * Adapters are trainable tensors of the parameter store (params.h), named h.L.lora.<site>.A/B,
 * placed after their block's own tensors so the trainable segment stays layer-major; the base
 * tensors are frozen. PEFT initialises A Kaiming-uniform (a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)))
 * and B to zero, so a new adapter starts as the identity.
 */
#ifndef ANVIL_MODEL_LORA_H
#define ANVIL_MODEL_LORA_H

#include <stddef.h>

#include "model/config.h"

typedef enum {
    LORA_Q, LORA_K, LORA_V, /* llama: rows of qkv.w */
    LORA_QKV,               /* gpt2 c_attn: all of qkv.w */
    LORA_O,                 /* o_proj / attn.c_proj */
    LORA_GATE, LORA_UP,     /* llama: rows of fc.w */
    LORA_FC,                /* gpt2 c_fc: all of fc.w */
    LORA_DOWN,              /* down_proj / mlp.c_proj */
    LORA_EXP_FC,            /* routed experts' gate_up_proj: all of exp.e.fc.w, an adapter per expert */
    LORA_EXP_W1, LORA_EXP_W3, /* transformers 4's per-expert w1 / w3: rows of exp.e.fc.w [gate | up] */
    LORA_EXP_PROJ,          /* routed experts' down_proj: exp.e.proj.w, an adapter per expert */
    LORA_EXP_W2,            /* transformers 4's per-expert w2: exp.e.proj.w, an adapter per expert */
    LORA_SH_GATE, LORA_SH_UP, /* the shared expert's gate_proj / up_proj: rows of shared.fc.w */
    LORA_SH_DOWN,           /* the shared expert's down_proj: shared.proj.w */
    LORA_SH_ROUTE,          /* shared_expert_gate: shared.gate.w (1, C) */
    LORA_ROUTER,            /* the router (mlp.gate.weight, a parameter to PEFT): router.w (E, C) */
    LORA_SITE_COUNT
} LoraSite;

typedef struct LoraSpec {
    int r;          /* rank (0 = no adapters) */
    float alpha;    /* scale = alpha / r, or alpha / sqrt(r) with rslora */
    int rslora;
    float dropout;  /* on the adapter's input, training only */
    unsigned sites; /* bit (1u << LoraSite) per adapted site */
} LoraSpec;

/* scale of the adapters' product */
float lora_scale(const LoraSpec *s);
/* The site bits of PEFT target_modules names ("q_proj", "c_attn", ..., or "all-linear") for a
 * family; -1 with err_set() naming a name the family has no module for. */
int lora_sites_parse(const char *const *names, int n, Family f, unsigned *sites);
/* The PEFT target_modules names of a set of sites of model c, comma-separated into buf (the names whose
 * sites in c are all in the set; routed-expert sites are target_parameters: lora_sites_params). */
void lora_sites_names(unsigned sites, const ModelConfig *c, char *buf, size_t n);
/* The PEFT target_parameters names of the routed-expert sites of a set ("mlp.experts.gate_up_proj", ...). */
void lora_sites_params(unsigned sites, char *buf, size_t n);
/* The site's short name ("q", "qkv", "down", ...) used in internal tensor names. */
const char *lora_site_short(LoraSite s);
/* The Hugging Face module path of a site in layer l ("model.layers.3.self_attn.q_proj"); expert: the
 * routed expert of a per-expert module (w1/w3/w2: "model.layers.3.block_sparse_moe.experts.5.w1"), else
 * ignored; t4: the MoE layer's modules under transformers 4's names (lora_t4_layout). */
void lora_module_path(const ModelConfig *c, int l, LoraSite s, int expert, int t4, char *buf, size_t n);
/* Whether the site exists in a family (q/k/v/gate/up only in llama, qkv/fc only in gpt2). */
int lora_site_in_family(LoraSite s, Family f);
/* Whether a site sits on the dense MLP (gate_proj, up_proj, down_proj, c_fc). */
int lora_site_is_mlp(LoraSite s);
/* Whether a site is a routed expert's (an adapter per expert, exp.e.fc.w or exp.e.proj.w). */
int lora_site_is_expert(LoraSite s);
/* Whether a set of sites adapts the experts in transformers 4's per-expert module layout (w1/w3/w2): the
 * adapter directory then names the MoE layers' modules as transformers 4 does (block_sparse_moe.*). */
int lora_t4_layout(unsigned sites);
/* Whether PEFT adapts the site as a parameter (target_parameters), not as a module: transformers 5's
 * fused routed experts and the router, which every MoE layer has (transformers 4's w1/w3/w2 are
 * modules). */
int lora_site_is_param(LoraSite s);
/* Whether layer l of c has the site's weight (dense MLP sites in dense layers, expert and shared-expert
 * sites in MoE layers, the shared ones with a shared expert). */
int lora_site_in_layer(const ModelConfig *c, int l, LoraSite s);
/* The sites that some layer of c has. */
unsigned lora_sites_present(const ModelConfig *c);
/* The sites of a model: *sites keeps those some layer has (gate_proj names the dense MLP's and the
 * shared expert's; one of them may be absent). A name given by itself (from_all_linear 0) that adapts
 * nothing in c is an error naming it; from all-linear on a model with routed experts, a note on stderr
 * says they are left out. 0 or -1 with err_set(). */
int lora_sites_moe(const ModelConfig *c, unsigned *sites, int from_all_linear);
/* The input width of the weight a site adapts (A is (r, in)). */
int lora_site_in(const ModelConfig *c, LoraSite s);

/* The rows [*row0, *row0 + *rows) of the fused weight (qkv.w, o.w, fc.w, proj.w, an expert's fc.w or
 * proj.w, the shared expert's) that the site's adapter adds to, and the weight's role (PROLE_QKV_W, ...). */
void lora_site_rows(const ModelConfig *c, LoraSite s, int *role, int *row0, int *rows);

#endif
