# DeepSpeed ZeRO-2/3 and FSDP2 against DDP on CPU: 2 gloo processes per torchrun launch, three launches (DDP
# references, DeepSpeed, FSDP2), each training stock trl and fastgrpo for every run (tests/test_distributed_engines.py).
# deepspeed comes from the `dist` extra, pure Python (DS_BUILD_OPS=0); the tests skip DeepSpeed's JIT-built CPU
# shared-memory op, which only inference tensor parallelism uses.
python tests/ci/versions.py  # what this stage tests with, one line
if ! python -c "import deepspeed" 2>/dev/null; then
  DS_BUILD_OPS=0 python -m pip install --quiet -e ".[dist]"  # pure Python: no op is compiled at install
  python tests/ci/versions.py "after installing the dist extra"
fi
DS_ACCELERATOR=cpu python -m pytest -q -rP -m stage tests/test_distributed_engines.py
# Tensor parallelism (tp_plan="auto", 2 gloo processes, the MULTI_CPU shim): the vocab-parallel head against one
# process, and the dispatch-mode check that no rank creates a V*H tensor for the head (tests/test_tensor_parallel.py).
python -m pytest -q -rP -m stage tests/test_tensor_parallel.py
