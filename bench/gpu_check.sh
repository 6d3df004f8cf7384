#!/bin/sh
# The GPU check (bench/gpu_check.py): real-size SDXL, SD3.5, FLUX.1 and Qwen-Image denoisers, random weights, about 8 minutes.
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"
