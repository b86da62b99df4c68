# gpu-env.sh - sourced by tools/gpu-*.sh on the GPU machine: library paths for the staged binaries.
#   1. lib/ (the C libraries tools/gpu-stage.sh carries);
#   2. CUDA libraries the binaries do not resolve, from the toolkit or PyTorch's wheels;
#   3. cuDNN (opened at run time by the attention, src/backend/cuda/cuda_cudnn.cu): the system's, or
#      the one PyTorch's wheel nvidia-cudnn installs. ANVIL_NO_CUDNN=1 leaves it out.
# a carried library the machine has itself is dropped: the system's copy serves both the binaries
# and Python (an older carried libexpat or libz ahead of the system's would break Python's modules)
for f in lib/*.so*; do
    [ -f "$f" ] || continue
    ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$(basename "$f") " && mv "$f" "$f.system-has-it"
done
export LD_LIBRARY_PATH="$(pwd)/lib:${LD_LIBRARY_PATH:-}"
for bin in ${ANVIL:-./anvil} ${TEST_CUDA:-build/tests/test_cuda}; do
    [ -x "$bin" ] || continue
    for lib in $(ldd "$bin" | awk '/not found/{print $1}'); do
        hit=$(find /usr/local /opt /usr/lib -name "$lib" 2>/dev/null | head -1)
        [ -n "$hit" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$hit")"
    done
done
if [ "${ANVIL_NO_CUDNN:-0}" != 1 ] && ! ldconfig -p 2>/dev/null | grep -q "libcudnn.so.9 "; then
    hit=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null)
    [ -f "$hit/libcudnn.so.9" ] || hit=$(dirname "$(find / -name libcudnn.so.9 -not -path '/proc/*' 2>/dev/null | head -1)" 2>/dev/null)
    [ -f "$hit/libcudnn.so.9" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$hit"
fi
