#!/usr/bin/env python3
"""Write the crafted inputs of issue 10 items 21-24 (tests/fuzz/regress/<harness>/).

Each is kept as a regression input: tests/test_regress.c checks the error each one gets,
and tools/fuzz.sh adds them to the harness's seed corpus. Deterministic; rerun to refresh.
  fuzz_shard/        .tok shards whose token count wraps count * width (item 21)
  fuzz_hf_model/     config.json, a NUL byte, then model.safetensors (items 22, 23)
  fuzz_trainer_state/ trainer_state.json files (item 24)
"""
import json, os, struct, zlib

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regress")


def write(harness, name, data):
    d = os.path.join(root, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def shard(count, width, vocab):
    h = bytearray(256)
    h[0:8] = b"ANVILTOK"
    struct.pack_into("<IIIIQi", h, 8, 1, 256, width, vocab, count, -1)
    h[40:44] = b"byte"
    struct.pack_into("<I", h, 36, zlib.crc32(bytes(h)) & 0xFFFFFFFF)  # CRC with its field zero
    return bytes(h)


# 256 bytes, valid CRC: 256 + 2^63 * 2 and 256 + 2^62 * 4 wrap to 256
write("fuzz_shard", "count_2p63_width2.tok", shard(1 << 63, 2, 257))
write("fuzz_shard", "count_2p62_width4.tok", shard(1 << 62, 4, 100000))


def safetensors(tensors):
    """tensors: list of (name, shape) of F32 zeros."""
    header, off = {}, 0
    for name, shape in tensors:
        n = 4
        for s in shape:
            n *= s
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(off)


def llama_tensors(C, q, kv, ff, V, layers):
    t = [("model.embed_tokens.weight", (V, C)), ("model.norm.weight", (C,)), ("lm_head.weight", (V, C))]
    for l in range(layers):
        p = "model.layers.%d." % l
        t += [(p + "input_layernorm.weight", (C,)), (p + "post_attention_layernorm.weight", (C,)),
              (p + "self_attn.q_proj.weight", (q, C)), (p + "self_attn.k_proj.weight", (kv, C)),
              (p + "self_attn.v_proj.weight", (kv, C)), (p + "self_attn.o_proj.weight", (C, q)),
              (p + "mlp.gate_proj.weight", (ff, C)), (p + "mlp.up_proj.weight", (ff, C)),
              (p + "mlp.down_proj.weight", (C, ff))]
    return t


def llama_config(**kw):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
         "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 2, "vocab_size": 32, "max_position_embeddings": 64,
         "tie_word_embeddings": False}
    c.update(kw)
    return json.dumps(c, indent=1).encode()


tiny = safetensors(llama_tensors(16, 16, 16, 24, 32, 1))
# (2^28 + 4) heads x head_dim 16 = 2^32 + 64: wraps to 64 in int and matches the tensors (item 22)
wide_q = safetensors(llama_tensors(16, 64, 64, 24, 32, 1))
write("fuzz_hf_model", "heads_wrap_2p28.bin",
      llama_config(num_attention_heads=(1 << 28) + 4, num_key_value_heads=(1 << 28) + 4, head_dim=16)
      + b"\0" + wide_q)
# item 23: sizes that allocated gigabytes (or terabytes) before the shapes were compared
write("fuzz_hf_model", "hidden_1048577.bin", llama_config(hidden_size=1048577) + b"\0" + tiny)
write("fuzz_hf_model", "hidden_1e9.bin", llama_config(hidden_size=10**9) + b"\0" + tiny)
write("fuzz_hf_model", "layers_100000.bin", llama_config(num_hidden_layers=100000) + b"\0" + tiny)
# within the limits, but not what the weights hold: found from the headers alone
write("fuzz_hf_model", "hidden_16384.bin", llama_config(hidden_size=16384, num_attention_heads=128, num_key_value_heads=128)
      + b"\0" + tiny)
write("fuzz_hf_model", "layers_1000.bin", llama_config(num_hidden_layers=1000) + b"\0" + tiny)


def state(step, tokens=0, elapsed="1.5"):
    return ('{"format": "anvil-trainer-state", "version": 1, "step": %s, "tokens_seen": %s, '
            '"elapsed_s": %s, "loader": {"epoch": "0", "pos": "3"}, "config": ""}\n'
            % (step, tokens, elapsed)).encode()


# item 24: steps beyond 32 bits were truncated (2^31 -> -2147483647, 2^32 + 5 -> 5)
write("fuzz_trainer_state", "step_2147483648.json", state(2147483648))
write("fuzz_trainer_state", "step_4294967301.json", state(4294967301))
write("fuzz_trainer_state", "tokens_negative.json", state(10, tokens=-1))
write("fuzz_trainer_state", "elapsed_overflow.json", state(10, elapsed="1e999"))
write("fuzz_trainer_state", "ok.json", state(10, tokens=2560))
# layer 0 and the last layer's norm, nothing between: the headers hold less than 3 layers need
sparse = llama_tensors(16, 16, 16, 24, 32, 1) + [("model.layers.2.input_layernorm.weight", (16,))]
write("fuzz_hf_model", "layers_sparse.bin", llama_config(num_hidden_layers=3) + b"\0" + safetensors(sparse))

# found by fuzz_tokenizer_json (a timeout): ids index flat tables, so one huge id allocated them
# all (tests/fuzz/regress/fuzz_tokenizer_json/timeout_sparse_id_8651440.json is the fuzzer's file)
write("fuzz_tokenizer_json", "id_1e9.json",
      json.dumps({"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {"a": 0, "b": 10**9},
                                                                   "merges": []}}).encode())
