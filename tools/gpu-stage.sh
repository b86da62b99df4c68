#!/usr/bin/env bash
# gpu-stage.sh - build here, then copy the tree, the binaries, the C libraries a bare GPU machine
# may lack (OpenBLAS, jansson, libyaml, PCRE2, cairo, protobuf-c, ISA-L and their runtime deps) and
# the GPT-2 token sample into
# a folder that the device tool carries (default: <main checkout>/.stage, git-ignored there).
# Then, on the device:  cd .stage && bash tools/gpu-check.sh   (which unpacks payload.tgz)
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
dst=${1:-/work/main/.stage}
cd "$src"
make -j2 >/dev/null
make -j2 build/tests/test_cuda build/tests/test_cuda_kv build/tests/bench_attention build/tests/bench_ternary >/dev/null
rm -rf "$dst"
mkdir -p "$dst"
# not needed there (the GPT-2 vocabulary is embedded in the binary),
# and the device tool carries at most 64 MiB with the checkout
tar --exclude=./build --exclude=./build-asan --exclude=./.git --exclude=./runs --exclude=./data \
    --exclude=./gpu-check-out --exclude=./gpu-ab-out --exclude=./gpu-attn-out --exclude=./assets \
    --exclude=./.stage --exclude=./build-fuzz -cf - . | tar -C "$dst" -xf -
mkdir -p "$dst/build/tests" "$dst/lib" "$dst/tests/data"
cp build/tests/test_cuda build/tests/test_cuda_kv build/tests/bench_attention build/tests/bench_ternary "$dst/build/tests/"
strip -g "$dst/anvil" "$dst/build/tests/"* # host debug info only
# FUZZ="fuzz_shard ...": those libFuzzer harnesses of build-fuzz/ (make fuzz) too, for tools/fuzz.sh there
fuzz_bins=""
for h in ${FUZZ:-}; do fuzz_bins="$fuzz_bins build-fuzz/fuzz/$h"; done
if [ -n "$fuzz_bins" ]; then
    mkdir -p "$dst/build-fuzz/fuzz"
    cp $fuzz_bins "$dst/build-fuzz/fuzz/"
    strip -g "$dst/build-fuzz/fuzz/"*
fi
# every shared library the binaries load from Debian's /lib (and clang's OpenMP runtime, for the harnesses), but glibc's own, the C++ runtime and
# CUDA's (gpu-env.sh drops the ones the GPU machine has itself)
for lib in $(ldd anvil build/tests/test_cuda $fuzz_bins | awk '$3 ~ /^\/lib\/x86_64-linux-gnu\/|^\/usr\/lib\/llvm-[0-9]*\/lib\// {print $3}' |
    sort -u); do
    case "$(basename "$lib")" in
    libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libstdc++.so.* | libgcc_s.so.* | \
        ld-linux*) ;;
    *) cp -L "$lib" "$dst/lib/" ;;
    esac
done
# OLD_ANVIL=path: an earlier build of anvil (same libraries), for the `ab` section of gpu-check.sh
if [ -n "${OLD_ANVIL:-}" ]; then
    mkdir -p "$dst/old"
    cp "$OLD_ANVIL" "$dst/old/anvil"
    strip -g "$dst/old/anvil"
fi
# (.whl/, git-ignored, travels with the tree: wheels the GPU machine lacks, e.g. bitsandbytes for
# tools/peft_baseline.py)
sample=../shared/data/gpt2/sample.gpt2.u32
[ -f "$sample" ] && cp "$sample" "$dst/tests/data/"
# the binaries and libraries travel gzipped (a third of the size; the device tool carries at most
# 64 MiB with the checkout); gpu-check.sh and gpu-ab.sh unpack payload.tgz first
tar czf "$dst/payload.tgz" -C "$dst" anvil build lib $([ -d "$dst/old" ] && echo old) \
    $([ -d "$dst/build-fuzz" ] && echo build-fuzz)
rm -rf "$dst/anvil" "$dst/build" "$dst/lib" "$dst/old" "$dst/build-fuzz"
du -sh "$dst"
