#!/bin/bash
# Every GPU check in one run, for an offline CUDA machine reached for a few minutes at a time:
#
#   bash .device/gpu.sh bash native/gpu_check.sh        (make device-bundle makes .device/ first)
#
# Results go to $OUT (or /tmp/gpu_check), at most eight files:
#   env.txt         GPU, compilers, Python; each library's DT_NEEDED; C++ locale symbols exported
#                   by libggml-cuda.so
#   doors.txt       llama_cpp.Llama and pyllamaam.load_model (with and without its libstdc++
#                   preload) on the stand-in model; pyllamaam doctor
#   bindings.txt    LD_DEBUG=bindings of the std:: symbols bound across libraries, both front doors
#                   (pyllamaam without its preload); only with GPU_CHECK_BINDINGS=1 or when
#                   pyllamaam does not load
#   load_matrix.txt native/load_matrix.py -ngl 99 (when pyllamaam does not load)
#   pytest_gpu.txt  python -m pytest -m gpu tests/test_gpu.py
#   bench_native.json  decode with the bias path vs the unpatched path, all layers on the GPU, the
#                   regular attention path then flash attention (two JSON objects)
#   bench_cupy.json, bench_numpy.json  pyllamaam bench --device gpu at 1K (CuPy only: its kernels
#                   compile on first use), 4K and 16K tokens, the attention passes of the array
#                   stages on the GPU (arrays=auto) and on the CPU (arrays=numpy)
# Each phase has a time limit, and a phase that would run past DEADLINE seconds is skipped.
set -u
O=${OUT:-/tmp/gpu_check}; mkdir -p "$O"
M=${PYLLAMAAM_DEVICE_MODEL:?the stand-in model (bash .device/gpu.sh sets it)}
# seconds this script may run: DEADLINE, or until DEADLINE_AT (epoch seconds, e.g. set before the build)
DEADLINE=${DEADLINE:-$(( ${DEADLINE_AT:-$(( $(date +%s) + 560 ))} - $(date +%s) ))}
PY=${PYTHON:-python3}
left() { echo $((DEADLINE - SECONDS)); }
phase() { echo "== $(date +%T) +${SECONDS}s $*"; }

phase env
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  nvcc --version 2>&1 | tail -2; g++ --version 2>&1 | head -1
  $PY -c "import sys, numpy, scipy; print(sys.version.split()[0], 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
  L=$($PY -c "import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib'))")
  for f in "$L"/lib*.so; do echo "-- $(basename "$f"): $(readelf -d "$f" | grep NEEDED | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"; done
  echo "-- libstdc++ in use: $(ldconfig -p | grep 'libstdc++.so.6 ' | head -1)"
  echo "-- C++ locale/regex symbols libggml-cuda.so defines (dynamic):"
  nm -DC --defined-only "$L/libggml-cuda.so" | grep -E 'locale|collate|codecvt|ctype<|regex' | head -60
  echo "-- count: $(nm -DC --defined-only "$L/libggml-cuda.so" | grep -cE 'std::')" std:: symbols defined
} > "$O/env.txt" 2>&1
cat "$O/env.txt" | head -20

phase "front doors"
door() {  # door NAME ENV... -- CODE
  local name=$1; shift; local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  local t0=$SECONDS; env "${envs[@]}" timeout 120 $PY -c "$1" > /tmp/door.log 2>&1; local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s $(grep -v '^\s*$' /tmp/door.log | tail -1 | cut -c1-200)"
  return $rc
}
LOAD="import pyllamaam; m = pyllamaam.load_model('$M', n_gpu_layers=99); s = m.session(n_ctx=512);"
LOAD+=" s.prefill('The quick brown fox jumps over the lazy dog. ' * 8); print('ok', m.info['desc']); s.close(); m.close()"
{
  door llama_cpp.Llama X=1 -- "import llama_cpp; l = llama_cpp.Llama('$M', n_gpu_layers=99, verbose=False); print(l.tokenize(b'hello world'))"
  door "pyllamaam without its libstdc++ preload" PYLLAMAAM_PRELOAD_STDCXX=0 -- "$LOAD"
  door pyllamaam X=1 -- "$LOAD"; LOADS=$?
  [ $LOADS = 0 ] && timeout 120 $PY -m pyllamaam doctor 2>&1 | tail -25
} > "$O/doors.txt" 2>&1
cat "$O/doors.txt"

