# shellcheck shell=bash
# The development shell: `source scripts/env.sh` (after `make setup`; the Makefile uses it too).
#
# Activates the venv, sources install/setup.bash, and puts the venv prefix on
# AMENT_PREFIX_PATH: the ROS 2 wheels install their ament index (std_msgs, rcl_interfaces, ...)
# under the venv, and install/setup.bash names only this package's prefix, so without it tools
# that look interfaces up through the index (`ros2 interface show std_msgs/msg/Header`, where
# ros2cli is installed) do not find them.
#
# ROS_DISTRO picks the environment `make setup` built for it: kilted (the default) is .venv and
# install/, jazzy is .venv-jazzy and install-jazzy/. ROS_DISTRO is exported either way (the apt
# setup.bash sets it; the wheels do not), so bags name the distribution they were recorded on.
_vla_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_vla_distro=${ROS_DISTRO:-kilted}
case "$_vla_distro" in
  kilted) _vla_suffix='' ;;
  *) _vla_suffix=-$_vla_distro ;;
esac
if [ ! -f "$_vla_root/install$_vla_suffix/setup.bash" ] \
    || [ ! -f "$_vla_root/.venv$_vla_suffix/bin/activate" ]; then
  echo "scripts/env.sh: run '${_vla_suffix:+ROS_DISTRO=$_vla_distro }make setup' in $_vla_root first" >&2
else
  # shellcheck disable=SC1090,SC1091
  source "$_vla_root/.venv$_vla_suffix/bin/activate"
  # shellcheck disable=SC1090,SC1091
  source "$_vla_root/install$_vla_suffix/setup.bash"
  case ":${AMENT_PREFIX_PATH:-}:" in
    *":$VIRTUAL_ENV:"*) ;;
    *) export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VIRTUAL_ENV" ;;
  esac
  export ROS_DISTRO=$_vla_distro
fi
unset _vla_root _vla_distro _vla_suffix
