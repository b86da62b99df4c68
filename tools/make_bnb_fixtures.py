#!/usr/bin/env python3
"""make_bnb_fixtures.py - bitsandbytes 4-bit reference fixtures for anvil's tests.

Writes, under tests/fixtures/bnb/ (or --out):

  quant.safetensors   for each case C (a flat tensor; see CASES):
      C.input                   the tensor quantized (F32 or BF16, as bitsandbytes was given it)
      C.T.packed  C.T.absmax    quantize_4bit(C.input, quant_type=T, blocksize=64,
                                compress_statistics=False): the packed nibbles (U8) and fp32 absmax
      C.T.dequant               dequantize_4bit of that, output in the input's dtype
      C.T.dequant_bf16          the same with the state's dtype set to bfloat16 (fp32 inputs only)
      C.dq.qabsmax              compress_statistics=True: the 8-bit codes of absmax - offset (U8)
      C.dq.nested_absmax        ... the fp32 absmax of those 256-blocks
      C.dq.offset               ... the offset (fp32, the mean of the absmax)
      C.dq.qabsmax_default      the 8-bit codes bitsandbytes' *default* (torch) backend gives for the
      C.dq.nested_absmax_default   same absmax - offset (the CPU build's native kernel rounds through a
                                65536-entry table; the default backend rounds to the nearest code)
      C.nf4.dq.dequant          dequantize_4bit with the double-quantized state (input dtype)
    for T in nf4, fp4, where T is in the case's list. Also quant_map.nf4, quant_map.fp4,
    nested_quant_map (the dynamic map), quant_state.C (the JSON blob that
    QuantState.as_dict(packed=True) stores, for a few cases), and repr.values / repr.text
    (fp32 values and Python's repr of each, newline-separated: how json.dumps writes them).
  llama_nf4/          transformers' save_pretrained of tests/fixtures/llama/model loaded in bf16 and
                      quantized by bitsandbytes (nf4, double quant, compute dtype bf16), on the CPU
  gpt2_fp4/           the same for tests/fixtures/gpt2/model with fp4, no double quant (Conv1D
                      weights are transposed to (out, in) by transformers before quantizing)
  */reference.safetensors   input_ids, targets, logits, loss of that 4-bit model in transformers
                      with compute dtype float32 (so that anvil's fp32 CPU forward can be compared)
  mixtral_nf4/        the same for tests/fixtures/moe/mixtral/model (nf4, double quant): transformers 5
                      quantizes the attention only and saves the experts and the router plain (bf16)
  mixtral_nf4_experts/  mixtral_nf4 with every expert's w1/w2/w3 stored 4-bit as well (bitsandbytes'
                      quantize_4bit of the bf16 values, nf4, double quant, the companion tensors of
                      QuantState.as_dict(packed=True)): the layout of the Mixtral *-bnb-4bit checkpoints
                      saved by transformers 4, whose experts were Linear4bit modules; its reference has
                      the experts dequantized (code * absmax, fp32)

All of this runs on the CPU, where bitsandbytes (>= 0.48) quantizes 4-bit with its torch
"default" backend and blockwise 8-bit with libbitsandbytes_cpu. With --gpu-dir OUT it also
writes OUT/quant_cuda.safetensors: the same cases quantized by the CUDA kernels (needs a GPU),
named like quant.safetensors, and OUT/llama_nf4_cuda (transformers quantizing the llama
fixture on the GPU), so that tests/test_quant4.c can check anvil against the kernel that made
the *-bnb-4bit checkpoints people download:
    python3 tools/make_bnb_fixtures.py --gpu-dir /tmp/bnb_cuda     # on a GPU machine
    cp -r /tmp/bnb_cuda/quant_cuda.safetensors /tmp/bnb_cuda/llama_nf4_cuda tests/fixtures/bnb/

Deterministic: reruns with the same library versions write the same bytes.
Run from the repository root: python3 tools/make_bnb_fixtures.py
"""
import argparse
import json
import os
import shutil
import struct
import sys

import torch

SEED = 4321
BLOCKSIZE = 64
B, T = 2, 16
IGNORED = [(0, 3), (1, 15)]

# The NF4 thresholds of the CUDA kernel (dQuantizeNF4) and the FP4 ones (dQuantizeFP4) as the
# kernel writes them; the special case puts values exactly on them.
NF4_CUDA_THRESHOLDS = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                       -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
                       0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                       0.5016634166240692, 0.6427869200706482, 0.8614784181118011]
FP4_CUDA_THRESHOLDS = [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333]