if [ "${GPU_CHECK_BINDINGS:-0}" = 1 ] || ! grep -q "^pyllamaam rc=0" "$O/doors.txt"; then
phase bindings
{
  for d in llama_cpp pyllamaam; do
    if [ $d = llama_cpp ]; then code="import llama_cpp; llama_cpp.Llama('$M', n_gpu_layers=0, verbose=False)"
    else code="import pyllamaam; pyllamaam.load_model('$M', n_gpu_layers=0).close()"; fi
    rm -f /tmp/ldb.*
    PYLLAMAAM_PRELOAD_STDCXX=0 LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/ldb \
      timeout 90 $PY -c "$code" > /dev/null 2>&1
    echo "== $d rc=$?"
    # std:: symbols bound to a copy outside libstdc++, and libllama's locale/regex bindings
    cat /tmp/ldb.* 2>/dev/null | sed -E 's/^ *[0-9]+: *//' | grep -E "symbol \`_ZN?K?S" \
      | grep -vE 'to [^ ]*libstdc\+\+\.so\.6 ' | sed -E 's/binding file ([^ ]*\/)?/from /; s/ to ([^ ]*\/)?/ to /' \
      | awk '$2 != $5' | sort | uniq -c | awk '{print (($0 ~ /cuda|from libstdc/) ? 0 : 1) "\t" $0}' \
      | sort -s -k1,1n | cut -f2- | head -80
    echo "-- libllama's locale/regex bindings:"
    cat /tmp/ldb.* 2>/dev/null | sed -E 's/^ *[0-9]+: *//' | grep 'binding file [^ ]*libllama' \
      | grep -E 'collate|codecvt|locale|_Compiler|regex_traits' | sed -E 's/([^ ]*\/)//g' | sort -u | head -40
  done
} > "$O/bindings.txt" 2>&1
rm -f /tmp/ldb.*
head -c 3000 "$O/bindings.txt"
fi

if grep -q "^pyllamaam rc=0" "$O/doors.txt"; then :; elif [ "$(left)" -gt 200 ]; then
  phase "load matrix"
  timeout 120 $PY native/load_matrix.py "$M" -ngl 99 > "$O/load_matrix.txt" 2>&1
  cat "$O/load_matrix.txt"
fi

if [ $LOADS != 0 ]; then phase "pyllamaam does not load on this build: stopping"; exit 1; fi

phase "pytest -m gpu"
timeout $(( $(left) > 180 ? 180 : $(left) )) $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -W default \
  > "$O/pytest_gpu.txt" 2>&1
echo "pytest rc=$?"; tail -15 "$O/pytest_gpu.txt"

phase "bench native (bias path vs unpatched, decode), regular then flash"
: > "$O/bench_native.json"
for fa in --no-flash-attn --flash-attn; do
  [ "$(left)" -gt 60 ] && timeout 90 $PY -m pyllamaam bench native --model "$M" --n-tokens 4096 -ngl 99 $fa \
    >> "$O/bench_native.json" 2>&1
done
grep -E '"(flash_attn|decode_ratio|decode_ratio_paired|decode_tps)"' "$O/bench_native.json"

bench() {  # bench NAME SIZES NEED_SECONDS OPTS...
  local name=$1 sizes=$2 need=$3; shift 3
  if [ "$(left)" -lt "$need" ]; then phase "bench $name skipped: $(left) s left"; return; fi
  phase "bench --device gpu $name $sizes"
  timeout $(( $(left) - 5 )) $PY -m pyllamaam bench --models "$M" --n-tokens "$sizes" --ratio 4 --device gpu \
    --threads all --no-progress --out /tmp/bench_$name "$@" > /tmp/bench_$name.log 2>&1
  echo "rc=$?"; cp /tmp/bench_$name/bench.json "$O/bench_$name.json" 2>/dev/null || tail -20 /tmp/bench_$name.log
  cat /tmp/bench_$name/bench.md 2>/dev/null | head -30
}
bench cupy 1024,4096,16384 70
bench numpy 4096,16384 60 --opt arrays=numpy

if [ "$(left)" -gt 45 ]; then
  phase "profile: one compaction of 16K tokens, every layer on the GPU, arrays=auto, one array thread"
  timeout $(( $(left) - 5 )) $PY - "$M" > "$O/profile.txt" 2>&1 <<'PYEOF'
import cProfile, pstats, sys, time
import pyllamaam
from pyllamaam.evaluation import cost
m = pyllamaam.load_model(sys.argv[1], n_gpu_layers=99)
with m.session(n_ctx=16384 + 256) as s:
    s.prefill(cost._text_tokens(m, 16384))
    pr = cProfile.Profile()
    pr.enable()
    rep = s.compact(ratio=4, fit_threads=1)
    pr.disable()
    print(rep.arrays, rep.fell_back, rep.reason, {k: round(v, 3) for k, v in rep.seconds.items()})
    pstats.Stats(pr).sort_stats("tottime").print_stats(30)
PYEOF
  head -60 "$O/profile.txt"
fi
phase done
