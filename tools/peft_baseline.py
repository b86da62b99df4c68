#!/usr/bin/env python3
"""peft_baseline.py - the peer of `anvil bench --lora R [--quant nf4]`: LoRA / QLoRA fine-tuning
steps with transformers + PEFT (+ bitsandbytes), the way users run them today.

    python3 tools/peft_baseline.py --mode qlora|lora [--ckpt] [--shape llama2-7b] [--batch 4] [--seq 2048]
                                   [--steps 10] [--warmup 3] [--r 16] [--json FILE] [--device cuda]

Model: LlamaForCausalLM at the named shape with random weights (built on the device in bf16);
--mode qlora replaces every linear of the blocks with bitsandbytes' Linear4bit (NF4, double
quantization, bf16 compute: what BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16) loads) and runs PEFT's
prepare_model_for_kbit_training, the QLoRA recipe. LoRA r on q/k/v/o/gate/up/down (alpha 2r,
dropout 0), AdamW (fused) over the adapters, bf16 autocast, --ckpt: gradient checkpointing
(use_reentrant=False). One step = forward with labels (the causal-LM loss), backward, optimizer
step, zero_grad. Tokens are random. Reports the median step after --warmup and
torch.cuda.max_memory_allocated over the timed steps, as a Markdown row (| peft | ...) and JSON.
"""
import argparse
import json
import statistics
import sys
import time

SHAPES = {  # the config.json of each release (the same shapes as anvil's presets)
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=256),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def quantize_linears(model, device, torch, bnb):
    """Every linear of the blocks to Linear4bit (NF4 + double quantization), quantized on device."""
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, mod in list(parent.named_children()):
                if not isinstance(mod, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                      device="meta")
                q.weight = bnb.nn.Params4bit(mod.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4").to(device)
                setattr(parent, name, q)
                del mod
    model.is_loaded_in_4bit = True  # what PEFT's dispatch and prepare_model_for_kbit_training look at


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["qlora", "lora"], required=True)
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    args = ap.parse_args()
    import peft
    import torch
    import transformers
    bnb = None
    if args.mode == "qlora":
        import bitsandbytes as bnb
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cfg = transformers.LlamaConfig(**SHAPES[args.shape], rms_norm_eps=1e-5, torch_dtype=torch.bfloat16)
    with dev:
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    if bnb:
        quantize_linears(model, dev, torch, bnb)
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.ckpt,
                                                     gradient_checkpointing_kwargs={"use_reentrant": False})
    elif args.ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lcfg = peft.LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                           task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=dev.type == "cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=dev, generator=g)
    times = []
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    for s in range(args.warmup + args.steps):
        if s == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[args.warmup:])
    tok_s = args.batch * args.seq / step
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    name = f"{args.mode}{' ckpt' if args.ckpt else ''}"
    print(f"loss {loss.item():.4f}, {n_train / 1e6:.1f}M trainable (transformers {transformers.__version__}, "
          f"peft {peft.__version__}{', bitsandbytes ' + bnb.__version__ if bnb else ''}, torch {torch.__version__})")
    print("| impl | model | mode | B | T | step ms | tokens/s | peak GiB |")
    print(f"| peft | {args.shape} | {name} | {args.batch} | {args.seq} | {step * 1e3:.1f} | {tok_s:.0f} | {peak:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(impl="peft", model=args.shape, mode=name, batch=args.batch, seq=args.seq, step_ms=step * 1e3,
                           tokens_per_s=tok_s, peak_gib=peak, trainable=n_train, final_loss=loss.item()), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
