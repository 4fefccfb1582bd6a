#!/usr/bin/env bash
# Idempotent development setup: a Python venv with pinned ROS 2 Kilted wheels and the rest of
# requirements.txt, then `colcon build` into build/ and install/. A second run with nothing
# changed only re-runs the (incremental) colcon build.
#
# ROS_DISTRO=jazzy builds the Jazzy environment beside it: its own venv (venv-pyXY-jazzy), the
# Jazzy wheels of requirements-jazzy.txt with numpy 1.26 (what apt Jazzy ships) and the rest of
# requirements.txt, built into build-jazzy/ and install-jazzy/, linked as .venv-jazzy.
# Kilted (ROS_DISTRO unset or kilted) keeps the plain names.
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
# The distribution's folders: no suffix for Kilted, -<distro> for the others (scripts/env.sh).
distro=${ROS_DISTRO:-kilted}
case "$distro" in
  kilted) suffix='' ;;
  jazzy) suffix=-jazzy ;;
  *) echo "[setup] ROS_DISTRO=$distro: the development environment has the ROS 2 wheels of" \
       "kilted (the default) and jazzy; with apt ROS, build as docs/package_layout.md says" >&2
     exit 2 ;;
esac
venv=${VLA_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vla_insertion/venv-$($python -c 'import sys; print("py%d%d" % sys.version_info[:2])')$suffix}

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
if [ "$(readlink ".venv$suffix" 2>/dev/null)" != "$venv" ]; then
  rm -rf ".venv$suffix"
  ln -s "$venv" ".venv$suffix"
fi
# The pip requirements: requirements.txt for Kilted; for another distribution its own file
# (its ROS wheels and numpy) and every other line of requirements.txt.
requirements=(-r requirements.txt)
if [ -n "$suffix" ]; then
  rest=log/requirements-rest$suffix.txt
  grep -vE '^(ros-|numpy==)' requirements.txt > "$rest"
  requirements=(-r "requirements-$distro.txt" -r "$rest")
fi

# One install at a time per venv: several checkouts (worktrees) share it.
exec 8>"$venv/.vla_setup.lock"
flock 8
stamp="$venv/.vla_requirements.sha256"
want=$(sha256sum requirements.txt ${suffix:+"requirements-$distro.txt"} scripts/setup.sh \
  | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing pinned requirements into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  # The CPU wheel of torch comes from local disk; install it before anything can pull CUDA torch.
  "$venv/bin/python" -m pip install -q "$(grep -E '^torch==' requirements.txt)" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  "$venv/bin/python" -m pip install -q "${requirements[@]}" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  # The wheels' CMake exports hard-code the paths of the machine they were built on, and
  # numpy 2's include folder (numpy/_core/include; numpy 1.x has numpy/core/include).
  inc=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  numpy_inc=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')
  { grep -rlZ /opt/python/cp311-cp311 "$venv/share" "$site" --include='*.cmake' 2>/dev/null || true; } \
    | xargs -0 -r sed -i \
        -e "s#/opt/python/cp311-cp311/include/python3.11#$inc#g" \
        -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages#$site#g" \
        -e "s#$site/numpy/_core/include#$numpy_inc#g"
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
# colcon chains every prefix on COLCON_PREFIX_PATH into the setup.bash it writes: from a shell
# that sourced the other distribution's env.sh, install-jazzy/ would load install/'s Kilted
# libraries (undefined symbols, exit 127).
unset COLCON_PREFIX_PATH
echo "[setup] colcon build ($distro)"
build_log=log/colcon_build$suffix.log
colcon --log-base log build --base-paths "$root" --build-base "build$suffix" \
  --install-base "install$suffix" \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$venv/bin/python" \
  --event-handlers console_cohesion- summary- status- >"$build_log" 2>&1 \
  || { tail -50 "$build_log"; echo "[setup] colcon build failed ($build_log)"; exit 1; }
echo "[setup] ready: ${suffix:+ROS_DISTRO=$distro }source scripts/env.sh   (venv + install$suffix/setup.bash + the venv on AMENT_PREFIX_PATH)"