def special_case():
    """Blocks of 64 that exercise the corners: an all-zero block, values exactly on every
    threshold and every code (absmax 1 and 2, so the scaled values are exact), huge and
    tiny magnitudes, one nonzero value, signed zeros, and a last partial block of zeros."""
    f = torch.float32
    blocks = []
    blocks.append(torch.zeros(64))
    # absmax 1: thresholds (both kernels' FP4 ones), codes, and the values one ulp either side
    nf4 = torch.tensor(NF4_CUDA_THRESHOLDS, dtype=f)
    fp4_cuda = torch.tensor(FP4_CUDA_THRESHOLDS, dtype=f)
    fp4_code = torch.tensor([0, 0.0625, 2, 3, 4, 6, 8, 12], dtype=f) / 12
    fp4_mid = (fp4_code[:-1] + fp4_code[1:]) / 2
    nf4_code = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                             0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                             0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=f)
    b = torch.cat([torch.tensor([1.0]), nf4, torch.nextafter(nf4, torch.full_like(nf4, 2)),
                   torch.nextafter(nf4, torch.full_like(nf4, -2))])
    blocks.append(torch.cat([b, torch.zeros(64 - b.numel())]))
    b = torch.cat([torch.tensor([1.0]), fp4_cuda, fp4_mid, -fp4_mid, -fp4_cuda, torch.tensor([-0.0, 0.0]), nf4_code])
    blocks.append(torch.cat([b, torch.zeros(64 - b.numel())]))
    b = torch.cat([torch.tensor([-2.0]), 2 * nf4, 2 * fp4_mid, -2 * fp4_cuda])
    blocks.append(torch.cat([b, torch.full((64 - b.numel(),), 0.25)])[:64])
    g = torch.Generator().manual_seed(SEED + 1)
    blocks.append(torch.randn(64, generator=g) * 1e30)
    blocks.append(torch.cat([torch.tensor([3e38]), torch.randn(63, generator=g) * 1e37]))
    blocks.append(torch.randn(64, generator=g) * 1e-30)
    blocks.append(torch.randn(64, generator=g) * 1e-39)  # subnormal fp32
    one = torch.zeros(64)
    one[17] = -0.75
    blocks.append(one)
    blocks.append(torch.tensor([-0.0, 0.0] * 31 + [1e-3, -1e-3]))
    blocks.append(torch.randn(64, generator=g))
    blocks.append(torch.zeros(7))
    return torch.cat(blocks)


def cases():
    """(name, input tensor, quant types)."""
    g = torch.Generator().manual_seed(SEED)
    out = [
        ("n64", torch.randn(64, generator=g), ("nf4", "fp4")),
        ("n4096", torch.randn(4096, generator=g) * 0.02, ("nf4", "fp4")),
        ("n4096_bf16", (torch.randn(4096, generator=g) * 0.02).to(torch.bfloat16), ("nf4", "fp4")),
        ("n1000", torch.randn(1000, generator=g), ("nf4", "fp4")),
        ("n197", torch.randn(197, generator=g) * 3, ("nf4", "fp4")),
        ("n197_bf16", (torch.randn(197, generator=g) * 3).to(torch.bfloat16), ("nf4", "fp4")),
        ("n65553_bf16", (torch.randn(65553, generator=g) * 0.05).to(torch.bfloat16), ("nf4", "fp4")),
        ("special", special_case(), ("nf4", "fp4")),
        ("special_bf16", special_case().to(torch.bfloat16), ("nf4", "fp4")),
    ]
    return out


