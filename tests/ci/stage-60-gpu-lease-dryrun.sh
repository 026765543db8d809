# The GPU lease's CPU dry run: the same script the GPU runs (benchmarks/fastgrpo_benchmarks/gpu/run.sh lease) with a fake $OUT, the Triton
# interpreter and tiny sizes, carried wheels installed into a target folder with the lease's own pip command line
# (fastgrpo's wheel, built here), then a schema check of every stage file and the device tool's 8-file cap.
python tests/ci/versions.py  # what this stage tests with, one line
TMP="$(mktemp -d "${TMPDIR:-/tmp}/lease-dryrun.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
python -m pip wheel --no-deps -q -w "$TMP/whl" .
OUT="$TMP/out" bash benchmarks/fastgrpo_benchmarks/gpu/run.sh lease --dry-run --wheels "$TMP/whl" --site "$TMP/site" --work "$TMP/work"
python -m fastgrpo_benchmarks.gpu.schema "$TMP/out" --dry-run --require-ok
test -f "$TMP/site/fastgrpo/__init__.py" || { echo "the carried wheel was not installed into $TMP/site"; exit 1; }
python - "$TMP/out/01-provenance.json" <<'PY'
import json, sys
wheels = json.load(open(sys.argv[1]))["result"]["wheels"]
assert any(w.startswith("fastgrpo-") for w in wheels), f"provenance does not list the carried wheel: {wheels}"
print("provenance lists the carried wheels:", wheels)
PY
