#!/usr/bin/env bash
# Download TRL and the dependencies a machine with torch, transformers, accelerate and lightning lacks,
# as CPython 3.12 manylinux wheels, into benchmarks/gpu/wheels (about 60 MB). Needed for the TRL column
# of benchmarks/gpu/run.py (without them it is skipped with a line saying so), and they bring `datasets`,
# which `import grpo_lightning` needs while its data module imports it eagerly.
set -euo pipefail
dest="$(cd "$(dirname "$0")" && pwd)/wheels"
mkdir -p "$dest"
pip download --only-binary=:all: --no-deps --python-version "${PYTHON_VERSION:-3.12}" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" \
  trl==1.16.0 datasets==4.7.0 pyarrow==21.0.0 pandas==2.3.3 python-dateutil six pytz tzdata \
  dill==0.4.0 multiprocess==0.70.18 xxhash fsspec==2026.2.0 aiohttp aiosignal frozenlist multidict yarl \
  propcache attrs aiohappyeyeballs requests urllib3 charset_normalizer idna certifi
du -sh "$dest"