def quantize_default_8bit(a, code, blocksize):
    """bitsandbytes' default (torch) backend of quantize_blockwise, called through the dispatcher
    below the CPU kernel."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(keys, a, code, blocksize)


def quant_tensors(device, small):
    import bitsandbytes.functional as F
    t = {}
    blobs = {}
    for name, x, types in cases():
        x = x.to(device)
        t[f"{name}.input"] = x
        big = x.numel() > 10000
        for qt in types:
            p, s = F.quantize_4bit(x, blocksize=BLOCKSIZE, quant_type=qt, compress_statistics=False)
            t[f"{name}.{qt}.packed"] = p.reshape(-1)
            t[f"{name}.{qt}.absmax"] = s.absmax
            if big:  # dequantization is checked on the smaller cases; keep the folder small
                continue
            t[f"{name}.{qt}.dequant"] = F.dequantize_4bit(p, s)
            if x.dtype == torch.float32:
                s.dtype = torch.bfloat16
                t[f"{name}.{qt}.dequant_bf16"] = F.dequantize_4bit(p, s)
            t[f"quant_map.{qt}"] = s.code
        p, s = F.quantize_4bit(x, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=True)
        assert torch.equal(p.reshape(-1), t[f"{name}.nf4.packed"]), "double quant changed the nibbles"
        t[f"{name}.dq.qabsmax"] = s.absmax
        t[f"{name}.dq.nested_absmax"] = s.state2.absmax
        t[f"{name}.dq.offset"] = s.offset.reshape(1)
        t["nested_quant_map"] = s.state2.code
        if not big:
            t[f"{name}.nf4.dq.dequant"] = F.dequantize_4bit(p, s)
        if device == "cpu":
            absmax = t[f"{name}.nf4.absmax"]
            q8, a8 = quantize_default_8bit(absmax - s.offset, s.state2.code, 256)
            t[f"{name}.dq.qabsmax_default"] = q8
            t[f"{name}.dq.nested_absmax_default"] = a8
        if name in small:
            d = s.as_dict(packed=True)
            blobs[f"quant_state.{name}"] = d["quant_state.bitsandbytes__nf4"]
    t.update(blobs)
    if device == "cpu":  # Python's float repr (json.dumps writes nested_offset with it), for fp32 values
        vals = torch.tensor([1e-5, 1.5e-5, 1e-4, 1.2345e-4, 0.001, 0.1, 0.5, 2.431144952774048, 7.0, 1234.5,
                             100000.0, 16777216.0, 1e16, 1.2e17, 3.4028235e38, 1.1754944e-38, 1e-45, 0.0, -0.0,
                             -0.02364712581038475, -3.5e-7, 123456789.0, 9.999999747378752e-05], dtype=torch.float32)
        t["repr.values"] = vals
        t["repr.text"] = torch.tensor(list("\n".join(repr(v) for v in vals.tolist()).encode()), dtype=torch.uint8)
    return {k: v.detach().to("cpu").contiguous() for k, v in t.items()}


def save(tensors, path, meta):
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(dict(sorted(tensors.items())), path, metadata=meta)
    canonical_metadata(path)


def canonical_metadata(path):
    """Sort __metadata__ (the library writes it in hash order) so that reruns are identical."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (n - len(text))
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n:])


def versions():
    import bitsandbytes
    import transformers
    return {"torch": torch.__version__, "bitsandbytes": bitsandbytes.__version__,
            "transformers": transformers.__version__}


