#!/usr/bin/env bash
# gpu-stage.sh - build here, then copy the tree, the binaries, the C libraries a bare GPU machine
# lacks (OpenBLAS, jansson, libyaml, PCRE2 and their runtime deps) and the GPT-2 token sample into
# a folder that the device tool carries (default: <main checkout>/.stage, git-ignored there).
# Then, on the device:  cd .stage && bash tools/gpu-check.sh   (which unpacks payload.tgz)
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
dst=${1:-/work/main/.stage}
cd "$src"
make -j2 >/dev/null
make -j2 build/tests/test_cuda build/tests/test_cuda_kv build/tests/bench_attention >/dev/null
rm -rf "$dst"
mkdir -p "$dst"
# not needed there (the GPT-2 vocabulary is embedded in the binary),
# and the device tool carries at most 64 MiB with the checkout
tar --exclude=./build --exclude=./build-asan --exclude=./.git --exclude=./runs --exclude=./data \
    --exclude=./gpu-check-out --exclude=./gpu-ab-out --exclude=./gpu-attn-out --exclude=./assets \
    --exclude=./.stage -cf - . | tar -C "$dst" -xf -
mkdir -p "$dst/build/tests" "$dst/lib" "$dst/tests/data"
cp build/tests/test_cuda build/tests/test_cuda_kv build/tests/bench_attention "$dst/build/tests/"
strip -g "$dst/anvil" "$dst/build/tests/"* # host debug info only
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libjansson.so.4 libyaml-0.so.2 libpcre2-8.so.0 \
    libgomp.so.1 libutf8proc.so.2; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$dst/lib/"
done
sample=../shared/data/gpt2/sample.gpt2.u32
[ -f "$sample" ] && cp "$sample" "$dst/tests/data/"
# the binaries and libraries travel gzipped (a third of the size; the device tool carries at most
# 64 MiB with the checkout); gpu-check.sh and gpu-ab.sh unpack payload.tgz first
tar czf "$dst/payload.tgz" -C "$dst" anvil build lib
rm -rf "$dst/anvil" "$dst/build" "$dst/lib"
du -sh "$dst"