def make_model(out, src, name, quant_type, double_quant, device="cpu", reference=True):
    """transformers quantizes a fixture model (loaded in bf16) on `device` and saves it as out/name."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                            bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch.bfloat16)
    m = AutoModelForCausalLM.from_pretrained(src, quantization_config=qc, dtype=torch.bfloat16, device_map=device)
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(d)
    canonical_metadata(os.path.join(d, "model.safetensors"))
    if not reference:
        return
    # reference: the saved directory loaded back in transformers, every Linear4bit computing
    # x @ W.T in fp32 with W = dequantize_4bit(weight) in fp32 (code * absmax), which is what
    # bitsandbytes' gemm_4bit does without gradients at compute dtype float32 (its default
    # implementation: dequantize, then linear). The CPU build's own gemm path is not used: in
    # 0.50.2 its AVX-512 dequantization indexes absmax per row and is wrong when in_features
    # is not a multiple of the block size (down_proj here, 96), and the AVX-512-bf16 repacking
    # refuses those shapes. dequantize_4bit of the flat tensor (one row) is exact; see
    # tests/test_quant4.c. (A quantization_config passed here would be ignored for a saved
    # 4-bit model, so this is done by hand.)
    m = load_fp32(d)
    write_reference(m, d, f"logits/loss of {name} in transformers + bitsandbytes, compute dtype float32, CPU")


def load_fp32(d):
    """The saved 4-bit directory d in transformers, every Linear4bit computing x @ W.T in fp32 with
    W = dequantize_4bit(weight) in fp32, the plain bf16 tensors in fp32 (make_model says why)."""
    import copy
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, device_map="cpu")
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            qs = copy.copy(mod.weight.quant_state)
            qs.shape, qs.dtype = torch.Size([qs.shape.numel()]), torch.float32
            w = F.dequantize_4bit(mod.weight.data, qs).reshape(mod.out_features, mod.in_features)
            bias = None if mod.bias is None else mod.bias.float()
            mod.forward = (lambda w, b: lambda x: torch.nn.functional.linear(x.float(), w, b))(w, bias)
    for p in m.parameters():  # the bf16 tensors that stay unquantized (norms, embeddings) in fp32
        if not isinstance(p, bnb.nn.Params4bit) and p.dtype == torch.bfloat16:
            p.data = p.data.float()
    return m


def write_reference(m, d, what):
    """d/reference.safetensors: input_ids, targets, logits and loss of model m on the fixed batch."""
    g = torch.Generator().manual_seed(SEED)
    V = m.config.vocab_size
    ids = torch.randint(0, V, (B, T + 1), generator=g)
    inp, tgt = ids[:, :-1].clone(), ids[:, 1:].clone()
    for r, c in IGNORED:
        tgt[r, c] = -100
    with torch.no_grad():
        logits = m(inp).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    ref = {"input_ids": inp.to(torch.int32), "targets": tgt.to(torch.int32), "logits": logits.contiguous(),
           "loss": loss.reshape(1)}
    meta = versions()
    meta["what"] = what
    save(ref, os.path.join(d, "reference.safetensors"), meta)


def make_moe_experts(out, name, src_name):
    """out/name: out/src_name with each expert weight (experts.N.w1/w2/w3, bf16) replaced by its
    4-bit form, and a reference computed with those experts dequantized in fp32."""
    import bitsandbytes.functional as F
    from safetensors.torch import load_file
    src, d = os.path.join(out, src_name), os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d)
    os.remove(os.path.join(d, "reference.safetensors"))
    t = load_file(os.path.join(src, "model.safetensors"))
    deq = {}
    for k in sorted(t):
        if ".experts." not in k or not k.endswith(".weight"):
            continue
        w = t.pop(k)
        p, s = F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=True,
                               quant_storage=torch.uint8)
        t[k] = p
        for sk, sv in s.as_dict(packed=True).items():
            t[f"{k}.{sk}"] = sv
        qs = s
        qs.dtype = torch.float32
        deq[k] = F.dequantize_4bit(p, qs).reshape(w.shape).float()
    meta = {"format": "pt"}
    save(t, os.path.join(d, "model.safetensors"), meta)
    # the reference: transformers' model of src (fp32 compute, make_model's way), its experts' weights
    # set to the dequantized values (transformers 5 keeps them fused: gate_up_proj (E, 2F, C) holds
    # [w1; w3] per expert, down_proj (E, C, F) holds w2)
    m = load_fp32(src)
    for l, layer in enumerate(m.model.layers):
        ex = layer.mlp.experts
        for e in range(ex.gate_up_proj.shape[0]):
            pre = f"model.layers.{l}.block_sparse_moe.experts.{e}."
            with torch.no_grad():
                ex.gate_up_proj[e].copy_(torch.cat([deq[pre + "w1.weight"], deq[pre + "w3.weight"]], 0))
                ex.down_proj[e].copy_(deq[pre + "w2.weight"])
    write_reference(m, d, f"logits/loss of {name}: {src_name}'s model with its experts dequantized from 4-bit, fp32, CPU")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/bnb")
    ap.add_argument("--llama", default="tests/fixtures/llama/model")
    ap.add_argument("--gpt2", default="tests/fixtures/gpt2/model")
    ap.add_argument("--mixtral", default="tests/fixtures/moe/mixtral/model")
    ap.add_argument("--gpu-dir", help="also write OUT/quant_cuda.safetensors from the CUDA kernels")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    small = ("n197", "n197_bf16", "n1000")
    meta = versions()
    if args.gpu_dir:
        if not torch.cuda.is_available():
            sys.exit("make_bnb_fixtures.py: --gpu-dir needs a CUDA device")
        meta["device"] = torch.cuda.get_device_name()
        save(quant_tensors("cuda", small), os.path.join(args.gpu_dir, "quant_cuda.safetensors"), meta)
        make_model(args.gpu_dir, args.llama, "llama_nf4_cuda", "nf4", True, device="cuda", reference=False)
        print(f"wrote {args.gpu_dir}/quant_cuda.safetensors and {args.gpu_dir}/llama_nf4_cuda")
        return
    meta["device"] = "cpu"
    save(quant_tensors("cpu", small), os.path.join(args.out, "quant.safetensors"), meta)
    make_model(args.out, args.llama, "llama_nf4", "nf4", True)
    make_model(args.out, args.gpt2, "gpt2_fp4", "fp4", False)
    make_model(args.out, args.mixtral, "mixtral_nf4", "nf4", True)
    make_moe_experts(args.out, "mixtral_nf4_experts", "mixtral_nf4")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
